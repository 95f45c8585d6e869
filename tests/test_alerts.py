"""The alert rules, with Prometheus's own tools: `promtool check rules` on the rendered file,
and `promtool test rules` with one test per alert: it fires on a bad series and stays quiet
on a good one. The expected annotations are read from the rendered rules (not copied here),
the series are written here, by hand, per alert."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kit import ROOT, config, render, sizing
from kit.cli_loadtest import _parse_slos

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian's prometheus package) is not installed")

# alert -> (bad series, good series, labels the alert carries besides severity). Values are
# promtool's expanding notation, one sample a minute; every test evaluates at 20 minutes.
CASES: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]], dict[str, str]]] = {
    "SiteDown": ([('probe_success{job="login"}', "0x30")], [('probe_success{job="login"}', "1x30")], {}),
    "LatencyOverSlo": (
        [('kit_edge_request_seconds_bucket{le="0.5"}', "0x30"), ('kit_edge_request_seconds_bucket{le="1"}', "0+1x30"),
         ('kit_edge_request_seconds_bucket{le="2.5"}', "0+10x30"),
         ('kit_edge_request_seconds_bucket{le="+Inf"}', "0+10x30")],
        [('kit_edge_request_seconds_bucket{le="0.5"}', "0+10x30"), ('kit_edge_request_seconds_bucket{le="1"}', "0+10x30"),
         ('kit_edge_request_seconds_bucket{le="2.5"}', "0+10x30"),
         ('kit_edge_request_seconds_bucket{le="+Inf"}', "0+10x30")], {}),
    "ErrorsOverSlo": (
        [('kit_edge_requests_total{status="200"}', "0+100x30"), ('kit_edge_requests_total{status="502"}', "0+5x30")],
        [('kit_edge_requests_total{status="200"}', "0+100x30"), ('kit_edge_requests_total{status="502"}', "0+0x30")],
        {}),
    "PhpFpmSaturated": ([('phpfpm_listen_queue{instance="kit-t-web-1"}', "4x30")],
                        [('phpfpm_listen_queue{instance="kit-t-web-1"}', "0x30")], {"instance": "kit-t-web-1"}),
    "DbConnectionsHigh": ([('pg_stat_activity_count{state="active"}', "90x30"), ("pg_settings_max_connections", "100x30")],
                          [('pg_stat_activity_count{state="active"}', "50x30"), ("pg_settings_max_connections", "100x30")],
                          {}),
    "DatabaseDown": ([("pg_up", "0x30")], [("pg_up", "1x30")], {}),
    "RedisDown": ([("redis_up", "0x30")], [("redis_up", "1x30")], {}),
    "AdhocQueueOld": ([("kit_adhoc_oldest_age_s", "900x30")], [("kit_adhoc_oldest_age_s", "60x30")], {}),
    # The runner's last start: stuck at 0 (20 minutes ago at evaluation), or following the clock.
    "CronStalled": ([("kit_moodle_cron_last_start_s", "0x30")], [("kit_moodle_cron_last_start_s", "0+60x30")], {}),
    "TaskFailing": ([("kit_adhoc_failing", "1x30"), ("kit_moodle_scheduled_failing", "0x30")],
                    [("kit_adhoc_failing", "0x30"), ("kit_moodle_scheduled_failing", "0x30")], {}),
    "DiskFilling": (
        [('node_filesystem_avail_bytes{mountpoint="/mnt/kit/pgdata",machine="db1"}', "10x30"),
         ('node_filesystem_size_bytes{mountpoint="/mnt/kit/pgdata",machine="db1"}', "100x30")],
        [('node_filesystem_avail_bytes{mountpoint="/mnt/kit/pgdata",machine="db1"}', "50x30"),
         ('node_filesystem_size_bytes{mountpoint="/mnt/kit/pgdata",machine="db1"}', "100x30")],
        {"mountpoint": "/mnt/kit/pgdata", "machine": "db1"}),
    "ReplicaUnhealthy": ([('up{job="fpm",instance="kit-t-web-1"}', "0x30")],
                         [('up{job="fpm",instance="kit-t-web-1"}', "1x30")], {"job": "fpm", "instance": "kit-t-web-1"}),
    "CertificateExpiring": ([('probe_ssl_earliest_cert_expiry{job="login"}', f"{5 * 86400}x30")],
                            [('probe_ssl_earliest_cert_expiry{job="login"}', f"{30 * 86400}x30")], {}),
}


def _site(tmp_path: Path, **extra: object) -> config.Site:
    data = {"name": "t", "url": "https://lms.example.edu", "tls": {"mode": "self-signed"}, **extra}
    return config.parse_site(data, site_dir=tmp_path)


def _rules(site: config.Site) -> str:
    return render.render_files(site, sizing.plan(site))["alerts.yml"]


def _expand(text: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), text)


def _unit_tests(rules_text: str) -> dict:
    rules = {r["alert"]: r for g in yaml.safe_load(rules_text)["groups"] for r in g["rules"]}
    tests = []
    for name, (bad, good, labels) in CASES.items():
        rule = rules[name]
        expected = {"exp_labels": {**labels, **rule["labels"]},
                    "exp_annotations": {k: _expand(v, labels) for k, v in rule["annotations"].items()}}
        for series, alerts in ((bad, [expected]), (good, [])):
            tests.append({"interval": "1m",
                          "input_series": [{"series": s, "values": v} for s, v in series],
                          "alert_rule_test": [{"eval_time": "20m", "alertname": name, "exp_alerts": alerts}]})
    return {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": tests}


def test_every_alert_has_a_unit_test_and_a_runbook_that_exists(tmp_path: Path) -> None:
    rules = [r for g in yaml.safe_load(_rules(_site(tmp_path)))["groups"] for r in g["rules"]]
    assert sorted(r["alert"] for r in rules) == sorted(CASES)
    for rule in rules:
        runbook = rule["annotations"]["runbook"]
        assert (ROOT / runbook).is_file(), f"{rule['alert']}: {runbook} does not exist"
        assert rule["annotations"]["first_command"].startswith("kit "), rule["alert"]
        assert "`kit " in rule["annotations"]["summary"], rule["alert"]


@needs_promtool
def test_promtool_checks_the_rendered_rules(tmp_path: Path) -> None:
    (tmp_path / "alerts.yml").write_text(_rules(_site(tmp_path)))
    result = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "alerts.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(CASES)} rules found" in result.stdout


@needs_promtool
def test_each_alert_fires_on_its_bad_series_and_not_on_the_good_one(tmp_path: Path) -> None:
    rules_text = _rules(_site(tmp_path))
    (tmp_path / "alerts.yml").write_text(rules_text)
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(_unit_tests(rules_text), sort_keys=False))
    result = subprocess.run([PROMTOOL, "test", "rules", str(tmp_path / "alerts_test.yml")], capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_a_unit_test_fails_when_a_threshold_moves(tmp_path: Path) -> None:
    """The tests above can fail: with the queue threshold at 20 minutes, 15 minutes is quiet."""
    rules_text = _rules(_site(tmp_path, monitoring={"queue_age_minutes": 20}))
    (tmp_path / "alerts.yml").write_text(rules_text)
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(_unit_tests(rules_text), sort_keys=False))
    result = subprocess.run([PROMTOOL, "test", "rules", str(tmp_path / "alerts_test.yml")], capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode != 0
    assert "AdhocQueueOld" in result.stdout + result.stderr


def test_the_slo_has_one_home_for_the_alerts_and_the_load_test(tmp_path: Path) -> None:
    site = _site(tmp_path, slo={"p95_ms": 400, "errors_percent": 0.5})
    rules = {r["alert"]: r for g in yaml.safe_load(_rules(site))["groups"] for r in g["rules"]}
    assert rules["LatencyOverSlo"]["expr"].endswith("> 0.4")
    assert rules["ErrorsOverSlo"]["expr"].endswith("> 0.005")
    (tmp_path / "site.yaml").write_text(config.dump_site(site))
    slos = {s.metric: s.limit for s in _parse_slos((), str(tmp_path / "site.yaml"))}
    assert slos == {"p95": 400.0, "errors": 0.005}
    # the SLO's limit is a bucket of the edge's histogram, so p95 is not interpolated across it
    assert "0.4," in render.render_files(site, sizing.plan(site))["edge.mtail"]


def test_no_cert_alert_without_tls_at_the_edge_and_test_durations_from_the_model(tmp_path: Path) -> None:
    site = config.parse_site({"name": "t", "monitoring": {"alert_for_s": 10}}, site_dir=tmp_path)
    rules = [r for g in yaml.safe_load(_rules(site))["groups"] for r in g["rules"]]
    assert "CertificateExpiring" not in {r["alert"] for r in rules}
    assert {r["for"] for r in rules} == {"10s"}
