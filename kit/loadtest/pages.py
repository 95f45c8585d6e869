"""Reading Moodle pages the way a load test must: extract tokens, and tell a real page
from an error page or a login page served where a logged-in page was expected.

Pure functions on HTML text, so they are tested on saved real Moodle pages.
"""
from __future__ import annotations

import html
import re

# The subject of every reply the journey posts: `kit loadtest` deletes these after each run, so
# the next run meets the forum the seed left (kit.loadtest.seed.remove_replies).
REPLY_SUBJECT = "Re: I am the test plan reply subject"

_LOGINTOKEN = re.compile(r'name="logintoken"\s+value="([^"]+)"')
_SESSKEY_CFG = re.compile(r'"sesskey":"([^"]+)"')
_SESSKEY_INPUT = re.compile(r'name="sesskey"\s+(?:type="hidden"\s+)?value="([^"]+)"')
_HIDDEN = re.compile(r"<input\b([^>]*)>", re.I)
_ATTR = re.compile(r'([\w\-:\[\]]+)="([^"]*)"')


def logintoken(page: str) -> str | None:
    match = _LOGINTOKEN.search(page)
    return match.group(1) if match else None


def sesskey(page: str) -> str | None:
    match = _SESSKEY_CFG.search(page) or _SESSKEY_INPUT.search(page)
    return match.group(1) if match else None


def form_inputs(page: str, form_id: str | None = None, action_contains: str | None = None) -> dict[str, str]:
    """Hidden/text inputs of one form (by id or action), as a browser would submit them."""
    forms = re.findall(r"<form\b([^>]*)>(.*?)</form>", page, re.S | re.I)
    for attrs, body in forms:
        attr = dict(_ATTR.findall(attrs))
        if form_id and attr.get("id") != form_id:
            continue
        if action_contains and action_contains not in html.unescape(attr.get("action", "")):
            continue
        values: dict[str, str] = {}
        for tag in _HIDDEN.findall(body):
            a = dict(_ATTR.findall(tag))
            if "name" in a and a.get("type", "text").lower() in ("hidden", "text"):
                values[html.unescape(a["name"])] = html.unescape(a.get("value", ""))
        return values
    return {}


def reply_form(page: str) -> dict[str, str] | None:
    """What Moodle's JMeter plan extracts from the forum reply form (userid only where present)."""
    fields = form_inputs(page, action_contains="post.php")
    needed = ("sesskey", "attachments", "message[itemid]")
    if not all(fields.get(k) for k in needed):
        return None
    return {k: fields.get(k, "") for k in (*needed, "userid")}


def is_login_page(page: str) -> bool:
    return 'id="page-login-index"' in page or logintoken(page) is not None


def is_logged_in(page: str) -> bool:
    return "login/logout.php?sesskey=" in page


def problem(page: str, *, status: int, logged_in: bool, expect: str | None = None) -> str | None:
    """Why this response is a failure for a student, or None when it is the page expected."""
    if status == 0:
        return "no response (connection refused, reset or timed out)"
    if status >= 400:
        return f"HTTP {status}"
    if 'data-rel="fatalerror"' in page or "errorbox alert alert-danger" in page:
        match = re.search(r'data-rel="fatalerror"[^>]*>(.*?)</div>', page, re.S)
        text = re.sub(r"<[^>]+>", " ", match.group(1)).split() if match else []
        return "Moodle error page: " + (" ".join(text)[:120] or "no message")
    if 'id="page-maintenance-message"' in page or "maintenance mode" in page.lower() and "<title>" in page \
            and "Maintenance" in page[:4000]:
        return "site in maintenance mode"
    if logged_in and is_login_page(page) and not is_logged_in(page):
        return "login page where a logged-in page was expected (session lost)"
    if logged_in and not is_logged_in(page):
        return "page is not a logged-in Moodle page"
    if expect and expect not in page:
        return f"expected element missing: {expect}"
    return None
