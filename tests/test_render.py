"""Rendering: deterministic, reads only Site/Tuning, never writes secrets into build/."""
from __future__ import annotations

import re

import pytest
import yaml

from kit.config import create_secrets, load_site
from kit.images import ImageSet
from kit.render import render, render_files
from kit.sizing import plan
from tests.conftest import HOST_2x24, HOST_8x64, write_site

IMAGES = ImageSet("kit/php:1", "kit/moodle:2", "kit/moodle-web:2", "kit/postgres:3", "kit/redis:4", "kit/edge:5")


@pytest.fixture
def site(site_dir, fake_moodle):
    return load_site(write_site(site_dir, {"name": "r1", "users": 400, "url": "https://lms.example.edu",
                                           "tls": {"mode": "proxy"},
                                           "moodle": {"source": str(fake_moodle)}}))


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_render_is_deterministic(site):
    tuning = plan(site, HOST_2x24)
    first = snapshot(render(site, tuning, IMAGES))
    second = snapshot(render(site, tuning, IMAGES))
    assert first == second
    assert {"config.php", "nginx.conf", "edge.conf", "postgresql.conf", "php.ini", "fpm-pool.conf", "redis.conf",
            "vars.yml", "inventory.ini", "plan.yml"} <= set(first)


def test_postgresql_conf_carries_exactly_the_plan(site):
    tuning = plan(site, HOST_2x24)
    conf = render_files(site, tuning)["postgresql.conf"]
    found = dict(re.findall(r"^(\w+) = '([^']*)'$", conf, re.M))
    for key, value in tuning.postgres.items():
        assert found[key] == value, key


def test_fpm_pool_and_nginx_follow_the_plan(site):
    tuning = plan(site, HOST_2x24)
    files = render_files(site, tuning)
    assert f"pm.max_children = {tuning.fpm_max_children}\n" in files["fpm-pool.conf"]
    # Each replica's nginx talks to its own php-fpm; the edge balances over replicas.
    assert "fastcgi_pass 127.0.0.1:9000;" in files["nginx.conf"]
    assert "include /etc/nginx/kit/upstream.conf;" in files["edge.conf"]
    assert "proxy_next_upstream error timeout" in files["edge.conf"]
    assert f"fastcgi_param SERVER_PORT {site.public_port};" in files["nginx.conf"]
    for name in ("nginx.conf", "edge.conf"):
        assert "client_max_body_size 100m;" in files[name]
    assert "upload_max_filesize = 100M" in files["php.ini"]


def test_config_php_is_cluster_ready(site):
    php = render_files(site, plan(site, HOST_2x24))["config.php"]
    for needle in ("$CFG->wwwroot   = 'https://lms.example.edu';", "$CFG->sslproxy  = true;", "X-Accel-Redirect",
                   "$CFG->localcachedir = '/var/cache/moodle';", "disableupdateautodeploy = true",
                   "$CFG->cronclionly = true;", "postgres_lock_factory",
                   "[$CFG->dbuser, $CFG->dbpass] = $kit_db_login;", "kit_secret('db_login')",
                   "file_get_contents('/run/kit/secrets/' . $name)"):
        assert needle in php, needle


def test_no_secret_reaches_build_dir(site):
    secrets = create_secrets(site)
    out = render(site, plan(site, HOST_2x24), IMAGES)
    for path in out.iterdir():
        text = path.read_text()
        for key, value in secrets.items():
            assert value not in text, f"{key} leaked into {path.name}"


def test_vars_hold_counts_and_checksums(site):
    tuning = plan(site, HOST_2x24)
    data = yaml.safe_load((render(site, tuning, IMAGES) / "vars.yml").read_text())
    assert len(data["kit_names"]["web"]) == tuning.web_replicas
    assert len(data["kit_names"]["worker"]) == tuning.workers
    assert data["kit_images"]["moodle"] == "kit/moodle:2"
    changed = site.model_copy(update={"users": 5000})
    data2 = yaml.safe_load((render(changed, plan(changed, HOST_8x64), IMAGES) / "vars.yml").read_text())
    assert data2["kit_checksums"]["db"] != data["kit_checksums"]["db"]
    assert data2["kit_checksums"]["redis"] != data["kit_checksums"]["redis"]


def test_timeouts_grow_from_php_fpm_out_to_the_edge(site):
    """php-fpm ends a stuck request first; nginx and the edge wait longer and pass its answer on,
    and the edge never starts a retry after the request's budget is spent."""
    tuning = plan(site, HOST_2x24)
    assert tuning.request_timeout_s < tuning.fastcgi_read_timeout_s < tuning.edge_read_timeout_s
    files = render_files(site, tuning)
    assert f"max_execution_time = {tuning.request_timeout_s}\n" in files["php.ini"]
    assert f"request_terminate_timeout = {tuning.request_timeout_s}s\n" in files["fpm-pool.conf"]
    assert f"fastcgi_read_timeout {tuning.fastcgi_read_timeout_s}s;" in files["nginx.conf"]
    assert f"proxy_read_timeout {tuning.edge_read_timeout_s}s;" in files["edge.conf"]
    assert f"proxy_next_upstream_timeout {tuning.edge_read_timeout_s}s;" in files["edge.conf"]
    reasons = {key: why for key, _, why in tuning.rows()}
    assert "php-fpm" in reasons["fastcgi_read_timeout_s"] and reasons["edge_read_timeout_s"]
