"""Rollouts with a release history: `kit up`, `kit upgrade`, `kit rollback`.

Same Moodle version: the playbook replaces web replicas one at a time, each gated on a
real health check; if anything fails, the previous release's snapshot is applied again
the same way (automatic rollback). New Moodle version: backup, cron off, maintenance on,
upgrade.php once, roll everything, purge caches, maintenance off, cron on.
"""
from __future__ import annotations

import re
import time

import click

from kit import backup, releases
from kit.config import Site, ensure_secrets
from kit.drivers.hosts import on_host, ship_images
from kit.drivers.local import ansible_playbook
from kit.errors import CommandFailed, KitError
from kit.images import ImageSet, build_all, image_set
from kit.render import render
from kit.runner import capture, run
from kit.sizing import Tuning


def image_moodle_version(image: str) -> tuple[str, str]:
    """Moodle's $version and $release from the code inside an image."""
    text = capture(["docker", "run", "--rm", "--entrypoint", "cat", image, "/var/www/moodle/version.php"]).stdout
    version = re.search(r"\$version\s*=\s*([0-9.]+)", text)
    rel = re.search(r"\$release\s*=\s*'([^']+)'", text)
    return (version.group(1) if version else "0"), (rel.group(1) if rel else "?")


def db_moodle_version(site: Site) -> str | None:
    db = f"{site.prefix}-db"
    result = capture(on_host(site, db, ["docker", "exec", "-u", "postgres", db, "psql", "-d", "moodle", "-tAX", "-c",
                                        "select value from mdl_config where name = 'version'"]), check=False)
    value = result.stdout.strip()
    return value if result.returncode == 0 and value else None


def _moodle(site: Site, *args: str, container: str | None = None) -> None:
    container = container or f"{site.prefix}-web-1"
    run(on_host(site, container, ["docker", "exec", "-u", "www-data", container, "php", *args]))


def running_images(site: Site) -> ImageSet:
    """The images the site runs now (its last good release), so that scaling or rotating
    secrets never changes the release: an `--image-tag` upgrade is not in site.yaml."""
    current = releases.current(site)
    return ImageSet(**current.images) if current is not None else image_set(site)


def apply(site: Site, tuning: Tuning, *, build: bool = True, allow_moodle_upgrade: bool = False,
          auto_rollback: bool = True, images: ImageSet | None = None) -> tuple[releases.Release | None, dict[str, int]]:
    """Build, render and apply the site; record the release; roll back by itself on failure.
    `images` given: apply exactly those (built already)."""
    ensure_secrets(site)
    started = time.monotonic()
    click.secho("==> Images", bold=True)
    if images is None:
        images = build_all(site) if build else image_set(site)
    click.secho("==> Render", bold=True)
    out = render(site, tuning, images)
    click.echo(f"    {out}")
    version, release_name = image_moodle_version(images.moodle)
    if site.target == "hosts":
        click.secho("==> Ship images to the machines that lack them", bold=True)
        ship_images(site, images)
    release = releases.start(site, images.as_dict(), version, release_name)
    click.secho(f"==> Roll out release {release.id} (Moodle {release_name})", bold=True)
    extra: dict = {"kit_allow_moodle_upgrade": "true" if allow_moodle_upgrade else "false"}
    before = releases.last_good(site, before=release.id)
    if before is not None and before.moodle_version == version:
        extra["kit_previous_images"] = before.images  # a replica failing its check gets these back at once
    try:
        totals = ansible_playbook(site, "site.yml", extra=extra)
    except KitError as exc:
        previous = releases.last_good(site, before=release.id)
        releases.finish(site, release, "failed", reason=str(exc), duration_s=round(time.monotonic() - started, 1))
        if not auto_rollback or previous is None or previous.moodle_version != version:
            raise
        click.secho(f"==> Rolling back to release {previous.id} ({exc})", fg="yellow", bold=True)
        ansible_playbook(site, "site.yml", build_dir=releases.snapshot_dir(site, previous.id))
        releases.finish(site, release, "rolled back", reason=str(exc),
                        duration_s=round(time.monotonic() - started, 1))
        raise KitError(f"{exc} -- rolled back to release {previous.id}; the site serves the previous release") \
            from None
    duration = round(time.monotonic() - started, 1)
    if totals["changed"] == 0 and releases.last_good(site, before=release.id) is not None:
        releases.discard(site, release)  # nothing happened: not a release
        return None, totals
    releases.finish(site, release, "ok", changed=totals["changed"], duration_s=duration)
    return release, totals


def upgrade(site: Site, tuning: Tuning, *, backup_now: bool) -> tuple[releases.Release | None, dict[str, int]]:
    """Same version: rolling. New Moodle version: Moodle's own upgrade sequence, timed."""
    images = build_all(site)
    new_version, new_release = image_moodle_version(images.moodle)
    db_version = db_moodle_version(site)
    if db_version is None:
        raise KitError("the site is not installed or not running: run `kit up` first")
    if float(new_version) < float(db_version):
        raise KitError(f"the new code is Moodle {new_version}, older than the database ({db_version}): "
                       "Moodle cannot downgrade; restore a backup instead (`kit restore BACKUP`)")
    if float(new_version) == float(db_version):
        return apply(site, tuning, images=images)
    click.secho(f"==> Moodle version upgrade: {db_version} -> {new_version} ({new_release})", bold=True)
    saved = backup.require_recent(site, backup_now)
    click.echo(f"    backup: {saved}")
    maintenance_started = time.monotonic()
    _moodle(site, "admin/cli/cron.php", "--disable-wait=600", container=f"{site.prefix}-cron")
    _moodle(site, "admin/cli/maintenance.php", "--enable")
    try:
        release, totals = apply(site, tuning, images=images, allow_moodle_upgrade=True, auto_rollback=False)
        _moodle(site, "admin/cli/purge_caches.php")
    except (KitError, CommandFailed) as exc:
        raise KitError(f"Moodle upgrade failed: {exc} -- the site stays in maintenance mode; "
                       f"restore with `kit restore {saved}`") from None
    _moodle(site, "admin/cli/maintenance.php", "--disable")
    _moodle(site, "admin/cli/cron.php", "--enable")
    maintenance_s = round(time.monotonic() - maintenance_started, 1)
    if release is not None:
        releases.finish(site, release, "ok", maintenance_s=maintenance_s, extra={"from_version": db_version})
    click.secho(f"users saw the maintenance page for {maintenance_s:.0f}s", bold=True)
    return release, totals


def rollback(site: Site) -> releases.Release:
    """Apply the release before the current one, the same rolling way."""
    now = releases.current(site)
    target = releases.previous_good(site)
    if now is not None and now.moodle_version != target.moodle_version:
        newest = backup.latest(site)
        hint = f"`kit restore {newest[0]}`" if newest else "`kit restore BACKUP` with the backup taken before it"
        raise KitError(f"release {now.id} upgraded Moodle's database ({target.moodle_version} -> {now.moodle_version}): "
                       f"a rollback cannot undo that; restore the backup instead: {hint}")
    click.secho(f"==> Rolling back from release {now.id if now else '?'} to release {target.id}", bold=True)
    snapshot = releases.snapshot_dir(site, target.id)
    started = time.monotonic()
    release = releases.start_from(site, target)
    try:
        ansible_playbook(site, "site.yml", build_dir=snapshot)
    except KitError as exc:
        releases.finish(site, release, "failed", reason=str(exc))
        raise
    releases.finish(site, release, "ok", duration_s=round(time.monotonic() - started, 1),
                    extra={"rollback_to": target.id})
    return release
