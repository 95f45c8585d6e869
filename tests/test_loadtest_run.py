"""SLO and duration parsing, and the SLO gate on locust's statistics."""
from __future__ import annotations

import pytest

from kit.errors import KitError
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
