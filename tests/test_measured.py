"""`kit plan --from-report`: sizing from a measured capacity report."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kit import measured
from kit.cli import cli
from kit.errors import KitError
from kit.measured import load_report, plan_for


def level(users: int, rps: float, p95: float, avg: float, host_pct: float, passed: bool = True,
          web: float = 60.0, db: float = 8.0) -> dict:
    seconds = 60.0
    requests = int(rps * seconds)
    return {"users": users, "passed": passed, "p95_ms": p95, "p50_ms": avg * 0.7, "avg_ms": avg, "rps": rps,
            "failures": 0, "requests": requests,
            "cost": {"seconds": seconds, "requests": requests, "host_cpu_pct": host_pct, "host_cpus": 2,
                     "cpu_ms_per_request": {"web": web, "db": db, "web-nginx": 1.5, "edge": 1.0, "redis": 0.5,
                                            "site": web + db + 3.0, "load_generator": 6.0},
                     "cpu_cores_busy": {}, "db_xacts_per_request": 30.0, "php_worker_rss_mb": 55.0,
                     "php_processes": 12}}


def report(tmp_path, levels=None, capacity=40) -> str:
    data = {"capacity_users": capacity, "slos": ["p95<=1000ms", "errors<=1.00%"], "journey": "moodle",
            "think": "1,3", "site": {"cpus": 2},
            "levels": levels or [level(10, 4.5, 300, 150, 35), level(20, 9.0, 350, 170, 65),
                                 level(40, 17.0, 800, 350, 125), level(50, 19.0, 2400, 900, 190, passed=False)]}
    path = tmp_path / "capacity.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_report_figures_come_from_the_passing_levels(tmp_path):
    m = load_report(report(tmp_path))
    assert m.cpus == 2 and m.light_users == 10
    assert m.site_ms == pytest.approx(71.0)
    assert m.tier_ms["web"] == pytest.approx(60.0) and m.tier_ms["db"] == pytest.approx(8.0)
    assert m.rate_per_user == pytest.approx(0.45)
    assert m.php_worker_rss_mb == 55.0 and m.db_xacts == 30.0
    assert m.measured_users_at_slo == 40
    assert 0 < m.rho_at_slo(1) < m.rho_at_slo(2) <= m.rho_at_slo(8) <= 0.85   # more cores queue less; capped
    assert m.rho_at_slo(2, slo_ms=500) < m.rho_at_slo(2)                     # a tighter SLO, less busy


def test_cheaper_requests_and_more_cores_hold_more_users(tmp_path):
    m = load_report(report(tmp_path))
    assert m.users_at_slo(2, 100.0) > m.users_at_slo(2, 150.0)
    assert m.users_at_slo(8, 100.0) >= 3.5 * m.users_at_slo(2, 100.0)   # roughly linear in cores
    predicted = plan_for(m, 40, 2, 24576)["predicted_users_at_slo"]
    assert 10 < predicted < 200


def test_plan_scales_with_users_on_every_target(tmp_path):
    m = load_report(report(tmp_path))
    small, large = plan_for(m, 500, 2, 24576), plan_for(m, 5000, 2, 24576)
    assert large["request_rate"] == pytest.approx(10 * small["request_rate"])
    assert set(large["targets"]) == {"local", "hosts", "k8s"}

    def value(result, target, what):
        return next(v for w, v, _ in result["targets"][target] if w == what)

    assert int(value(large, "hosts", "web machines")) > int(value(small, "hosts", "web machines"))
    assert int(value(large, "k8s", "web pods")) > int(value(small, "k8s", "web pods"))
    assert float(value(large, "local", "CPU cores")) > 5 * float(value(small, "local", "CPU cores"))
    assert "too few, use target hosts or k8s" in next(why for w, _, why in large["targets"]["local"]
                                                       if w == "CPU cores")
    whys = [why for lines in large["targets"].values() for _, _, why in lines]
    assert any(why.startswith("measured") for why in whys) and any(why.startswith("assumed") for why in whys)
    assert "measured 55 MB resident per idle child" in " ".join(whys)


def test_bad_reports_are_one_clear_line(tmp_path):
    with pytest.raises(KitError, match="no such report"):
        load_report(tmp_path / "missing.json")
    (tmp_path / "capacity.json").write_text(json.dumps({"levels": [{"users": 5, "passed": True, "requests": 10,
                                                                   "cost": None}]}))
    with pytest.raises(KitError, match="no level has measured costs"):
        load_report(tmp_path / "capacity.json")
    (tmp_path / "capacity.json").write_text("{not json")
    with pytest.raises(KitError, match="not a capacity report"):
        load_report(tmp_path)


def test_cli_prints_each_target_and_what_was_measured(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = report(tmp_path)
    result = CliRunner().invoke(cli, ["plan", "--users", "3000", "--from-report", path])
    assert result.exit_code == 0, result.output
    for needle in ("Plan for 3000 concurrent users", "target local:", "target hosts:", "target k8s:",
                   "web machines", "measured", "assumed", "the model predicts"):
        assert needle in result.output
    as_json = json.loads(CliRunner().invoke(cli, ["plan", "--users", "3000", "--from-report", path,
                                                  "--machine-cpus", "16", "--json"]).output)
    assert as_json["assumed"]["hosts_machine_cpus"] == 16
    refused = CliRunner().invoke(cli, ["plan", "--users", "30", "--machine-cpus", "4"])
    assert refused.exit_code != 0 and "only with --from-report" in str(refused.exception)


def test_background_cpu_is_set_apart_from_what_each_request_costs():
    """Host CPU = background + rate x cost: at 3 req/s a 150 ms/s background makes the mean
    cost 150 ms per request, though each request adds 100."""
    points = [(rps, 150.0 + 100.0 * rps) for rps in (3.0, 6.0, 9.0, 12.0)]
    assert measured.split_background(points, 140.0) == (pytest.approx(100.0), pytest.approx(150.0))
    assert measured.split_background([(5.0, 700.0)], 140.0) == (140.0, 0.0)                  # one rate: no line
    assert measured.split_background([(3.0, 100.0), (6.0, 400.0)], 140.0) == (140.0, 0.0)    # negative background


def test_the_split_predicts_more_users_than_the_mean_cost_would():
    base = dict(source="r", cpus=2, host_ms=150.0, site_ms=130.0, load_generator_ms=6.0, tier_ms={},
                rate_per_user=0.6, light_users=5, light_rho=0.25, light_p95_ms=180.0, light_avg_ms=100.0,
                php_worker_rss_mb=None, db_xacts=None, measured_users_at_slo=30)
    mean_only = measured.Measured(**base)
    split = measured.Measured(**base, host_marginal_ms=100.0, background_ms_s=150.0)
    assert split.users_at_slo(2, split.marginal_ms) > mean_only.users_at_slo(2, mean_only.marginal_ms)
