"""End to end on this host: `kit init` + `kit up` with a real Docker engine, real PostgreSQL,
Redis and Moodle (MOODLE_SRC). The site comes from tests/e2e/conftest.py.
"""
from __future__ import annotations

import re
import subprocess
import threading
import time

import pytest
import requests
import yaml

from kit.config import load_secrets
from kit.sizing import plan
from tests.e2e.conftest import SITE, TIMINGS, kit, moodle_php, psql, sh

pytestmark = pytest.mark.e2e


def login(site, password: str) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{site.url}/login/index.php", timeout=30)
    token = re.search(r'name="logintoken" value="([^"]+)"', page.text).group(1)
    resp = session.post(f"{site.url}/login/index.php", timeout=30, data={
        "username": site.moodle.admin_user, "password": password, "logintoken": token})
    session.last_page = resp  # type: ignore[attr-defined]
    return session


def test_login_page_answers_with_moodle_markup(site):
    resp = requests.get(f"{site.url}/login/index.php", timeout=30)
    assert resp.status_code == 200
    assert 'name="logintoken"' in resp.text and "moodle" in resp.text.lower()
    assert site.url.startswith("https://lms.kit.test:")


def test_admin_logs_in_with_the_stored_password(site):
    session = login(site, load_secrets(site)["admin_password"])
    page = session.get(f"{site.url}/user/profile.php", timeout=30)
    assert page.status_code == 200
    assert "login/logout.php?sesskey=" in page.text
    assert 'name="logintoken"' not in page.text
    wrong = login(site, "not-the-password")
    assert "Invalid login" in wrong.last_page.text


def test_static_files_and_slash_arguments_are_served(site):
    js = requests.get(f"{site.url}/lib/javascript-static.js", timeout=30)
    assert js.status_code == 200
    assert "Expires" in js.headers and "max-age=604800" in js.headers.get("Cache-Control", "")
    theme = requests.get(f"{site.url}/theme/image.php/boost/core/1/i/loading", timeout=60)
    assert theme.status_code == 200 and theme.headers["Content-Type"].startswith("image/")


def test_postgres_show_equals_plan(site):
    tuning = plan(site)
    for key, value in tuning.postgres.items():
        if key.startswith("tcp_keepalives_"):
            # SHOW over psql's Unix socket always says 0; the server applies the file's value to TCP.
            applied = psql(f"SELECT setting FROM pg_file_settings WHERE name = '{key}' AND applied")
            assert applied == value, key
            continue
        assert psql(f"SHOW {key}") == value, key


def test_pages_survive_postgres_closing_every_persistent_connection(site):
    """A database restart or restore closes every php-fpm child's persistent connection;
    pgsql.auto_reset_persistent makes each child reconnect instead of failing one page."""
    tuning = plan(site)
    # php-fpm and its nginx share one network namespace; whichever holds it has the address.
    replicas = [f"kit-{SITE}-web-{n}{suffix}" for n in range(1, tuning.web_replicas + 1) for suffix in ("", "-nginx")]
    addresses = sh("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                   *replicas).split()
    assert len(addresses) >= tuning.web_replicas
    for _ in range(2 * tuning.php_children_total):   # every child opens its connection
        requests.get(f"{site.url}/login/index.php", timeout=30)
    in_list = ", ".join(f"'{address}'" for address in addresses)
    killed = int(psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                      f"WHERE datname = 'moodle' AND host(client_addr) IN ({in_list})"))
    assert killed >= 2
    statuses = [requests.get(f"{site.url}/login/index.php", timeout=30).status_code
                for _ in range(3 * tuning.php_children_total)]
    assert statuses.count(200) == len(statuses), statuses


def test_fpm_pool_has_planned_max_children(site):
    tuning = plan(site)
    for replica in range(1, tuning.web_replicas + 1):
        dump = subprocess.run(["docker", "exec", f"kit-{SITE}-web-{replica}", "php-fpm8.2", "-tt"],
                              capture_output=True, text=True).stderr
        assert re.search(rf"pm\.max_children = {tuning.fpm_max_children}\b", dump), dump[-500:]
    status = sh("docker", "exec", f"kit-{SITE}-web-1", "sh", "-c",
                "SCRIPT_NAME=/fpm-status SCRIPT_FILENAME=/fpm-status REQUEST_METHOD=GET "
                "cgi-fcgi -bind -connect 127.0.0.1:9000")
    assert f"process manager:      {'static' if tuning.fpm_static else 'dynamic'}" in status


def redis_keys(site) -> str:
    return sh("docker", "exec", "-i", f"kit-{SITE}-redis", "sh", "-c", 'REDISCLI_AUTH="$(cat)" redis-cli --scan',
              stdin=load_secrets(site)["redis_password"])


def test_sessions_and_application_cache_live_where_the_plan_puts_them(site):
    """On one host the replicas share moodledata, so sessions and the application cache stay
    in Moodle's files there (levers redis_* off: measured cheaper); site.yaml can put them in
    Redis. Either way a user signed in through one replica is signed in on all of them."""
    tuning = plan(site)
    session = login(site, load_secrets(site)["admin_password"])
    for _ in range(3 * tuning.web_replicas):     # the edge spreads these over the replicas
        page = session.get(f"{site.url}/user/profile.php", timeout=30)
        assert page.status_code == 200 and "logintoken" not in page.text, page.url
    keys = redis_keys(site).split()
    assert any(k.startswith("sess_") for k in keys) == tuning.levers["redis_sessions"], keys[:20]
    assert any(k.startswith("muc_") for k in keys) == tuning.levers["redis_cache"], keys[:20]
    stores = moodle_php("$w = cache_config_writer::instance(); foreach ($w->get_mode_mappings() as $m) "
                        "{ echo $m['mode'], '=', $m['store'], \"\\n\"; }").split()
    if not tuning.levers["redis_cache"]:
        assert "1=default_application" in stores and "1=kit_redis" not in stores, stores
        # Not even unmapped: the install step and the cron runner read the same lever.
        every_store = moodle_php("echo implode(' ', array_keys(cache_config_writer::instance()->get_all_stores()));")
        assert "kit_redis" not in every_store.split() and "kit_local" not in every_store.split(), every_store
        # A site whose cache was in Redis (an older kit, or the lever on): the next configure,
        # with the container's own lever, maps files and leaves nothing behind in Redis.
        switched = sh("docker", "exec", "-e", "KIT_APP_CACHE=redis", f"kit-{SITE}-cron", "/opt/kit/entrypoint.sh",
                      "configure")
        assert "mapped to kit_redis" in switched, switched
        requests.get(f"{site.url}/login/index.php", timeout=30)
        assert "muc_" in redis_keys(site), "the Redis cache was not used while mapped"
        back = sh("docker", "exec", f"kit-{SITE}-cron", "/opt/kit/entrypoint.sh", "configure")
        assert "removed Redis store" in back and "removed local file store" in back, back
        assert not [k for k in redis_keys(site).split() if k.startswith("muc_")]
        assert sh("docker", "exec", f"kit-{SITE}-cron", "/opt/kit/entrypoint.sh", "configure").startswith("kit: ok")
        return
    assert "1=kit_redis" in stores, stores
    # The kit's store plugin reads the password from the secret file: Moodle's config has none.
    store = moodle_php("$s = cache_config_writer::instance()->get_all_stores()['kit_redis']; "
                       "echo $s['plugin'], ' ', json_encode($s['configuration']);")
    assert store.startswith("kitredis ") and "password" not in store, store


def test_cache_stores_have_their_lock_folders_before_concurrent_requests(site):
    """Moodle's file lock factory mkdirs lock folders without tolerating a race; config.php
    creates all 256 up front so concurrent first pages cannot fail with "Unable to acquire a
    lock for caching": Moodle's file store on the shared volume (emptied by every cache purge,
    as a restore does), and the local store that exists only beside a Redis application cache."""
    moodle_php("purge_all_caches();")
    shared = "/var/moodledata/cache/cachestore_file/default_application/filelocks"
    pages: list[str] = []

    def fetch() -> None:
        pages.append(requests.get(f"{site.url}/", timeout=60).text)

    threads = [threading.Thread(target=fetch) for _ in range(12)]     # the cold cache's first pages, at once
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(pages) == 12 and not [p for p in pages if "Unable to acquire a lock" in p]
    assert int(sh("docker", "exec", f"kit-{SITE}-web-1", "sh", "-c", f"ls {shared} | wc -l")) == 256
    mapped = moodle_php("$w = cache_config_writer::instance(); foreach ($w->get_definition_mappings() as $m) "
                        "{ echo $m['definition'], '=', $m['store'], \"\\n\"; }")
    if not plan(site).levers["redis_cache"]:
        assert "=kit_local" not in mapped, mapped
        return
    assert "core/coursemodinfo=kit_local" in mapped.split()
    count = sh("docker", "exec", f"kit-{SITE}-web-1", "sh", "-c",
               "ls /var/cache/moodle/muc-local/filelocks | wc -l")
    assert int(count) == 256


def test_adhoc_task_runs_on_a_worker_and_web_runs_no_cron(site):
    queued_at = int(time.time())
    moodle_php("\\core\\task\\manager::queue_adhoc_task(new \\core\\task\\calendar_fix_orphaned_events());")
    deadline = time.monotonic() + 60
    host = ""
    while time.monotonic() < deadline:
        host = psql("select hostname from mdl_task_log where classname like '%calendar_fix_orphaned_events' "
                    f"and timestart >= {queued_at} order by id desc limit 1")
        if host:
            break
        time.sleep(2)
    assert host.startswith(f"kit-{SITE}-worker-"), f"adhoc task not run by a worker within 60 s (host {host!r})"
    hosts = set(psql("select distinct hostname from mdl_task_log").split())
    assert not [h for h in hosts if "-web-" in h], hosts
    assert f"kit-{SITE}-cron" in hosts, "the scheduled-task runner has logged no task"
    for replica in range(1, plan(site).web_replicas + 1):
        procs = sh("docker", "exec", f"kit-{SITE}-web-{replica}", "sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
        assert "cron.php" not in procs and "adhoc_task.php" not in procs


def test_second_up_changes_nothing_and_keeps_data(site, site_dir):
    moodle_php("require_once($CFG->dirroot . '/course/lib.php'); "
               "create_course((object)['fullname' => 'Kept course', 'shortname' => 'kept1', 'category' => 1]);")
    assert psql("select count(*) from mdl_course where shortname = 'kept1'") == "1"
    started = time.monotonic()
    result = kit("up", cwd=site_dir)
    TIMINGS["second kit up (warm, nothing to do)"] = time.monotonic() - started
    assert result.returncode == 0
    assert "No changes" in result.stdout, result.stdout[-3000:]
    assert psql("select count(*) from mdl_course where shortname = 'kept1'") == "1"
    assert requests.get(f"{site.url}/login/index.php", timeout=30).status_code == 200


def test_status_json_reports_ready(site_dir):
    result = kit("status", "--json", cwd=site_dir)
    assert result.returncode == 0, result.stdout
    data = yaml.safe_load(result.stdout)
    assert data["ready"] is True
    roles = sorted({c["role"] for c in data["containers"]})
    site_roles = ["cron", "db", "edge", "redis", "web", "web-nginx", "worker"]
    monitoring_roles = ["alertmanager", "exporters", "procs", "prometheus"]  # the shared site monitors itself
    assert roles == sorted(site_roles + monitoring_roles)
    assert data["moodle_release"].startswith("4.5")
    assert "due" in data["queue"]


def test_no_secret_in_process_arguments(site):
    secrets = load_secrets(site)
    args = subprocess.run(["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"], capture_output=True,
                          text=True).stdout
    for key, value in secrets.items():
        if key.endswith("password"):  # db_user is a role name: PostgreSQL shows it in its process titles
            assert value not in args, f"{key} is visible in a process's arguments"
