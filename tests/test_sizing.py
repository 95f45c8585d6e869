"""Sizing: PGTune-style PostgreSQL values and php-fpm/replica/worker counts follow their rules."""
from __future__ import annotations

import pytest

from kit.config import parse_site
from kit.sizing import CHILDREN_PER_CPU, MIN_CHILDREN_PER_REPLICA, HostResources, pg_mem, plan
from kit.sizing import pg_to_kb as kb
from tests.conftest import HOST_2x24, HOST_8x64


@pytest.mark.parametrize("value, shown", [(1024, "1MB"), (1536 * 1024, "1536MB"), (2 * 1024**2, "2GB"),
                                          (4096, "4MB"), (49768, "49768kB"), (1024**3, "1TB")])
def test_pg_mem_matches_postgres_show_format(value, shown):
    assert pg_mem(value) == shown
    assert kb(shown) == value


def test_pgtune_memory_rules(site_dir):
    tuning = plan(parse_site({"users": 300}, site_dir=site_dir), HOST_8x64)
    db_kb = int(64 * 1024 * 0.25) * 1024
    pg = tuning.postgres
    assert kb(pg["shared_buffers"]) == db_kb // 4
    assert kb(pg["effective_cache_size"]) == db_kb * 3 // 4
    assert kb(pg["maintenance_work_mem"]) == min(db_kb // 16, 2 * 1024**2)
    assert kb(pg["work_mem"]) >= 4096
    assert kb(pg["wal_buffers"]) <= 16 * 1024
    assert pg["random_page_cost"] == "1.1" and pg["jit"] == "off" and pg["ssl"] == "off"


def test_max_connections_cover_every_client(site_dir):
    tuning = plan(parse_site({"users": 2000}, site_dir=site_dir), HOST_8x64)
    clients = tuning.php_children_total + tuning.fpm_max_children + tuning.workers + 1
    assert int(tuning.postgres["max_connections"]) >= clients


def test_parallel_settings_only_with_four_cpus(site_dir):
    site = parse_site({}, site_dir=site_dir)
    assert "max_parallel_workers" not in plan(site, HOST_2x24).postgres
    assert plan(site, HOST_8x64).postgres["max_parallel_workers"] == "8"


def test_more_users_never_get_fewer_resources(site_dir):
    previous = None
    for users in (10, 100, 300, 1000, 5000, 20000):
        tuning = plan(parse_site({"users": users}, site_dir=site_dir), HOST_8x64)
        current = (tuning.php_children_total, tuning.workers, int(tuning.postgres["max_connections"]))
        if previous:
            assert all(c >= p for c, p in zip(current, previous, strict=False)), (users, current, previous)
        previous = current


def test_children_are_capped_by_cpu_on_a_small_host(site_dir):
    tuning = plan(parse_site({"users": 5000}, site_dir=site_dir), HOST_2x24)
    assert tuning.php_children_total <= 2 * CHILDREN_PER_CPU + tuning.web_replicas * MIN_CHILDREN_PER_REPLICA
    assert "CPU" in tuning.reasons["fpm_max_children"]


def test_two_cpus_get_three_children_per_cpu_split_over_two_replicas(site_dir):
    # docs/performance.md: on 2 CPUs, 12 children gave p95 1.1-1.9 s at 40 users; 5-6 gave 0.67-0.75 s.
    tuning = plan(parse_site({"users": 100}, site_dir=site_dir), HOST_2x24)
    assert (tuning.web_replicas, tuning.fpm_max_children, tuning.php_children_total) == (2, 3, 6)


def test_at_least_two_replicas_for_rolling_updates(site_dir):
    assert plan(parse_site({"users": 10}, site_dir=site_dir), HOST_2x24).web_replicas == 2


def test_site_overrides_win(site_dir):
    tuning = plan(parse_site({"scale": {"web_replicas": 3, "workers": 5}}, site_dir=site_dir), HOST_2x24)
    assert (tuning.web_replicas, tuning.workers) == (3, 5)
    assert "site.yaml" in tuning.reasons["workers"]


def test_host_override_is_used(site_dir):
    site = parse_site({"host": {"cpus": 16, "memory_gb": 128}}, site_dir=site_dir)
    assert HostResources.for_site(site) == HostResources(16, 128 * 1024)


def test_every_value_has_a_reason(site_dir):
    for key, _value, reason in plan(parse_site({}, site_dir=site_dir), HOST_8x64).rows():
        assert reason, key


def test_scaling_within_a_step_never_changes_postgresql_settings(tmp_path):
    """max_connections needs a PostgreSQL restart: `kit scale` must not force one."""
    from kit.config import parse_site

    base = plan(parse_site({"users": 50}, site_dir=tmp_path), HOST_2x24)
    for scale in ({"web_replicas": 1}, {"web_replicas": 3}, {"workers": 1}, {"workers": 4}):
        scaled = plan(parse_site({"users": 50, "scale": scale}, site_dir=tmp_path), HOST_2x24)
        assert scaled.postgres == base.postgres, scale
    big = plan(parse_site({"users": 5000}, site_dir=tmp_path), HOST_8x64)
    needed = big.php_children_total + big.fpm_max_children + big.workers + 12
    assert int(big.postgres["max_connections"]) >= needed
    assert int(big.postgres["max_connections"]) % 100 == 0
