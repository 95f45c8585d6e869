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
