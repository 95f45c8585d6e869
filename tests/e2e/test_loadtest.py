"""`kit loadtest` against the real site: Moodle's generator, locust, the SLO gate, real failures."""
from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from kit.loadtest import pages
from tests.conftest import MEASURED
from tests.e2e.conftest import SITE, TIMINGS, kit, psql

pytestmark = pytest.mark.e2e

JOURNEY_STEPS = 14


@pytest.fixture(scope="module")
def seeded(site_dir):
    started = time.monotonic()
    result = kit("loadtest", "seed", "--size", "S", cwd=site_dir)
    TIMINGS["loadtest seed --size S"] = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:]
    again = kit("loadtest", "seed", "--size", "S", cwd=site_dir)
    assert again.returncode == 0 and "already seeded" in again.stdout
    return json.loads((site_dir / ".kit" / SITE / "loadtest-target.json").read_text())


def latest_report(site_dir: Path) -> Path:
    return sorted((site_dir / "reports" / SITE).iterdir())[-1]


def test_twenty_users_for_a_minute_without_failures(site_dir, seeded):
    result = kit("loadtest", "run", "--users", "20", "--spawn-rate", "5", "--duration", "60s",
                 "--slo", "p95=3s", "--slo", "errors=0%", cwd=site_dir)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = latest_report(site_dir)
    summary = json.loads((report / "summary.json").read_text())
    assert summary["total"]["failures"] == 0
    assert summary["total"]["requests"] > 100
    steps = [s["name"] for s in summary["steps"]]
    assert len([name for name in steps if not name.endswith(" (redirect)")]) == JOURNEY_STEPS, steps
    assert "03 login (redirect)" in steps, steps    # each hop its own request, as the edge counts them
    assert all(s["requests"] > 0 for s in summary["steps"])
    assert (report / "report.html").stat().st_size > 10_000
    assert (report / "locust_stats.csv").exists()
    for line in ("01 frontpage", "11 reply post", "14 logout", "Aggregated"):
        assert line in result.stdout
    # What the level cost, read from the containers' cgroup counters and PostgreSQL's statistics.
    cost = summary["cost"]
    assert cost["requests"] == summary["total"]["requests"]
    assert 5 < cost["cpu_ms_per_request"]["web"] < 2000, cost      # php-fpm did the work of every page
    assert 0 < cost["cpu_ms_per_request"]["db"] < cost["cpu_ms_per_request"]["web"], cost
    assert cost["cpu_ms_per_request"]["load_generator"] > 0, cost
    assert cost["cpu_ms_per_request"]["site"] >= cost["cpu_ms_per_request"]["web"] + cost["cpu_ms_per_request"]["db"]
    assert 1 <= cost["db_xacts_per_request"] < 500, cost
    assert 1 < cost["php_worker_rss_mb"] < 500, cost        # resident memory of an idle php-fpm child
    assert summary["site"]["levers"]["db_persistent_connections"] is True
    assert "cost per request: site CPU" in result.stdout
    # The run's own replies are gone: the next run walks the forum the seed left.
    removed = re.search(r"forum: removed the run's (\d+) replies", result.stdout)
    assert removed and int(removed.group(1)) >= 1, result.stdout[-2000:]
    assert psql(f"select count(*) from mdl_forum_posts where subject = '{pages.REPLY_SUBJECT}'") == "0"
    assert int(psql("select count(*) from mdl_forum_discussions d join mdl_course_modules cm "
                    f"on cm.instance = d.forum where cm.id = {seeded['forum_cmid']}")) >= 25


def test_impossible_slo_fails_and_names_it(site_dir, seeded):
    result = kit("loadtest", "run", "--users", "5", "--duration", "10s", "--slo", "p95=1ms", cwd=site_dir)
    assert result.returncode != 0
    assert "p95<=1ms missed" in result.stderr


def test_stopping_the_web_tier_shows_failures_and_the_run_still_ends(site_dir, seeded):
    web = [f"kit-{SITE}-web-{i}" for i in (1, 2)]

    def stop_web() -> None:
        time.sleep(15)
        subprocess.run(["docker", "stop", "-t", "2", *web], capture_output=True)

    stopper = threading.Thread(target=stop_web)
    started = time.monotonic()
    stopper.start()
    try:
        result = kit("loadtest", "run", "--users", "10", "--spawn-rate", "10", "--duration", "40s",
                     "--slo", "errors=1%", cwd=site_dir, timeout=300)
    finally:
        stopper.join()
        subprocess.run(["docker", "start", *web], capture_output=True)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "errors<=1.00% missed" in result.stderr
    summary = json.loads((latest_report(site_dir) / "summary.json").read_text())
    assert summary["total"]["failures"] > 0
    assert elapsed < 40 + 60, f"run took {elapsed:.0f}s for a 40s duration"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if kit("status", cwd=site_dir).returncode == 0:
            break
        time.sleep(3)
    assert kit("status", cwd=site_dir).returncode == 0, "site did not recover after the web tier restarted"


def test_exam_start_surge(site_dir, seeded):
    assert seeded["quiz_cmid"]
    result = kit("loadtest", "run", "--journey", "exam", "--users", "15", "--window", "20s", "--duration", "20s",
                 "--think", "0.5,1", "--slo", "errors=0%", cwd=site_dir, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = json.loads((latest_report(site_dir) / "summary.json").read_text())
    by_step = {s["name"]: s for s in summary["steps"]}
    assert by_step["E4 start attempt"]["requests"] == 15
    assert by_step["E5 submit attempt"]["requests"] == 15
    exam = summary["exam"]      # when the last student had the quiz open, and had submitted it
    assert exam["opened"] == exam["submitted"] == 15
    assert 0 < exam["all_open_s"] <= exam["all_submitted_s"] < 120, exam
    assert "exam: 15 of 15 attempts open" in result.stdout
    MEASURED["exam surge, 15 students: last attempt open / last submitted"] = (
        f"{exam['all_open_s']} s / {exam['all_submitted_s']} s after the start")


def test_capacity_finishes_in_announced_time(site_dir, seeded):
    started = time.monotonic()
    result = kit("loadtest", "capacity", "--start", "5", "--step", "10", "--max-users", "25", "--step-time", "20s",
                 "--slo", "p95=5s", "--slo", "errors=1%", cwd=site_dir, timeout=900)
    elapsed = time.monotonic() - started
    assert "capacity search: 3 levels" in result.stdout
    data = json.loads(next(latest_report(site_dir).glob("capacity.json")).read_text())
    assert elapsed <= data["announced_max_s"] + 30
    assert result.returncode == 0, result.stdout[-3000:]
    assert data["capacity_users"] in (5, 15, 25)
    assert f"capacity: {data['capacity_users']} concurrent users" in result.stdout
    assert all(level["cost"]["cpu_ms_per_request"]["web"] > 0 for level in data["levels"]), data["levels"]

    # The report sizes a site: measured costs, not the rules of thumb.
    report = next(latest_report(site_dir).glob("capacity.json"))
    planned = kit("plan", "--users", "2000", "--from-report", str(report), "--json", cwd=site_dir)
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    web_ms = data["levels"][0]["cost"]["cpu_ms_per_request"]["web"]
    assert plan["costs_ms_per_request"]["web"] >= web_ms * 0.5
    assert plan["predicted_users_at_slo"] > 0
    text = kit("plan", "--users", "2000", "--from-report", str(report), cwd=site_dir).stdout
    assert "target hosts:" in text and "web machines" in text and "measured" in text and "assumed" in text


def test_surge_shape_steps_up_to_the_peak(site_dir, seeded):
    started = time.monotonic()
    result = kit("loadtest", "run", "--shape", "surge", "--peak", "10", "--step", "5", "--step-time", "10s",
                 "--slo", "errors=1%", cwd=site_dir, timeout=300)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:]
    import csv

    with (latest_report(site_dir) / "locust_stats_history.csv").open() as fh:
        users = [int(row["User Count"]) for row in csv.DictReader(fh) if row["Name"] == "Aggregated"]
    assert 5 in users and max(users) == 10
    assert elapsed < 30 + 60
