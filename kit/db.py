"""Every query the kit runs, in one place, on psycopg 3: parameters passed as parameters,
typed results, and a failure named in one line (host, role, PostgreSQL's own message).

Three logins, each used only where it is needed:
- monitor (`kit_monitor`, member of pg_monitor): status, doctor, queue and cost figures.
  It cannot write, nor read Moodle's tables: it calls two SECURITY DEFINER functions in
  schema `kit` (owned by Moodle's owner role) that return the queue figures and Moodle's
  version and release, nothing else.
- owner (Moodle's own login): where Moodle's data is read whole or changed (install
  state, restore checks) and to create the `kit` functions.
- admin (the database's superuser, kit-run databases only): role management (the
  monitoring role, password rotation).
The target says where the database is (`Endpoint`); the passwords come from the secrets
file, never from argv or a child process's environment.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from kit.errors import KitError

Role = Literal["monitor", "owner", "admin"]
OWNER_ROLE = "moodle"
SCHEMA = "kit"
CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class Endpoint:
    """Where a site's PostgreSQL answers, as seen from the machine the kit runs on."""

    host: str
    port: int
    dbname: str = "moodle"
    sslmode: str = "prefer"
    sslrootcert: str = ""        # the CA that signs the server's certificate (verify-full)

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Login:
    user: str
    password: str


#: How many failing task classes the queue reading names.
FAILING_CLASSES = 3


@dataclass(frozen=True)
class Queue:
    """Moodle's adhoc queue as its own check (tool_task adhocqueue) sees it."""

    queued: int
    due: int
    oldest_age_s: int
    failing: int
    #: (task class, tasks) of the failing ones, most first, at most FAILING_CLASSES of them: what
    #: an operator looks up first (a failing LDAP sync task means the directory is unreachable).
    failing_classes: tuple[tuple[str, int], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"queued": self.queued, "due": self.due, "oldest_age_s": self.oldest_age_s, "failing": self.failing,
                "failing_classes": {name: count for name, count in self.failing_classes}}

    def failing_text(self) -> str:
        return failing_text(self.failing, dict(self.failing_classes))


def queue_line(queue: dict[str, Any]) -> str:
    """A queue reading (Queue.as_dict, as `kit status --json` gives it) in one line."""
    return (f"{queue['queued']} adhoc tasks queued ({queue['due']} due), oldest overdue {queue['oldest_age_s']}s, "
            + failing_text(int(queue["failing"]), dict(queue.get("failing_classes") or {})))


def failing_text(failing: int, classes: dict[str, int]) -> str:
    """'0 failing', or '2 failing: \\auth_ldap\\task\\asynchronous_sync_task x2' (status and doctor)."""
    if not failing or not classes:
        return f"{failing} failing"
    more = failing - sum(classes.values())
    return (f"{failing} failing: " + ", ".join(f"{name} x{count}" for name, count in classes.items())
            + (f" and {more} more" if more > 0 else ""))


@dataclass(frozen=True)
class Connections:
    used: int
    limit: int
    size_mb: int


def _one_line(endpoint: Endpoint, user: str, exc: BaseException) -> str:
    if isinstance(exc, psycopg.Error) and exc.diag is not None and exc.diag.message_primary:
        message = exc.diag.message_primary
    else:
        message = str(exc).strip()
    # libpq names the address it tried in its own words; the host is named once, below.
    message = re.sub(r'(connection failed: )?connection to server at "[^"]*"(, port \d+)? failed: ', "", message)
    message = re.sub(r"\bFATAL:\s+", "", " ".join(message.split()))
    return f"PostgreSQL at {endpoint.label} (as {user}): {message[:300]}"


class Database:
    """One login to one database."""

    def __init__(self, endpoint: Endpoint, login: Login, role: Role) -> None:
        self.endpoint, self.login, self.role = endpoint, login, role

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            params: dict[str, Any] = {"host": self.endpoint.host, "port": self.endpoint.port,
                                      "dbname": self.endpoint.dbname, "user": self.login.user,
                                      "password": self.login.password, "sslmode": self.endpoint.sslmode,
                                      "connect_timeout": CONNECT_TIMEOUT_S, "application_name": f"kit-{self.role}"}
            if self.endpoint.sslrootcert:
                params["sslrootcert"] = self.endpoint.sslrootcert
            conn = psycopg.connect(autocommit=True, **params)
        except psycopg.Error as exc:
            raise KitError(_one_line(self.endpoint, self.login.user, exc)) from None
        try:
            yield conn
        except psycopg.Error as exc:
            raise KitError(_one_line(self.endpoint, self.login.user, exc)) from None
        finally:
            conn.close()

    def one(self, query: sql.Composable | str, params: tuple[Any, ...] | dict[str, Any] | None = None) -> Any:
        with self.connect() as conn:
            return conn.execute(query, params).fetchone()  # type: ignore[arg-type]

    def rows(self, query: sql.Composable | str, params: tuple[Any, ...] | dict[str, Any] | None = None) -> list[Any]:
        with self.connect() as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def execute(self, *statements: sql.Composable | str) -> None:
        with self.connect() as conn:
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]


# --- figures (monitor login) ---------------------------------------------------------------

def connections(db: Database) -> Connections:
    used, limit, size = db.one("select count(*), current_setting('max_connections')::int, "
                               "pg_database_size(current_database()) / 1048576 from pg_stat_activity")
    return Connections(used=int(used), limit=int(limit), size_mb=int(size))


def transactions(db: Database) -> int:
    """Committed plus rolled-back transactions of Moodle's database since the server started."""
    (count,) = db.one("select xact_commit + xact_rollback from pg_stat_database where datname = current_database()")
    return int(count)


def queue(db: Database) -> Queue | None:
    """None before Moodle is installed (or before `kit up` made the kit's functions). One
    query: the figures and the failing tasks' classes."""
    with_classes = sql.SQL(
        "select q.*, coalesce((select json_agg(json_build_array(f.classname, f.tasks)) from {}.adhoc_failing() f), "
        "'[]') from {}.adhoc_queue() q").format(sql.Identifier(SCHEMA), sql.Identifier(SCHEMA))
    try:
        row = db.one(with_classes)
    except KitError as exc:
        if "adhoc_failing" not in str(exc) or "does not exist" not in str(exc):
            if "does not exist" in str(exc):
                return None
            raise
        try:   # a site `kit up` has not rolled out since the function came: the count alone
            row = (*db.one(sql.SQL("select * from {}.adhoc_queue()").format(sql.Identifier(SCHEMA))), [])
        except KitError as again:
            if "does not exist" in str(again):
                return None
            raise
    queued, oldest, due, failing, classes = row
    return Queue(queued=int(queued), due=int(due), oldest_age_s=int(oldest), failing=int(failing),
                 failing_classes=tuple((str(name), int(count)) for name, count in classes))


def moodle_setting(db: Database, name: Literal["version", "release"]) -> str | None:
    try:
        row = db.one(sql.SQL("select {}.moodle_setting(%s)").format(sql.Identifier(SCHEMA)), (name,))
    except KitError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    return str(row[0]) if row and row[0] is not None else None


def kit_plugin_versions(db: Database) -> dict[str, str]:
    """The kit's own Moodle plugins as installed in the database (empty before `kit up` made
    the function, or before Moodle was installed)."""
    try:
        rows = db.rows(sql.SQL("select plugin, version from {}.kit_plugin_versions()").format(
            sql.Identifier(SCHEMA)))
    except KitError as exc:
        if "does not exist" in str(exc):
            return {}
        raise
    return {str(plugin): str(version) for plugin, version in rows}


# --- Moodle's own data (owner login) --------------------------------------------------------

def installed(db: Database) -> bool:
    (found,) = db.one("select to_regclass('public.mdl_config') is not null")
    return bool(found)


def owner_setting(db: Database, name: str) -> str | None:
    """A row of mdl_config read as the owner (restore checks: the restored database's version)."""
    if not installed(db):
        return None
    row = db.one("select value from mdl_config where name = %s", (name,))
    return str(row[0]) if row else None


# The queue reading is Moodle's adhocqueue check: every queued task, the age of the most
# overdue one (now - nextruntime), the due ones, the failing ones.
_FUNCTIONS = """
create schema if not exists {schema};
revoke all on schema {schema} from public;
set local check_function_bodies = off;
create or replace function {schema}.adhoc_queue(out queued bigint, out oldest_age_s bigint, out due bigint,
                                                out failing bigint)
  language sql stable security definer set search_path = public, pg_temp as $$
    select count(*),
           greatest(0, coalesce(max(extract(epoch from now())::bigint - nextruntime), 0)),
           count(*) filter (where nextruntime <= extract(epoch from now())),
           count(*) filter (where faildelay > 0)
      from mdl_task_adhoc $$;
-- The failing adhoc tasks' classes (never their custom data), most first.
create or replace function {schema}.adhoc_failing(out classname text, out tasks bigint) returns setof record
  language sql stable security definer set search_path = public, pg_temp as $$
    select classname, count(*) from mdl_task_adhoc where faildelay > 0
     group by classname order by count(*) desc, classname limit {failing_classes} $$;
-- Moodle's own signals for the exporter: when the scheduled-task runner last ran a task (a
-- kept-alive cron.php records its start only every 15 minutes, but several core tasks run every
-- minute), scheduled tasks whose last run failed, users active in 5 minutes, sessions.
create or replace function {schema}.moodle_signals(out cron_last_start_s bigint, out scheduled_failing bigint,
                                                   out users_active_5m bigint, out sessions bigint)
  language sql stable security definer set search_path = public, pg_temp as $$
    select greatest(coalesce((select value::bigint from mdl_config_plugins
                               where plugin = 'tool_task' and name = 'lastcronstart'), 0),
                    coalesce((select max(lastruntime) from mdl_task_scheduled where disabled = 0), 0)),
           (select count(*) from mdl_task_scheduled where faildelay > 0),
           (select count(*) from mdl_user where deleted = 0
                and lastaccess > extract(epoch from now())::bigint - 300),
           (select count(*) from mdl_sessions) $$;
create or replace function {schema}.moodle_setting(name text) returns text
  language sql stable security definer set search_path = public, pg_temp as $$
    select value from mdl_config where mdl_config.name = moodle_setting.name and name in ('version', 'release') $$;
-- The installed versions of the kit's own Moodle plugins (`kit upgrade` compares the image's).
create or replace function {schema}.kit_plugin_versions(out plugin text, out version text) returns setof record
  language sql stable security definer set search_path = public, pg_temp as $$
    select plugin, value from mdl_config_plugins
     where name = 'version' and plugin in ({plugins}) $$;
revoke all on function {schema}.kit_plugin_versions() from public;
revoke all on function {schema}.adhoc_queue() from public;
revoke all on function {schema}.adhoc_failing() from public;
revoke all on function {schema}.moodle_setting(text) from public;
revoke all on function {schema}.moodle_signals() from public;
"""


def ensure_functions(owner: Database, monitor_user: str, *, as_role: str | None = None) -> None:
    """The monitoring functions, owned by Moodle's owner role (so they may read its tables),
    executable by the monitoring role only. Idempotent; run by every `kit up`."""
    with owner.connect() as conn, conn.transaction():
        if as_role:
            conn.execute(sql.SQL("set local role {}").format(sql.Identifier(as_role)))
        from kit.images import KIT_PLUGINS  # the one list of the kit's own Moodle plugins

        conn.execute(sql.SQL(_FUNCTIONS).format(schema=sql.Identifier(SCHEMA),
                                                plugins=sql.SQL(", ").join(map(sql.Literal, KIT_PLUGINS)),
                                                failing_classes=sql.Literal(FAILING_CLASSES)))
        statements: list[sql.Composed] = [
            sql.SQL("grant usage on schema {} to {}").format(sql.Identifier(SCHEMA), sql.Identifier(monitor_user)),
            sql.SQL("grant execute on function {}.adhoc_queue(), {}.adhoc_failing(), {}.moodle_setting(text), "
                    "{}.moodle_signals(), {}.kit_plugin_versions() to {}").format(
                *[sql.Identifier(SCHEMA)] * 5, sql.Identifier(monitor_user)),
        ]
        for statement in statements:
            conn.execute(statement)


# --- roles (admin login; owner where it may create roles) ------------------------------------

def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = 4096) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier, so the plain password never reaches the server
    (nor its logs). Kit passwords are URL-safe ASCII, for which SASLprep is the identity."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def can_log_in(endpoint: Endpoint, login: Login) -> bool:
    try:
        with Database(endpoint, login, "monitor").connect():
            return True
    except KitError:
        return False


def ensure_monitor_role(manager: Database, endpoint: Endpoint, login: Login) -> bool:
    """The read-only monitoring role with the secrets file's password (idempotent: its
    password is set only when it does not log in). Returns whether anything changed."""
    if can_log_in(endpoint, login):
        return False
    name = sql.Identifier(login.user)
    try:
        with manager.connect() as conn:
            exists = conn.execute("select 1 from pg_roles where rolname = %s", (login.user,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("create role {} login").format(name))
            conn.execute(sql.SQL("alter role {} login password {}").format(
                name, sql.Literal(scram_verifier(login.password))))
            conn.execute(sql.SQL("grant pg_monitor to {}").format(name))
    except KitError as exc:
        if "permission denied" in str(exc) or "must have" in str(exc) or "privilege" in str(exc):
            raise KitError(f"{exc}: as the database's admin, create the monitoring role once: CREATE ROLE "
                           f"{login.user} LOGIN IN ROLE pg_monitor, with the password of key monitor_password "
                           "in the secrets file") from None
        raise
    return True


def grant_login(admin: Database, role: str, password: str) -> None:
    """Create or reset a login role that acts as Moodle's owner role (rotation)."""
    name = sql.Identifier(role)
    with admin.connect() as conn, conn.transaction():
        if not conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone():
            conn.execute(sql.SQL("create role {} login").format(name))
        conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(OWNER_ROLE), name))
        conn.execute(sql.SQL("alter role {} login password {}").format(name, sql.Literal(scram_verifier(password))))
        conn.execute(sql.SQL("alter role {} set role = {}").format(name, sql.Literal(OWNER_ROLE)))


def retire_login(admin: Database, role: str) -> None:
    """The old login can no longer authenticate (sessions already open finish normally)."""
    admin.execute(sql.SQL("alter role {} password null").format(sql.Identifier(role)))


def set_password(admin: Database, role: str, password: str) -> None:
    admin.execute(sql.SQL("alter role {} password {}").format(sql.Identifier(role),
                                                               sql.Literal(scram_verifier(password))))
