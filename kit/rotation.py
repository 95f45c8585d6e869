"""`kit secrets rotate`: new DB and Redis passwords, applied with a rolling restart.

Neither service may refuse a client that still holds the old password while replicas are
replaced one at a time, so both accept two passwords during the roll:
- PostgreSQL has one password per role, so Moodle's login alternates between two roles,
  moodle_a and moodle_b, members of the owner role `moodle` that act as it
  (`ALTER ROLE ... SET role`): objects stay owned by `moodle`. The new login role gets the
  new password, the containers roll over, then the old login loses its password.
- Redis gets both hashes (`ACL SETUSER default #new #old`), then only the new one.
The step in progress is kept in the secrets file (`*_previous` keys), so an interrupted
rotation is finished by running the command again. The roll itself is the target's
(kit.targets.docker.DockerTarget.rotate_secrets); this module decides the new values.
"""
from __future__ import annotations

import secrets as pysecrets

from kit.db import OWNER_ROLE
from kit.errors import KitError

LOGIN_ROLES = ("moodle_a", "moodle_b")


def next_login_role(current: str) -> str:
    return LOGIN_ROLES[1] if current == LOGIN_ROLES[0] else LOGIN_ROLES[0]


def check_login_role(role: str) -> None:
    if role not in LOGIN_ROLES:
        raise KitError(f"unexpected database login role {role!r} in the secrets file")


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
