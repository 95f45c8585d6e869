"""Journey parsing on real Moodle 4.5.6 pages saved from a kit-deployed site (tests/fixtures/moodle45)."""
from __future__ import annotations

from pathlib import Path

import pytest

from kit.loadtest import pages

FIXTURES = Path(__file__).parent / "fixtures" / "moodle45"


def page(name: str) -> str:
    return (FIXTURES / f"{name}.html").read_text()


def test_logintoken_from_the_login_page():
    token = pages.logintoken(page("login_page"))
    assert token and len(token) == 32 and token.isalnum()


def test_sesskey_from_a_logged_in_page():
    key = pages.sesskey(page("after_login"))
    assert key and len(key) == 10


def test_reply_form_fields_the_test_plan_posts():
    form = pages.reply_form(page("reply_form"))
    assert form is not None
    assert form["sesskey"] == pages.sesskey(page("reply_form"))
    assert form["attachments"].isdigit() and form["message[itemid]"].isdigit()
    assert form["attachments"] != form["message[itemid]"]


def test_reply_form_missing_is_detected():
    assert pages.reply_form(page("after_login")) is None


def test_logged_in_page_passes_the_checks():
    assert pages.problem(page("after_login"), status=200, logged_in=True, expect="You are logged in as") is None


def test_moodle_error_page_fails_even_without_http_error():
    reason = pages.problem(page("error_page"), status=200, logged_in=True)
    assert reason and reason.startswith("Moodle error page")


def test_http_error_fails():
    assert pages.problem(page("error_page"), status=404, logged_in=True) == "HTTP 404"


def test_login_page_where_logged_in_page_expected_is_a_lost_session():
    reason = pages.problem(page("session_lost_course"), status=200, logged_in=True)
    assert reason == "login page where a logged-in page was expected (session lost)"


def test_login_page_is_fine_when_logged_out():
    assert pages.problem(page("login_page"), status=200, logged_in=False, expect='name="logintoken"') is None


def test_already_logged_in_login_page_has_no_token():
    """Starting a journey with a stale session shows this page: the journey must notice."""
    text = page("already_logged_in_login_page")
    assert pages.logintoken(text) is None
    assert pages.problem(text, status=200, logged_in=False, expect='name="logintoken"')


def test_missing_expected_element_fails():
    assert "expected element missing" in pages.problem(page("after_login"), status=200, logged_in=True,
                                                       expect="mod/forum/post.php")


def test_quiz_start_form_and_attempt_form():
    start = pages.form_inputs(page("quiz_view"), action_contains="startattempt.php")
    assert set(start) == {"cmid", "sesskey"}
    fields = pages.form_inputs(page("quiz_attempt"), form_id="responseform")
    checks = [k for k in fields if k.endswith(":sequencecheck")]
    assert len(checks) == 10
    assert fields["slots"] == ",".join(str(i) for i in range(1, 11))
    assert {"attempt", "sesskey", "thispage", "nextpage", "timeup"} <= set(fields)


@pytest.mark.parametrize("name", ["login_page", "after_login", "reply_form", "quiz_view"])
def test_fixture_is_a_real_moodle_page(name):
    assert "M.cfg" in page(name) or "moodle" in page(name).lower()


def test_no_response_is_a_connection_failure():
    assert pages.problem("", status=0, logged_in=True) == "no response (connection refused, reset or timed out)"
