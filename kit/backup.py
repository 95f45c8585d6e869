"""Backups: PostgreSQL dump (custom format), moodledata archive, site config and a manifest
of checksums, under backups/<site>/<timestamp>/. A version upgrade needs a recent one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import click

from kit.config import Site
from kit.errors import CommandFailed, KitError
from kit.images import image_set
from kit.runner import show

RECENT_S = 24 * 3600


def backups_dir(site: Site) -> Path:
    return site.site_dir / "backups" / site.name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _to_file(cmd: list[str], dest: Path) -> None:
    click.secho(f"$ {show(cmd)} > {dest.name}", fg="cyan", err=True)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        dest.unlink(missing_ok=True)
        last = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise CommandFailed(f"{show(cmd)} failed: {last[0]}")


def backup(site: Site) -> Path:
    """Take a consistent database dump and a moodledata archive while the site runs."""
    out = backups_dir(site) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=False)
    os.chmod(out, 0o700)
    started = time.monotonic()
    _to_file(["docker", "exec", "-u", "postgres", f"{site.prefix}-db", "pg_dump", "-Fc", "-d", "moodle"],
             out / "db.dump")
    moodle_image = image_set(site).moodle
    _to_file(["docker", "run", "--rm", "--entrypoint", "tar", "-v", f"{site.prefix}-moodledata:/data:ro",
              moodle_image, "-C", "/data", "--exclude=./cache", "--exclude=./localcache", "--exclude=./sessions",
              "--exclude=./temp", "--exclude=./trashdir", "-czf", "-", "."], out / "moodledata.tar.gz")
    shutil.copy2(site.site_dir / "site.yaml", out / "site.yaml") if (site.site_dir / "site.yaml").exists() else None
    files = {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in sorted(out.iterdir())}
    version = subprocess.run(["docker", "exec", "-u", "postgres", f"{site.prefix}-db", "psql", "-d", "moodle", "-tAX",
                              "-c", "select value from mdl_config where name = 'version'"],
                             capture_output=True, text=True).stdout.strip()
    manifest = {"site": site.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "created_epoch": int(time.time()),
                "moodle_version": version, "files": files, "seconds": round(time.monotonic() - started, 1)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    os.chmod(out / "manifest.json", 0o600)
    click.echo(f"backup written to {out} ({sum(f['bytes'] for f in files.values()) / 1e6:.1f} MB "
               f"in {manifest['seconds']}s)")
    return out


def latest(site: Site) -> tuple[Path, float] | None:
    """The newest backup with a manifest, and its age in seconds."""
    folder = backups_dir(site)
    if not folder.exists():
        return None
    for candidate in sorted(folder.iterdir(), reverse=True):
        manifest = candidate / "manifest.json"
        if manifest.exists():
            created = json.loads(manifest.read_text()).get("created_epoch", 0)
            return candidate, time.time() - created
    return None


def require_recent(site: Site, take_now: bool) -> Path:
    if take_now:
        return backup(site)
    found = latest(site)
    if found is None or found[1] > RECENT_S:
        when = "none exists" if found is None else f"the newest is {found[1] / 3600:.0f} h old"
        raise KitError(f"a Moodle version upgrade needs a backup from the last 24 h ({when}): "
                       "run `kit backup` or pass --backup-now")
    return found[0]


def verify(folder: Path) -> dict:
    """Check a backup before anything is changed: manifest, checksums, dump readable."""
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise KitError(f"{folder}: no manifest.json: not a kit backup")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise KitError(f"{manifest_path}: unreadable manifest ({exc.msg})") from None
    for name in ("db.dump", "moodledata.tar.gz"):
        entry = manifest.get("files", {}).get(name)
        path = folder / name
        if entry is None or not path.is_file():
            raise KitError(f"{folder}: {name} is missing from the backup")
        if path.stat().st_size != entry["bytes"] or _sha256(path) != entry["sha256"]:
            raise KitError(f"{path}: checksum does not match the manifest: the file is corrupted; "
                           "use another backup (nothing was changed)")
    return manifest


def restore(site: Site, folder: Path) -> dict:
    """Replace the site's database and moodledata with a verified backup (site must be up)."""
    manifest = verify(folder)
    db, web = f"{site.prefix}-db", f"{site.prefix}-web-1"
    moodle_image = image_set(site).moodle
    # The dump's own table of contents must read before the database is touched.
    check = subprocess.run(["docker", "exec", "-i", db, "pg_restore", "--list"], stdin=(folder / "db.dump").open("rb"),
                           capture_output=True)
    if check.returncode != 0:
        raise KitError(f"{folder / 'db.dump'}: pg_restore cannot read it: nothing was changed")
    tasks = [c for c in (f"{site.prefix}-cron",) + tuple(f"{site.prefix}-worker-{i}" for i in range(1, 65))]
    running = subprocess.run(["docker", "ps", "--format", "{{.Names}}"], capture_output=True, text=True).stdout.split()
    stopped = [c for c in tasks if c in running]
    from kit.runner import run

    run(["docker", "exec", "-u", "www-data", web, "php", "admin/cli/maintenance.php", "--enable"])
    if stopped:
        run(["docker", "stop", *stopped])
    try:
        run(["docker", "exec", "-u", "postgres", db, "psql", "-q", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c",
             "DROP DATABASE IF EXISTS moodle WITH (FORCE)", "-c",
             "CREATE DATABASE moodle OWNER moodle ENCODING 'UTF8' TEMPLATE template0"])
        click.secho(f"$ docker exec -i {db} pg_restore ... < db.dump", fg="cyan", err=True)
        with (folder / "db.dump").open("rb") as dump:
            proc = subprocess.run(["docker", "exec", "-i", "-u", "postgres", db, "pg_restore", "-d", "moodle",
                                   "--no-owner", "--role=moodle", "--exit-on-error"], stdin=dump)
        if proc.returncode != 0:
            raise KitError("pg_restore failed: the site stays in maintenance mode; see the output above")
        click.secho("$ docker run ... tar -xzf moodledata.tar.gz (moodledata replaced)", fg="cyan", err=True)
        with (folder / "moodledata.tar.gz").open("rb") as archive:
            proc = subprocess.run(
                ["docker", "run", "--rm", "-i", "--entrypoint", "sh", "-v", f"{site.prefix}-moodledata:/data",
                 moodle_image, "-c",
                 "find /data -mindepth 1 -maxdepth 1 ! -name climaintenance.html -exec rm -rf {} + "
                 "&& tar -xzf - -C /data && chown -R www-data:www-data /data"], stdin=archive)
        if proc.returncode != 0:
            raise KitError("moodledata restore failed: the site stays in maintenance mode")
        run(["docker", "exec", "-u", "www-data", web, "php", "admin/cli/purge_caches.php"])
    finally:
        if stopped:
            run(["docker", "start", *stopped], check=False)
    run(["docker", "exec", "-u", "www-data", web, "php", "admin/cli/maintenance.php", "--disable"])
    return manifest
