"""SLO and duration parsing, and the SLO gate on locust's statistics."""
from __future__ import annotations

import json

import pytest

from kit.errors import KitError, OperationFailed
from kit.loadtest import run as lt
from kit.loadtest.run import SLO, StepStats, judge, parse_duration, parse_slo, read_stats


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("2m", 120), ("1h30m", 5400), ("500ms", 0.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "5 minutes", "2x", ""])
def test_bad_durations(text):
    with pytest.raises(KitError):
        parse_duration(text)


@pytest.mark.parametrize("text, slo", [("p95=1s", SLO("p95", 1000)), ("p99=800ms", SLO("p99", 800)),
                                       ("errors=1%", SLO("errors", 0.01)), ("avg=250ms", SLO("avg", 250))])
def test_slos(text, slo):
    assert parse_slo(text) == slo


@pytest.mark.parametrize("text, needle", [("p95", "METRIC=LIMIT"), ("latency=1s", "unknown metric"),
                                          ("errors=2", "percentage")])
def test_bad_slos(text, needle):
    with pytest.raises(KitError, match=needle):
        parse_slo(text)


def stats(requests=1000, failures=0, p95=400.0):
    return StepStats("Aggregated", requests, failures, 10.0, 100.0, p95, p95 * 2, 150.0)


def test_gate_passes_and_fails_by_the_numbers():
    slos = [SLO("p95", 1000), SLO("errors", 0.01)]
    assert judge(stats(), slos) == []
    missed = judge(stats(failures=20, p95=1500), slos)
    assert len(missed) == 2
    assert "p95<=1000ms missed: p95 was 1500ms" in missed[0]
    assert "errors<=1.00% missed: errors were 2.00% of 1000 requests" in missed[1]


def test_a_run_with_no_requests_never_passes():
    assert judge(stats(requests=0), [SLO("errors", 0.01)])


def test_read_stats_from_locust_csv(tmp_path):
    header = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
              "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
              "99.99%,100%\n")
    (tmp_path / "locust_stats.csv").write_text(
        header
        + "GET,05 course,40,1,120,130.5,50,900,30000,2.1,0.05,120,130,140,150,200,300,400,500,900,900,900\n"
        + ",Aggregated,100,1,110,120.0,40,900,25000,5.5,0.05,110,120,130,140,190,280,380,480,900,900,900\n")
    steps, total = read_stats(tmp_path / "locust")
    assert [s.name for s in steps] == ["05 course"]
    assert (total.requests, total.failures, total.p95, total.rps) == (100, 1, 280.0, 5.5)


def test_missing_stats_is_a_clear_error(tmp_path):
    with pytest.raises(KitError, match="no statistics"):
        read_stats(tmp_path / "locust")


def test_ctrl_c_ends_a_real_locust_run_early_and_still_writes_its_report(tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) stops `kit loadtest run`
    long before its duration, and the summary covers what ran. Load goes to a page server
    on 127.0.0.1 that this test starts (no Moodle: every journey fails at the login page)."""
    import http.server
    import json
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            body = b"<html><body>not Moodle</body></html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = tmp_path / "target.json"
    target.write_text(json.dumps({"course_id": 2, "page_cmid": 1, "forum_cmid": 2, "discussion_id": 1,
                                  "reply_post_id": 1, "users": {"prefix": "tool_generator_", "count": 5}}))
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kit.cli", "loadtest", "run", "--url", f"http://127.0.0.1:{server.server_port}",
         "--target-file", str(target), "--users", "2", "--spawn-rate", "2", "--duration", "300s",
         "--think", "0.1,0.2", "--slo", "errors=100%"],
        cwd=tmp_path, env={**os.environ, "KIT_LT_PASSWORD": "x"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    head: list[str] = []
    try:
        # Ctrl-C once locust runs (its banner, then a few seconds of load), not at a fixed
        # time: on a busy host the kit and locust can take longer than that to start.
        assert proc.stdout is not None
        for line in proc.stdout:
            head.append(line)
            if "users," in line or time.monotonic() - started > 60:
                break
        time.sleep(8)
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=90)
        out = "".join(head) + rest
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        server.shutdown()
    assert time.monotonic() - started < 150, out[-2000:]
    assert "stopped by Ctrl-C after" in out, out[-2000:]
    summary = json.loads(next((tmp_path / "reports").rglob("summary.json")).read_text())
    assert summary["total"]["requests"] > 0 and summary["duration_s"] < 100


def test_exam_times_merge_every_process_and_need_every_student(tmp_path):
    folder = tmp_path / "exam"
    folder.mkdir()
    start = 1000.0
    (folder / "exam-1.json").write_text(json.dumps({"opened": [1001.0, 1004.5], "submitted": [1010.0]}))
    (folder / "exam-2.json").write_text(json.dumps({"opened": [1002.25], "submitted": [1012.0, 1020.75]}))
    (folder / "exam-3.json").write_text(json.dumps({"opened": [], "submitted": []}))   # the master: no users
    times = lt.exam_times(folder, start, students=3)
    assert times == {"students": 3, "opened": 3, "submitted": 3, "all_open_s": 4.5, "all_submitted_s": 20.8}
    short = lt.exam_times(folder, start, students=4)
    assert short["all_open_s"] is None and short["all_submitted_s"] is None and short["opened"] == 3


class _ForumSite:
    """A site's Moodle CLI as far as the reply tidy-up sees it: an exit code and the output."""

    def __init__(self, code: int, out: str) -> None:
        self.code, self.out, self.calls = code, out, []  # type: ignore[var-annotated]

    def moodle_cli(self, args, *, stdin=None, check=True, quiet=False):
        self.calls.append(args)
        return self.code, self.out


def test_the_runs_replies_are_removed_by_their_subject_in_the_seeded_forum(tmp_path):
    from kit.loadtest import pages
    from kit.loadtest.seed import remove_replies

    target_path = tmp_path / "target.json"
    target_path.write_text(json.dumps({"forum_cmid": 42}))
    site = _ForumSite(0, "kit: removed 17 load-test replies\n")
    assert remove_replies(site, target_path) == 17  # type: ignore[arg-type]
    assert site.calls == [["/opt/kit/seed_discussions.php", "42", "--remove-replies", pages.REPLY_SUBJECT]]
    # An image from before the option answers as the seeding form did: nothing removed, said so.
    assert remove_replies(_ForumSite(0, "kit: ok: forum has 25 discussions\n"), target_path) is None  # type: ignore[arg-type]
    (tmp_path / "other.json").write_text(json.dumps({"course_id": 2}))
    with pytest.raises(OperationFailed, match="names no forum"):
        remove_replies(site, tmp_path / "other.json")  # type: ignore[arg-type]
    with pytest.raises(OperationFailed, match="remove-replies: Coding error"):
        remove_replies(_ForumSite(255, "Coding error\n"), target_path)  # type: ignore[arg-type]
