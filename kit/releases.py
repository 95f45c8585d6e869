"""Release history, stored with the site: what each rollout applied, and a snapshot of its
rendered files so `kit rollback` (and the automatic rollback) can apply it again.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kit.config import Site
from kit.errors import KitError


@dataclass
class Release:
    id: int
    started: str
    command: str
    user: str
    images: dict[str, str]
    moodle_version: str
    moodle_release: str
    outcome: str = "running"          # running | ok | failed | rolled back
    reason: str = ""
    duration_s: float = 0.0
    maintenance_s: float = 0.0
    changed: int = 0
    extra: dict = field(default_factory=dict)


def history_file(site: Site) -> Path:
    return site.state_dir / "releases.json"


def snapshot_dir(site: Site, release_id: int) -> Path:
    return site.state_dir / "releases" / f"{release_id:04d}"


#: Variables today's playbooks need that snapshots of older kits lack (their config.php read
#: secrets from the environment, which containers no longer get; their config files had no
#: sign-in settings, which every Moodle container now mounts).
SNAPSHOT_NEEDS = ("kit_secrets_dir", "kit_tls", "kit_network_tls", "kit_signin_file")


def snapshot_problem(site: Site, release_id: int) -> str | None:
    """Why this release's snapshot cannot be applied by these playbooks, or None."""
    import yaml

    vars_file = snapshot_dir(site, release_id) / "vars.yml"
    try:
        data = yaml.safe_load(vars_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return f"release {release_id} has no readable snapshot ({vars_file})"
    missing = [key for key in SNAPSHOT_NEEDS if key not in data]
    if missing:
        return (f"release {release_id} was rolled out by an older kit (its snapshot lacks {', '.join(missing)}), "
                "which this kit cannot apply again")
    return None


def load(site: Site) -> list[Release]:
    path = history_file(site)
    if not path.exists():
        return []
    return [Release(**item) for item in json.loads(path.read_text())]


def _save(site: Site, releases: list[Release]) -> None:
    path = history_file(site)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(r) for r in releases], indent=2) + "\n")
    tmp.replace(path)


def start(site: Site, images: dict[str, str], moodle_version: str, moodle_release: str) -> Release:
    """Record a rollout as running and snapshot the rendered files it applies."""
    releases = load(site)
    for stale in releases:
        if stale.outcome == "running":  # its process was killed mid-way
            stale.outcome, stale.reason = "interrupted", "the rollout process ended before it finished"
    release = Release(
        id=(releases[-1].id + 1) if releases else 1, started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        command="kit " + " ".join(sys.argv[1:]), user=getpass.getuser(), images=images,
        moodle_version=moodle_version, moodle_release=moodle_release)
    target = snapshot_dir(site, release.id)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(site.build_dir, target)
    _save(site, [*releases, release])
    return release


def start_from(site: Site, target: Release) -> Release:
    """Record a rollback: a new release that applies an older release's snapshot."""
    releases = load(site)
    release = Release(
        id=releases[-1].id + 1, started=time.strftime("%Y-%m-%d %H:%M:%S %Z"), command="kit " + " ".join(sys.argv[1:]),
        user=getpass.getuser(), images=target.images, moodle_version=target.moodle_version,
        moodle_release=target.moodle_release)
    shutil.copytree(snapshot_dir(site, target.id), snapshot_dir(site, release.id), dirs_exist_ok=True)
    _save(site, [*releases, release])
    return release


def discard(site: Site, release: Release) -> None:
    """Forget a run that changed nothing."""
    _save(site, [r for r in load(site) if r.id != release.id])
    shutil.rmtree(snapshot_dir(site, release.id), ignore_errors=True)


def finish(site: Site, release: Release, outcome: str, **fields) -> None:
    releases = load(site)
    for i, item in enumerate(releases):
        if item.id == release.id:
            for key, value in fields.items():
                setattr(release, key, value)
            release.outcome = outcome
            releases[i] = release
    _save(site, releases)


def last_good(site: Site, before: int | None = None) -> Release | None:
    for release in reversed(load(site)):
        if release.outcome == "ok" and (before is None or release.id < before):
            return release
    return None


def current(site: Site) -> Release | None:
    return last_good(site)


def fingerprint(site: Site, release: Release) -> str:
    """What a release applies: its rendered files (images and every setting)."""
    digest = hashlib.sha256()
    folder = snapshot_dir(site, release.id)
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != "plan.yml"):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def previous_good(site: Site) -> Release:
    """The newest successful release that applied something other than the current one."""
    now = current(site)
    if now is None:
        raise KitError("no successful release recorded for this site yet: nothing to roll back to")
    for release in reversed(load(site)):
        if release.outcome == "ok" and release.id < now.id and fingerprint(site, release) != fingerprint(site, now):
            return release
    raise KitError(f"release {now.id} is the only release with these images: there is nothing to roll back to")
