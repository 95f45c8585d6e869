"""benchmarks/stock_vs_tuned.py: the table and the CPU check, from saved results (no sites run)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "stock_vs_tuned.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("stock_vs_tuned", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def level(users: int, rps: float, p95: float, passed: bool, site: float, php: float) -> dict:
    return {"users": users, "passed": passed, "p95_ms": p95, "rps": rps, "failures": 0, "requests": int(rps * 60),
            "cost": {"host_cpus": 2, "host_cpu_pct": 100.0, "db_xacts_per_request": 50.0,
                     "cpu_ms_per_request": {"web": php, "db": site - php - 5, "site": site, "load_generator": 6.0}}}


def profile(capacity: int, levels: list[dict], sat_rps: float, sat_site: float) -> dict:
    saturated = {"total": {"rps": sat_rps, "p95": 5000.0, "failures": 0},
                 "cost": {"host_cpus": 2, "host_cpu_pct": 190.0, "db_xacts_per_request": 50.0,
                          "cpu_ms_per_request": {"web": sat_site - 20, "db": 15.0, "site": sat_site,
                                                 "load_generator": 6.0}}}
    return {"capacity": {"capacity_users": capacity, "levels": levels}, "at25": levels[1], "saturated": saturated}


@pytest.fixture()
def results() -> dict:
    stock = profile(30, [level(10, 4.4, 240, True, 130, 80), level(25, 10.2, 650, True, 122, 78),
                         level(35, 12.9, 1500, False, 134, 86)], sat_rps=13.3, sat_site=135.0)
    tuned = profile(40, [level(10, 4.5, 220, True, 107, 76), level(25, 10.8, 360, True, 85, 64),
                         level(40, 16.0, 990, True, 93, 71), level(45, 15.4, 1800, False, 110, 84)],
                    sat_rps=15.8, sat_site=110.0)
    return {"stock": stock, "tuned": tuned}


def test_cpu_needed_uses_the_cheapest_level_and_the_capacity_levels_request_rate(bench, results):
    users_line, rps_line = bench.cpu_needed(results)
    # 2 x 30 users x (16.0 / 40) req/s x (85 + 6) ms = 2.18 cores of 2
    assert "60 users x 0.40 req/s per user at 40 users" in users_line
    assert "91 ms per request" in users_line and "25 users" in users_line
    assert "2.18 of 2 cores (109%)" in users_line
    # 1.6 x 13.3 req/s x 91 ms = 1.94 cores
    assert "21.3 req/s" in rps_line and "1.94 of 2 cores (97%)" in rps_line


def test_cpu_needed_follows_the_ratios_asked(bench, results):
    users_line, _ = bench.cpu_needed(results, users_ratio=1.0)
    assert "30 users" in users_line and "1.09 of 2 cores" in users_line


def test_from_results_reprints_the_table_and_the_check(tmp_path, results):
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps({"profiles": results, "levers": []}))
    out = subprocess.run([sys.executable, str(SCRIPT), "--from-results", str(saved)],
                         capture_output=True, text=True, check=True).stdout
    assert "| users at SLO (p95<=1s, errors<=1%)         |           30 |           40 |       1.33x |" in out
    assert "CPU needed for 2x stock's users at SLO" in out


def test_repeated_capacity_searches_show_their_spread_beside_the_median(bench, results):
    results["stock"]["capacity_repeats"] = [25, 30, 30]
    results["tuned"]["capacity_repeats"] = [40, 35, 45]
    label, stock, tuned, ratio = bench.table(results)[0]
    assert label.startswith("users at SLO")
    assert stock == "30 (25-30)" and tuned == "40 (35-45)" and ratio == "1.33x"


def test_one_capacity_search_prints_no_spread(bench, results):
    _, stock, tuned, _ = bench.table(results)[0]
    assert (stock, tuned) == ("30", "40")


def test_repeated_searches_show_the_spread_of_the_cost_at_25_users_too(bench, results):
    results["stock"]["capacity_repeats"] = [25, 30, 30]
    results["tuned"]["capacity_repeats"] = [40, 35, 45]
    results["stock"]["site_ms_at25_repeats"] = [118.0, 122.0, 131.5]
    results["tuned"]["site_ms_at25_repeats"] = [85.0, float("nan"), 90.25]
    row = next(r for r in bench.table(results) if r[0] == "site CPU ms per request at 25 users")
    assert row == ("site CPU ms per request at 25 users", "122.0 (118.0-131.5)", "85.0 (85.0-90.2)", "0.70x")


def test_head_to_head_gives_each_side_its_median_and_range(bench):
    def summary(site: float, db: float) -> dict:
        return {"cost": {"cpu_ms_per_request": {"site": site, "db": db}}}

    rows = [{"lever": "none", "summary": summary(112.4, 36.2)},
            {"lever": "tuned (default) (h2h 1)", "summary": summary(80.0, 12.0)},
            {"lever": "db_persistent_connections (h2h 1)", "summary": summary(84.0, 16.5)},
            {"lever": "tuned (default) (h2h 2)", "summary": summary(76.0, 11.0)},
            {"lever": "db_persistent_connections (h2h 2)", "summary": {"cost": None}},
            {"lever": "tuned (default) (h2h 3)", "summary": summary(90.0, 13.0)}]
    text = bench.head_to_head_table(rows)
    tuned = next(line for line in text.splitlines() if line.startswith("| tuned (default)"))
    lever = next(line for line in text.splitlines() if line.startswith("| db_persistent_connections"))
    assert "|    3 |" in tuned and "80.0 (76.0-90.0)" in tuned and "12.0 (11.0-13.0)" in tuned
    assert "|    2 |" in lever and "84.0 (84.0-84.0)" in lever     # the run without counters is left out
    assert "none" not in text
    assert bench.head_to_head_table(rows[:1]) == ""


def test_the_benchmark_measures_every_lever_the_kit_has(bench):
    from kit.config import LEVERS

    assert bench.LEVERS == tuple(LEVERS)
