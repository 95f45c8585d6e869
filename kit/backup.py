"""Backups of a `local` site: PostgreSQL dump (custom format), moodledata archive, the site's
config and secrets, and a manifest of checksums, under backups/<site>/<timestamp>/ (owner-only).
A Moodle version upgrade needs a recent one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kit import db
from kit.config import Site, load_secrets
from kit.errors import KitError, OperationFailed
from kit.images import image_set
from kit.runner import from_file, to_file

if TYPE_CHECKING:
    from kit.targets.local import LocalTarget

DATA_FILES = ("db.dump", "moodledata.tar.gz")
MOODLEDATA_SKIP = ("./cache", "./localcache", "./sessions", "./temp", "./trashdir")


def backups_dir(site: Site) -> Path:
    return site.site_dir / "backups" / site.name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def backup(target: LocalTarget) -> Path:
    """Take a consistent database dump and a moodledata archive while the site runs."""
    site, names = target.site, target.names
    if site.database.external:
        raise KitError("`kit backup` dumps the kit's own PostgreSQL; this site's database is external: back it up "
                       "with your provider's tools")
    load_secrets(site)
    version = db.moodle_setting(target.monitor_db(), "version") or ""
    out = backups_dir(site) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=False)
    os.chmod(out, 0o700)
    started = time.monotonic()
    to_file(["docker", "exec", "-u", "postgres", names.db, "pg_dump", "-Fc", "-d", "moodle"], out / "db.dump")
    excludes = [f"--exclude={path}" for path in MOODLEDATA_SKIP]
    to_file(["docker", "run", "--rm", "--entrypoint", "tar", "-v", f"{names.volume('moodledata')}:/data:ro",
             image_set(site).moodle, "-C", "/data", *excludes, "-czf", "-", "."], out / "moodledata.tar.gz")
    for name, source in (("site.yaml", site.site_dir / "site.yaml"), ("secrets.yaml", site.secrets_file),
                         ("identity.json", site.state_dir / "identity.json")):
        if source.is_file():
            shutil.copy2(source, out / name)
            os.chmod(out / name, 0o600)
    files: dict[str, dict[str, Any]] = {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size}
                                        for p in sorted(out.iterdir())}
    manifest = {"site": site.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "created_epoch": int(time.time()),
                "moodle_version": version, "files": files, "seconds": round(time.monotonic() - started, 1)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    os.chmod(out / "manifest.json", 0o600)
    total = sum(f["bytes"] for f in files.values())
    click.echo(f"backup written to {out} ({total / 1e6:.1f} MB in {manifest['seconds']}s)")
    return out


def _manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def latest(site: Site) -> tuple[Path, datetime] | None:
    """The newest backup with a readable manifest, and when it was taken."""
    folder = backups_dir(site)
    if not folder.is_dir():
        return None
    for candidate in sorted(folder.iterdir(), reverse=True):
        manifest = _manifest(candidate)
        if manifest is not None and isinstance(manifest.get("created_epoch"), int):
            return candidate, datetime.fromtimestamp(manifest["created_epoch"], UTC)
    return None


def verify(folder: Path) -> dict[str, Any]:
    """Check a backup before anything is changed: manifest, checksums. One line per problem."""
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise KitError(f"{folder}: no manifest.json: not a kit backup")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise KitError(f"{manifest_path}: unreadable manifest ({getattr(exc, 'msg', type(exc).__name__)}); "
                       "nothing was changed") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise KitError(f"{manifest_path}: malformed manifest (no files list); nothing was changed")
    for name in DATA_FILES:
        entry = files.get(name)
        path = folder / name
        if not path.is_file() or not isinstance(entry, dict):
            raise KitError(f"{folder}: {name} is missing from the backup; nothing was changed")
        if not isinstance(entry.get("bytes"), int) or not isinstance(entry.get("sha256"), str):
            raise KitError(f"{manifest_path}: malformed entry for {name}; nothing was changed")
        if path.stat().st_size != entry["bytes"] or _sha256(path) != entry["sha256"]:
            raise KitError(f"{path}: checksum does not match the manifest: the file is corrupted; "
                           "use another backup (nothing was changed)")
    if not isinstance(manifest.get("moodle_version"), str):
        raise KitError(f"{manifest_path}: malformed manifest (no moodle_version); nothing was changed")
    return manifest


def restore(target: LocalTarget, folder: Path) -> dict[str, Any]:
    """Replace the site's database and moodledata with a verified backup (site must be up)."""
    site, names = target.site, target.names
    manifest = verify(folder)
    if site.database.external:
        raise KitError("`kit restore` restores the kit's own PostgreSQL; this site's database is external")
    engine = target.engine
    admin = target.database("admin")
    # DROP DATABASE may not run on a connection to that database: the admin works from `postgres`.
    maintenance_db = db.Database(dataclasses.replace(admin.endpoint, dbname="postgres"), admin.login, "admin")
    # The dump's own table of contents must read before the database is touched.
    if from_file(["docker", "exec", "-i", names.db, "pg_restore", "--list"], folder / "db.dump",
                 quiet_output=True) != 0:
        raise KitError(f"{folder / 'db.dump'}: pg_restore cannot read it: nothing was changed")
    running = {c.name for c in target.containers() if c.state == "running"}
    tasks = [name for name in (names.cron, *(c.name for c in target.containers() if c.role == "worker"))
             if name in running]
    target.moodle_cli(["admin/cli/maintenance.php", "--enable"])
    engine.stop(tasks)
    try:
        with maintenance_db.connect() as conn:
            conn.execute("drop database if exists moodle with (force)")
            conn.execute("create database moodle owner moodle encoding 'UTF8' template template0")
        if from_file(["docker", "exec", "-i", "-u", "postgres", names.db, "pg_restore", "-d", "moodle", "--no-owner",
                      "--no-privileges", "--role=moodle", "--exit-on-error"], folder / "db.dump") != 0:
            raise OperationFailed("pg_restore failed: the site stays in maintenance mode; see the output above")
        if from_file(["docker", "run", "--rm", "-i", "--entrypoint", "sh", "-v", f"{names.volume('moodledata')}:/data",
                      image_set(site).moodle, "-c",
                      "find /data -mindepth 1 -maxdepth 1 ! -name climaintenance.html -exec rm -rf {} + "
                      "&& tar -xzf - -C /data && chown -R www-data:www-data /data"],
                     folder / "moodledata.tar.gz", what="moodledata.tar.gz (moodledata replaced)") != 0:
            raise OperationFailed("moodledata restore failed: the site stays in maintenance mode")
        restored = db.owner_setting(target.database("owner"), "version")
        if restored != manifest["moodle_version"]:
            raise OperationFailed(f"the restored database says Moodle version {restored}, the manifest "
                                  f"{manifest['moodle_version']}: the site stays in maintenance mode")
        target.moodle_cli(["admin/cli/purge_caches.php"])
    finally:
        engine.start(tasks)
    target.moodle_cli(["admin/cli/maintenance.php", "--disable"])
    return manifest
