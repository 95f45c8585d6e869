"""Capacity in `kit plan` and the preflight: what the planned site holds at its SLO, a warning
with what more would take when site.yaml asks for more, from the kit's reference run
(assumed) or a measured report."""
from __future__ import annotations

import json
import shutil

from kit import capacity
from kit.config import parse_site
from kit.sizing import plan
from tests.conftest import HOST_2x24, HOST_8x64
from tests.test_cli import kit


def test_the_reference_is_a_real_capacity_report_with_costs():
    data = json.loads(capacity.REFERENCE.read_text())
    assert data["capacity_users"] > 0 and data["site"]["profile"] == "tuned"
    assert all(level["cost"]["cpu_ms_per_request"]["site"] > 0 for level in data["levels"] if level.get("cost"))


def test_more_users_than_the_host_holds_warns_with_what_it_takes(tmp_path):
    site = parse_site({"users": 300}, site_dir=tmp_path)
    found = capacity.estimate(site, plan(site, HOST_2x24))
    assert found.short and 0 < found.holds_users < 300
    assert found.source.startswith("assumed: ")
    line = found.line()
    assert f"holds about {found.holds_users} concurrent users" in line and "would take" in line
    assert found.needs["local_cores"] > 2 and found.needs["hosts_web_machines"] >= 2


def test_a_bigger_host_holds_more_and_a_small_plan_is_not_short(tmp_path):
    small = parse_site({"users": 5}, site_dir=tmp_path)
    on_two = capacity.estimate(small, plan(small, HOST_2x24))
    on_eight = capacity.estimate(small, plan(small, HOST_8x64))
    assert not on_two.short and "would take" not in on_two.line()
    assert on_eight.holds_users > 3 * on_two.holds_users


def test_hosts_capacity_grows_with_its_web_machines(tmp_path):
    def machines(web: int) -> list[dict]:
        return [{"name": "data", "address": "10.0.0.1", "roles": ["edge", "db", "redis", "cron"]}] + [
            {"name": f"app{i}", "address": f"10.0.0.{i + 10}", "roles": ["web", "worker"]} for i in range(web)]

    held = []
    for web in (2, 6):
        site = parse_site({"users": 300, "target": "hosts", "hosts": {"machines": machines(web)}}, site_dir=tmp_path)
        found = capacity.estimate(site, plan(site, HOST_2x24))
        held.append(found.holds_users)
        needed = found.needs["hosts_web_machines"]
        assert found.short == (needed > web), (web, needed, found.holds_users)
    assert held[1] > held[0]


def test_kit_plan_prints_the_capacity_and_warns_on_stderr(tmp_path):
    text = kit("plan", "--users", "300", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    warning = [line for line in text.stderr.splitlines() if line.startswith("warning: capacity: ")]
    assert len(warning) == 1 and "planned for 300 users" in warning[0] and "cores on one host" in warning[0]
    fine = kit("plan", "--users", "3", cwd=tmp_path)
    assert "capacity: holds about" in fine.stdout and "warning" not in fine.stderr
    as_json = json.loads(kit("plan", "--users", "300", "--json", cwd=tmp_path).stdout)
    assert as_json["capacity"]["short"] is True and as_json["capacity"]["planned_users"] == 300


def test_a_measured_report_replaces_the_assumed_figures(tmp_path):
    report = tmp_path / "capacity.json"
    shutil.copy(capacity.REFERENCE, report)
    result = kit("plan", "--users", "300", "--from-report", str(report), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"measured: {report}" in result.stderr


def test_largest_finds_the_edge_of_a_monotonic_test():
    assert capacity._largest(lambda users: users <= 37) == 37
    assert capacity._largest(lambda users: False) == 0
    assert capacity._largest(lambda users: True) == capacity.MAX_USERS
