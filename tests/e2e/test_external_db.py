"""A site whose database is external: a PostgreSQL 15 the test starts on this host, outside
the site (Debian's own binaries, listening on the Docker bridge's address), given to the
kit as `database: {external: DSN}`. The kit's status, doctor, queue and load-test cost
figures read it through the monitoring role and give the same numbers the tables do, as on
the kit's own database; a wrong password or address is one line naming the host and
PostgreSQL's error, exit 3, with nothing changed."""
from __future__ import annotations

import json
import re
import secrets
import subprocess
import time

import pytest
import yaml

from kit.config import load_site
from kit.images import OFFLINE_BASE_TAG
from kit.targets import target_for
from tests.e2e.conftest import SRC, TIMINGS, bridge_address, free_port, kit, moodle_php, psql
from tests.pg import LocalPostgres, available

pytestmark = pytest.mark.e2e
NAME = "e2e-ext"


@pytest.fixture(scope="module")
def external(site_dir, tmp_path_factory):
    """The external PostgreSQL and a site on it (after the shared site: its images are built)."""
    if available():
        pytest.skip(available())
    with LocalPostgres(listen=bridge_address()) as pg:
        password = secrets.token_urlsafe(18)
        # A managed database's usual shape: one application login that owns the database and
        # may create roles (the kit makes its read-only monitoring role with it).
        pg.sql(f"create role moodle_app login createrole password '{password}'")
        pg.sql("create database lms owner moodle_app")
        folder = tmp_path_factory.mktemp("external-db-site")
        dsn = f"postgresql://moodle_app@{pg.listen}:{pg.port}/lms?sslmode=disable"
        result = kit("init", "--name", NAME, "--users", "10", "--moodle-source", str(SRC), "--bind", "127.0.0.1",
                     "--port", str(free_port()), "--base-image", OFFLINE_BASE_TAG, "--database-external", dsn,
                     "--db-password-stdin", cwd=folder, stdin=password + "\n")
        assert result.returncode == 0, result.stderr
        # Its figures come from PostgreSQL through the monitoring role, not from Prometheus:
        # the monitoring stack stays off (it is tested on the shared site), to keep CI's time.
        site = yaml.safe_load((folder / "site.yaml").read_text())
        site["monitoring"] = {"enabled": False}
        (folder / "site.yaml").write_text(yaml.safe_dump(site, sort_keys=False))
        try:
            started = time.monotonic()
            result = kit("up", cwd=folder)
            TIMINGS["external database: first kit up (Moodle installed on it)"] = time.monotonic() - started
            assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
            yield folder, pg
        finally:
            kit("down", "--destroy-data", "--yes", cwd=folder)


def direct_queue(sql) -> dict[str, int]:
    """The queue as the tables say it, counted the way Moodle's adhocqueue check counts."""
    queued, due, failing = sql("select count(*), count(*) filter (where nextruntime <= extract(epoch from now())), "
                               "count(*) filter (where faildelay > 0) from mdl_task_adhoc").split("|")
    return {"queued": int(queued), "due": int(due), "failing": int(failing)}


def queue_later_tasks(php, count: int) -> None:
    """Tasks due in an hour: the workers leave them, so the figures stay still while compared."""
    php(f"for ($i = 0; $i < {count}; $i++) {{ $t = new \\local_kit\\task\\canary(); "
        "$t->set_custom_data(['token' => 'later' . $i]); $t->set_next_run_time(time() + 3600); "
        "\\core\\task\\manager::queue_adhoc_task($t); }")


def ext_php(folder):
    def php(code: str) -> str:
        script = "<?php define('CLI_SCRIPT', true); require '/var/www/moodle/config.php';\n" + code
        result = subprocess.run(["docker", "exec", "-i", "-u", "www-data", f"kit-{NAME}-web-1", "php"], input=script,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout
    return php


@pytest.mark.parametrize("which", ["kit-run", "external"])
def test_status_and_doctor_give_the_tables_numbers(which, site_dir, external):
    folder, pg = external
    if which == "kit-run":
        folder, sql, php = site_dir, psql, moodle_php
    else:
        def sql(text: str) -> str:
            return pg.sql(text, dbname="lms")
        php = ext_php(folder)
    queue_later_tasks(php, 7)
    status = json.loads(kit("status", "--json", cwd=folder).stdout)
    assert status["ready"] is True, status["reason"]
    direct = direct_queue(sql)
    assert {k: status["queue"][k] for k in direct} == direct
    assert direct["queued"] >= 7
    assert status["moodle_release"] == sql("select value from mdl_config where name = 'release'")
    doctor = kit("doctor", cwd=folder)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    conn = re.search(r"(\d+) of (\d+) connections in use", doctor.stdout)
    assert conn and int(conn.group(2)) == int(sql("show max_connections"))
    size = re.search(r"database is (\d+) MB", doctor.stdout)
    assert size and abs(int(size.group(1)) - int(sql("select pg_database_size(current_database()) / 1048576"))) <= 1
    assert f"{direct['queued']} adhoc tasks queued ({direct['due']} due)" in doctor.stdout


def test_load_test_cost_figures_read_the_external_database(external):
    folder, pg = external
    target = target_for(load_site(folder / "site.yaml"))
    meter = target.meter()

    def direct() -> int:
        return int(pg.sql("select xact_commit + xact_rollback from pg_stat_database where datname = 'lms'"))
    # The site keeps working meanwhile (cron, workers): the meter's figure lies between two direct readings.
    low = direct()
    before = meter.snapshot()
    high = direct()
    assert before.db_xacts is not None and low <= before.db_xacts <= high
    for _ in range(5):
        pg.sql("select 1", dbname="lms")
    after = meter.snapshot()
    assert after.db_xacts is not None and after.db_xacts - before.db_xacts >= 5
    cost = meter.cost(before, after, requests=10)
    assert cost.db_xacts_per_request is not None and cost.db_xacts_per_request >= 0.5
    assert "web" in cost.cpu_ms_per_request and "db" not in cost.cpu_ms_per_request


def test_the_monitoring_role_cannot_write_on_the_external_database(external):
    folder, pg = external
    monitor = target_for(load_site(folder / "site.yaml")).monitor_db()
    assert monitor.login.user == "kit_monitor"
    with pytest.raises(Exception, match="permission denied for table mdl_config"):
        monitor.execute("update mdl_config set value = 'x' where name = 'release'")
    assert pg.sql("select rolsuper or rolcreaterole from pg_roles where rolname = 'kit_monitor'") == "f"


def one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 3, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_wrong_password_or_address_is_one_line_naming_the_host(external):
    folder, pg = external
    secrets_file = folder / ".kit" / NAME / "secrets.yaml"
    site_file = folder / "site.yaml"
    good_secrets, good_site = secrets_file.read_text(), site_file.read_text()
    containers_before = subprocess.run(["docker", "ps", "-q", "--filter", f"label=kit.site={NAME}"],
                                       capture_output=True, text=True).stdout
    try:
        data = yaml.safe_load(good_secrets)
        data["db_password"] = "not-the-password"
        secrets_file.write_text(yaml.safe_dump(data))
        line = one_line(kit("up", cwd=folder))
        assert f"PostgreSQL at {pg.listen}:{pg.port} (as moodle_app): password authentication failed for user " \
               '"moodle_app"' in line, line
        doctor = kit("doctor", cwd=folder)
        assert doctor.returncode == 3 and "FAIL database" in doctor.stderr and "password authentication" in doctor.stderr
        secrets_file.write_text(good_secrets)
        site = yaml.safe_load(good_site)
        closed = free_port()
        site["database"]["external"] = f"postgresql://moodle_app@{pg.listen}:{closed}/lms?sslmode=disable"
        site_file.write_text(yaml.safe_dump(site))
        line = one_line(kit("up", cwd=folder))
        assert f"PostgreSQL at {pg.listen}:{closed} (as moodle_app): " in line and "refused" in line, line
    finally:
        secrets_file.write_text(good_secrets)
        site_file.write_text(good_site)
    assert subprocess.run(["docker", "ps", "-q", "--filter", f"label=kit.site={NAME}"], capture_output=True,
                          text=True).stdout == containers_before
    assert json.loads(kit("status", "--json", cwd=folder).stdout)["ready"] is True
