"""The kit's database module against a real PostgreSQL 15 (started by the test): the
monitoring role reads the figures and cannot write, failures are one line naming the host
and PostgreSQL's own message, and rotation's role changes work."""
from __future__ import annotations

import socket
import time

import pytest

from kit import db
from kit.errors import KitError
from kit.k8s.portforward import PortForward
from tests.pg import MOODLE_TABLES, LocalPostgres, available

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

OWNER_PASSWORD = "owner-pw-1234567890"
MONITOR_PASSWORD = "monitor-pw-1234567890"


@pytest.fixture(scope="module")
def pg():
    with LocalPostgres() as server:
        server.sql(f"create role moodle login password '{OWNER_PASSWORD}'")
        server.sql("create database moodle owner moodle")
        server.sql("set role moodle;" + MOODLE_TABLES + """
            insert into mdl_config (name, value) values ('version', '2024100706.00'),
              ('release', '4.5.6 (Build: 20250811)'), ('smtppass', 'secret-smtp');
            insert into mdl_task_adhoc (classname, nextruntime, faildelay)
              select '\\core\\task\\x', extract(epoch from now())::bigint - 300 + g, case when g = 1 then 60 end
                from generate_series(1, 5) g;
            insert into mdl_task_adhoc (classname, nextruntime) values ('\\core\\task\\later',
              extract(epoch from now())::bigint + 3600);""", dbname="moodle")
        yield server


def endpoint(pg: LocalPostgres) -> db.Endpoint:
    return db.Endpoint(host="127.0.0.1", port=pg.port)


def admin(pg: LocalPostgres) -> db.Database:
    return db.Database(endpoint(pg), db.Login("postgres", pg.admin_password), "admin")


def monitor(pg: LocalPostgres) -> db.Database:
    return db.Database(endpoint(pg), db.Login("kit_monitor", MONITOR_PASSWORD), "monitor")


@pytest.fixture(scope="module")
def monitored(pg):
    changed = db.ensure_monitor_role(admin(pg), endpoint(pg), db.Login("kit_monitor", MONITOR_PASSWORD))
    db.ensure_functions(admin(pg), "kit_monitor", as_role=db.OWNER_ROLE)
    assert changed is True
    return pg


def test_the_monitoring_role_reads_the_same_figures_as_the_tables(monitored):
    pg = monitored
    queue = db.queue(monitor(pg))
    direct = pg.sql("select count(*), count(*) filter (where nextruntime <= extract(epoch from now())), "
                    "count(*) filter (where faildelay > 0) from mdl_task_adhoc", dbname="moodle")
    assert queue is not None
    assert f"{queue.queued}|{queue.due}|{queue.failing}" == direct
    assert queue.queued == 6 and queue.due == 5 and queue.failing == 1
    assert 290 <= queue.oldest_age_s <= 320
    # The failing task is named by its class (what an operator looks up), never its custom data.
    assert queue.failing_classes == (("\\core\\task\\x", 1),)
    assert queue.failing_text() == "1 failing: \\core\\task\\x x1"
    assert db.queue_line(queue.as_dict()).endswith("oldest overdue " + str(queue.oldest_age_s) + "s, 1 failing: "
                                                   "\\core\\task\\x x1")
    assert db.moodle_setting(monitor(pg), "release") == "4.5.6 (Build: 20250811)"
    assert db.moodle_setting(monitor(pg), "version") == "2024100706.00"
    figures = db.connections(monitor(pg))
    assert figures.limit == int(pg.sql("show max_connections")) and figures.used >= 1
    assert db.transactions(monitor(pg)) > 0


def test_the_monitoring_role_cannot_write_nor_read_moodles_tables(monitored):
    with pytest.raises(KitError, match=r"permission denied for table mdl_config"):
        monitor(monitored).execute("update mdl_config set value = 'x' where name = 'version'")
    with pytest.raises(KitError, match=r"permission denied for table mdl_config"):
        monitor(monitored).one("select value from mdl_config where name = 'smtppass'")
    with pytest.raises(KitError, match="permission denied"):
        monitor(monitored).execute("create table kit_probe (id int)")
    # The one function that reads mdl_config answers only for version and release.
    with monitor(monitored).connect() as conn:
        assert conn.execute("select kit.moodle_setting('smtppass')").fetchone() == (None,)
    assert monitored.sql("select value from mdl_config where name = 'version'", dbname="moodle") == "2024100706.00"


def test_a_site_not_rolled_out_since_the_failing_classes_came_still_gives_its_queue(monitored):
    """The kit's functions are made by `kit up`: an older site has adhoc_queue() alone."""
    monitored.sql("set role moodle; drop function kit.adhoc_failing()", dbname="moodle")
    try:
        queue = db.queue(monitor(monitored))
        assert queue is not None and queue.failing == 1 and queue.failing_classes == ()
        assert queue.failing_text() == "1 failing"
    finally:
        db.ensure_functions(admin(monitored), "kit_monitor", as_role=db.OWNER_ROLE)
    assert db.queue(monitor(monitored)).failing_classes == (("\\core\\task\\x", 1),)


def test_ensuring_the_monitoring_role_again_changes_nothing(monitored):
    assert db.ensure_monitor_role(admin(monitored), endpoint(monitored),
                                  db.Login("kit_monitor", MONITOR_PASSWORD)) is False


def test_a_wrong_password_is_one_line_naming_the_host_and_postgresqls_error(pg):
    wrong = db.Database(endpoint(pg), db.Login("moodle", "not-the-password"), "owner")
    with pytest.raises(KitError) as exc:
        wrong.one("select 1")
    message = str(exc.value)
    assert message == f"PostgreSQL at 127.0.0.1:{pg.port} (as moodle): password authentication failed for user " \
                      '"moodle"'
    assert exc.value.exit_code == 3


def test_an_unreachable_server_is_one_line(pg):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    nowhere = db.Database(db.Endpoint(host="127.0.0.1", port=closed), db.Login("moodle", "x"), "owner")
    with pytest.raises(KitError) as exc:
        nowhere.one("select 1")
    assert str(exc.value).startswith(f"PostgreSQL at 127.0.0.1:{closed} (as moodle): ")
    assert "Connection refused" in str(exc.value) and "\n" not in str(exc.value)


def test_an_owner_that_may_not_create_roles_is_told_what_to_run(pg):
    owner = db.Database(endpoint(pg), db.Login("moodle", OWNER_PASSWORD), "owner")
    with pytest.raises(KitError, match=r"permission denied to create role.*CREATE ROLE kit_watch LOGIN IN ROLE "
                                       r"pg_monitor"):
        db.ensure_monitor_role(owner, endpoint(pg), db.Login("kit_watch", "pw-" * 8))


def test_rotation_gives_a_login_role_that_acts_as_the_owner_then_retires_the_old_one(pg):
    db.grant_login(admin(pg), "moodle_a", "new-pw-1234567890")
    login = db.Database(endpoint(pg), db.Login("moodle_a", "new-pw-1234567890"), "owner")
    assert db.owner_setting(login, "version") == "2024100706.00"
    (who,) = login.one("select current_user")
    assert who == "moodle"   # ALTER ROLE ... SET role: objects stay owned by moodle
    db.retire_login(admin(pg), "moodle_a")
    assert not db.can_log_in(endpoint(pg), db.Login("moodle_a", "new-pw-1234567890"))
    assert "new-pw" not in pg.sql("select rolname from pg_roles")


def test_database_figures_through_a_fake_k8s_api_port_forward_to_a_real_postgresql(monitored):
    """The k8s target's relay (kit.k8s.portforward) with a fake API socket opener: here the
    'pod' is the test's PostgreSQL."""
    opened: list[float] = []

    def open_socket() -> socket.socket:
        opened.append(time.monotonic())
        return socket.create_connection(("127.0.0.1", monitored.port))

    with PortForward(open_socket) as forward:
        through = db.Database(db.Endpoint(host="127.0.0.1", port=forward.port), db.Login("kit_monitor",
                                                                                        MONITOR_PASSWORD), "monitor")
        queue = db.queue(through)
        release = db.moodle_setting(through, "release")
    direct = db.queue(monitor(monitored))
    assert queue is not None and direct is not None
    # The same figures; the oldest task's age may tick over a second between the two reads.
    assert (queue.queued, queue.due, queue.failing) == (direct.queued, direct.due, direct.failing)
    assert abs(queue.oldest_age_s - direct.oldest_age_s) <= 1
    assert release == "4.5.6 (Build: 20250811)" and len(opened) == 2


def test_an_owner_that_may_create_roles_makes_the_monitoring_role_itself(pg):
    """A managed database's application login (CREATEROLE, not superuser), as on an external database."""
    pg.sql("create role app_owner login createrole password 'app-owner-pw-123456'")
    owner = db.Database(endpoint(pg), db.Login("app_owner", "app-owner-pw-123456"), "owner")
    login = db.Login("kit_watch2", "watch-pw-1234567890")
    assert db.ensure_monitor_role(owner, endpoint(pg), login) is True
    assert db.can_log_in(endpoint(pg), login)
    assert pg.sql("select pg_has_role('kit_watch2', 'pg_monitor', 'member'), rolsuper, rolcreaterole "
                  "from pg_roles where rolname = 'kit_watch2'") == "t|f|f"
    assert db.ensure_monitor_role(owner, endpoint(pg), login) is False
