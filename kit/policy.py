"""The release policy, one home for every target: what an upgrade or a rollback may do, the
backup a database upgrade needs, and what the user is told when a rollout succeeds.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click

from kit.config import Site
from kit.errors import KitError

#: A Moodle version upgrade changes the database for good: it needs a backup this recent.
BACKUP_MAX_AGE = timedelta(hours=24)


def _number(version: str) -> float:
    try:
        return float(version)
    except ValueError:
        raise KitError(f"cannot read Moodle's version number from {version!r}") from None


def upgrade_kind(db_version: str, new_version: str, *, restore_hint: str = "restore a backup instead") -> str:
    """"same" (a rolling update) or "database" (Moodle's upgrade runs once); refuses a downgrade."""
    old, new = _number(db_version), _number(new_version)
    if new < old:
        raise KitError(f"the new code is Moodle {new_version}, older than the database ({db_version}): "
                       f"Moodle cannot downgrade; {restore_hint}")
    return "database" if new > old else "same"


def check_rollback(current_version: str, target_version: str, *, what: str, restore_hint: str) -> None:
    """A rollback may not cross a Moodle version upgrade: the database is already newer."""
    if current_version and target_version and _number(target_version) < _number(current_version):
        raise KitError(f"{what} upgraded Moodle's database ({target_version} -> {current_version}): a rollback "
                       f"cannot undo that; restore the backup taken before it instead: {restore_hint}")


def backup_is_recent(taken: datetime, now: datetime | None = None) -> bool:
    now = now or datetime.now(UTC)
    return now - taken <= BACKUP_MAX_AGE


def backup_missing(detail: str, fix: str) -> KitError:
    hours = BACKUP_MAX_AGE.total_seconds() / 3600
    return KitError(f"a Moodle version upgrade needs a backup from the last {hours:.0f} h ({detail}): {fix}")


def banner(site: Site, what: str, seconds: float) -> None:
    """The last lines of every successful rollout, on every target."""
    click.secho(f"{what} ({seconds:.0f}s).", fg="green")
    click.echo(f"  URL:            {site.url}")
    click.echo(f"  Admin user:     {site.moodle.admin_user}")
    click.echo(f"  Admin password: stored in {site.secrets_file} (key admin_password)")
