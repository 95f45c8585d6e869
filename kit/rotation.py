"""`kit secrets rotate`: new DB and Redis passwords, applied with a rolling restart.

Neither service may refuse a client that still holds the old password while replicas are
replaced one at a time, so both accept two passwords during the roll:
- PostgreSQL has one password per role, so Moodle's login alternates between two roles,
  moodle_a and moodle_b, members of the owner role `moodle` that act as it
  (`ALTER ROLE ... SET role`): objects stay owned by `moodle`. The new login role gets the
  new password, the containers roll over, then the old login loses its password.
- Redis gets both hashes (`ACL SETUSER default #new #old`), then only the new one.
The step in progress is kept in the secrets file (`*_previous` keys), so an interrupted
rotation is finished by running the command again.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets as pysecrets
import subprocess

import click
import yaml

from kit import rollout
from kit.config import Site, ensure_secrets, write_private
from kit.drivers.hosts import on_host
from kit.drivers.local import ansible_playbook
from kit.errors import CommandFailed, KitError
from kit.runner import show
from kit.sizing import Tuning

OWNER_ROLE = "moodle"
LOGIN_ROLES = ("moodle_a", "moodle_b")


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = 4096) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier, so the plain password never reaches the server
    (nor its logs). Kit passwords are URL-safe ASCII, for which SASLprep is the identity."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def next_login_role(current: str) -> str:
    return LOGIN_ROLES[1] if current == LOGIN_ROLES[0] else LOGIN_ROLES[0]


def plan_rotation(current: dict[str, str], *, db: bool, redis: bool) -> dict[str, str]:
    """The secrets after step one: new passwords current, old ones kept as *_previous."""
    new = dict(current)
    if db and "db_password_previous" not in new:
        user = new.get("db_user", OWNER_ROLE)
        new.update(db_user_previous=user, db_password_previous=new["db_password"],
                   db_user=next_login_role(user), db_password=pysecrets.token_urlsafe(24))
    if redis and "redis_password_previous" not in new:
        new.update(redis_password_previous=new["redis_password"], redis_password=pysecrets.token_urlsafe(24))
    return new


def _psql_stdin(site: Site, sql: str) -> None:
    """Run SQL as the database superuser, the SQL on stdin (never on a command line)."""
    db = f"{site.prefix}-db"
    cmd = on_host(site, db, ["docker", "exec", "-i", "-u", "postgres", db, "psql", "-q", "-v", "ON_ERROR_STOP=1",
                             "-d", "moodle"])
    click.secho(f"$ {show(cmd)} < (SQL, password as a SCRAM verifier)", fg="cyan", err=True)
    proc = subprocess.run(cmd, input=sql, text=True, capture_output=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CommandFailed(f"psql failed: {last}")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def grant_login(site: Site, role: str, password: str) -> None:
    """Create or reset the login role Moodle will use next (idempotent)."""
    if role not in LOGIN_ROLES:
        raise KitError(f"unexpected database login role {role!r} in the secrets file")
    _psql_stdin(site, f"""
DO $$BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role} LOGIN; END IF;
END$$;
GRANT {OWNER_ROLE} TO {role};
ALTER ROLE {role} LOGIN PASSWORD {_quote(scram_verifier(password))};
ALTER ROLE {role} SET role = '{OWNER_ROLE}';
""")


def retire_login(site: Site, role: str) -> None:
    """The old login can no longer authenticate (sessions already open finish normally)."""
    _psql_stdin(site, f"ALTER ROLE {role} PASSWORD NULL;")


def rotate(site: Site, tuning: Tuning, *, db: bool = True, redis: bool = True) -> dict[str, str]:
    """Rotate, roll, retire. Returns which credentials changed (names only)."""
    current = ensure_secrets(site)
    pending = any(k.endswith("_previous") for k in current)
    staged = plan_rotation(current, db=db, redis=redis)
    if staged != current:
        write_private(site.secrets_file, yaml.safe_dump(staged, sort_keys=True))
    elif pending:
        click.secho("==> Finishing the rotation an earlier run started", fg="yellow", bold=True)
    changed = {}
    if "db_password_previous" in staged:
        click.secho(f"==> PostgreSQL: new password on login role {staged['db_user']} "
                    f"(role {staged['db_user_previous']} still valid during the roll)", bold=True)
        grant_login(site, staged["db_user"], staged["db_password"])
        changed["database login"] = f"{staged['db_user_previous']} -> {staged['db_user']}"
    if "redis_password_previous" in staged:
        changed["redis password"] = "new"
    click.secho("==> Rolling restart with the new credentials (Redis accepts both until it ends)", bold=True)
    rollout.apply(site, tuning, images=rollout.running_images(site))
    if "db_password_previous" in staged and staged["db_user_previous"] != staged["db_user"]:
        click.secho(f"==> PostgreSQL: login role {staged['db_user_previous']} loses its password", bold=True)
        retire_login(site, staged["db_user_previous"])
    final = {k: v for k, v in staged.items() if not k.endswith("_previous")}
    write_private(site.secrets_file, yaml.safe_dump(final, sort_keys=True))
    if "redis_password_previous" in staged:
        click.secho("==> Redis: only the new password is accepted from now on", bold=True)
        ansible_playbook(site, "site.yml")
    return changed
