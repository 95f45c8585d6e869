"""Performance levers: the stock profile renders an untuned Debian stack, the tuned one the
kit's settings, and single levers flip exactly their own lines."""
from __future__ import annotations

import re

import pytest

from kit.config import LEVERS, TUNED_OFF_ON_TARGET, load_site
from kit.errors import KitError
from kit.render import driver_vars, render_files
from kit.sizing import DEBIAN_FPM, plan
from tests.conftest import HOST_2x24, write_site
from tests.test_render import IMAGES


def make(site_dir, fake_moodle, performance=None, **extra):
    data = {"name": "lv", "users": 300, "moodle": {"source": str(fake_moodle)}, **extra}
    if performance is not None:
        data["performance"] = performance
    return load_site(write_site(site_dir, data))


def files_for(site):
    tuning = plan(site, HOST_2x24)
    return tuning, render_files(site, tuning)


def pg_settings(conf: str) -> dict[str, str]:
    return dict(re.findall(r"^(\w+) = '([^']*)'$", conf, re.M))


def test_tuned_is_the_default_and_turns_on_every_lever_that_pays_on_one_host(site_dir, fake_moodle):
    site = make(site_dir, fake_moodle)
    tuning, files = files_for(site)
    assert tuning.levers == {name: name not in TUNED_OFF_ON_TARGET["local"] for name in LEVERS}
    assert {"redis_sessions", "redis_cache"} <= set(TUNED_OFF_ON_TARGET["local"])
    assert "'dbpersist' => true," in files["config.php"]
    assert "'ssl' => 'prefer'," in files["config.php"]
    assert "session_handler_class" not in files["config.php"]          # files on the replicas' shared volume
    assert driver_vars(site, tuning, IMAGES, files)["kit_app_cache"] == "file"
    assert tuning.reasons["lever.redis_cache"].endswith(f"(off on target local: {TUNED_OFF_ON_TARGET['local']['redis_cache']})")
    assert pg_settings(files["postgresql.conf"])["ssl"] == "off"
    assert "ssl_cert_file" not in files["postgresql.conf"]
    assert "opcache.validate_timestamps = 1" in files["php.ini"]    # Moodle writes PHP into moodledata
    assert "opcache.revalidate_freq = 60" in files["php.ini"]
    assert "pm = static" in files["fpm-pool.conf"]
    assert "opcache.max_accelerated_files = 20000" in files["php.ini"]
    assert "realpath_cache_ttl = 600" in files["php.ini"]
    assert pg_settings(files["postgresql.conf"])["synchronous_commit"] == "on"


def test_stock_profile_is_debian_untuned(site_dir, fake_moodle):
    site = make(site_dir, fake_moodle, {"profile": "stock"})
    tuning, files = files_for(site)
    assert not any(tuning.levers.values())
    assert tuning.web_replicas == 1
    assert f"pm.max_children = {DEBIAN_FPM['max_children']}\n" in files["fpm-pool.conf"]
    assert "'dbpersist' => false," in files["config.php"]
    assert "session_handler_class" not in files["config.php"]          # Moodle's file sessions
    assert tuning.postgres == {"max_connections": "100", "shared_buffers": "128MB", "ssl": "on",
                               "synchronous_commit": "on"}
    settings = pg_settings(files["postgresql.conf"])
    assert {key: settings[key] for key in tuning.postgres} == tuning.postgres
    assert "work_mem" not in settings and "random_page_cost" not in settings
    assert "ssl_cert_file = 'server.crt'" in files["postgresql.conf"]
    assert "opcache.validate_timestamps = 1" in files["php.ini"]
    assert "opcache.revalidate_freq = 2" in files["php.ini"]
    assert "opcache.max_accelerated_files = 10000" in files["php.ini"]
    assert "pm = dynamic" in files["fpm-pool.conf"]
    assert "realpath_cache_ttl = 120" in files["php.ini"]
    assert driver_vars(site, tuning, IMAGES, files)["kit_app_cache"] == "file"


@pytest.mark.parametrize("lever", sorted(LEVERS))
def test_one_lever_on_stock_changes_only_its_own_files(site_dir, fake_moodle, lever):
    _, stock = files_for(make(site_dir, fake_moodle, {"profile": "stock"}))
    site = make(site_dir, fake_moodle, {"profile": "stock", "levers": {lever: True}})
    tuning, alone = files_for(site)
    assert [name for name, on in tuning.levers.items() if on] == [lever]
    owners = {"db_persistent_connections": {"config.php", "postgresql.conf", "php.ini"}, "db_tls_local_off": {"postgresql.conf"},
              "redis_sessions": {"config.php"}, "redis_cache": {"config.php"}, "opcache_sized": {"php.ini"},
              "realpath_cache": {"php.ini"},
              # more children per replica, fewer replicas: Prometheus scrapes those that run
              "fpm_sized": {"fpm-pool.conf", "prometheus.yml"},
              "postgres_sized": {"postgresql.conf"}}
    changed = {name for name in stock if stock[name] != alone[name]}
    assert changed == owners[lever]
    if lever == "redis_cache":
        assert driver_vars(site, tuning, IMAGES, alone)["kit_app_cache"] == "redis"
        assert "/muc-local/filelocks'" in alone["config.php"] and "/muc-local/" not in stock["config.php"]
    # Moodle's shared file store gets its lock folders up front on every site, lever or not.
    assert "/cache/cachestore_file/default_application/filelocks'" in alone["config.php"]
    assert "synchronous_commit = 'on'" in alone["postgresql.conf"]


def test_links_to_other_machines_get_verified_tls(site_dir, fake_moodle):
    hosts = {"machines": [{"name": "data", "address": "10.0.0.10", "roles": ["edge", "db", "redis", "cron"]},
                          {"name": "app1", "address": "10.0.0.11", "roles": ["web", "worker"]}]}
    site = make(site_dir, fake_moodle, target="hosts", hosts=hosts)
    tuning, files = files_for(site)
    assert tuning.levers == {name: True for name in LEVERS}     # replicas on other machines share no disk
    assert driver_vars(site, tuning, IMAGES, files)["kit_app_cache"] == "redis"
    assert "\\core\\session\\redis" in files["config.php"]
    assert "session_redis_acquire_lock_retry" in files["config.php"]
    assert pg_settings(files["postgresql.conf"])["ssl"] == "on"
    assert "'ssl' => 'verify-full'," in files["config.php"]
    assert "'dbpersist' => true," in files["config.php"]
    assert tuning.db_sslmode == "verify-full" and tuning.network_tls
    assert "ssl_cert_file = '/run/kit/tls/server.crt'" in files["postgresql.conf"]
    assert "hostnossl all all 0.0.0.0/0       reject" in files["pg_hba.conf"]
    assert "port 0\ntls-port 6379" in files["redis.conf"]
    assert "$CFG->session_redis_host = '127.0.0.1';" in files["config.php"]   # through the local TLS tunnel


def test_site_yaml_turns_redis_back_on_for_one_host(site_dir, fake_moodle):
    site = make(site_dir, fake_moodle, {"levers": {"redis_sessions": True, "redis_cache": True}})
    tuning, files = files_for(site)
    assert tuning.levers == {name: True for name in LEVERS}
    assert "\\core\\session\\redis" in files["config.php"]
    assert driver_vars(site, tuning, IMAGES, files)["kit_app_cache"] == "redis"
    assert tuning.reasons["lever.redis_cache"].endswith("(site.yaml performance.levers)")


def test_unknown_lever_and_k8s_overrides_are_refused(site_dir, fake_moodle):
    with pytest.raises(KitError, match="performance.levers"):
        make(site_dir, fake_moodle, {"levers": {"turbo": True}})
    with pytest.raises(KitError, match="Kubernetes chart always runs the tuned profile"):
        make(site_dir, fake_moodle, {"profile": "stock"}, target="k8s")


def test_moodle_containers_run_with_www_data_home():
    """libpq reads $HOME/.postgresql/postgresql.crt when TLS is on: a HOME of /root
    (unreadable to www-data) fails every required-TLS connection with EACCES."""
    import yaml as _yaml

    from kit import ROOT

    env = _yaml.safe_load((ROOT / "playbooks" / "group_vars" / "all.yml").read_text())["kit_moodle_env"]
    assert env["HOME"] == "/var/www"
