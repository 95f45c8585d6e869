"""Render: Site + Tuning -> build/<site>/, every file a driver will use, deterministically.

Nothing here talks to Docker or a host: a person can read build/<site>/ to see exactly
what `kit up` will apply.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from urllib.parse import urlparse

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from kit import ROOT, __version__
from kit.config import Site
from kit.images import ImageSet
from kit.sizing import Tuning

TEMPLATES = Path(__file__).parent / "templates"

# Rendered config file -> the services that must restart when it changes.
CONFIG_FILES = {
    "config.php": ("web", "cron", "worker"),
    "php.ini": ("web", "cron", "worker"),
    "fpm-pool.conf": ("web",),
    "nginx.conf": ("web",),
    "edge.conf": (),  # the edge reloads on change; it is never restarted for config
    "postgresql.conf": ("db",),
    "redis.conf": ("redis",),
}


@dataclass(frozen=True)
class Names:
    """Docker object names of one site (the one place they are spelled)."""

    prefix: str
    replicas: int
    workers: int

    @property
    def network(self) -> str:
        return self.prefix

    @property
    def db(self) -> str:
        return f"{self.prefix}-db"

    @property
    def redis(self) -> str:
        return f"{self.prefix}-redis"

    @property
    def edge(self) -> str:
        return f"{self.prefix}-edge"

    @property
    def cron(self) -> str:
        return f"{self.prefix}-cron"

    @property
    def web(self) -> list[str]:
        return [f"{self.prefix}-web-{i}" for i in range(1, self.replicas + 1)]

    @property
    def worker(self) -> list[str]:
        return [f"{self.prefix}-worker-{i}" for i in range(1, self.workers + 1)]

    def volume(self, what: str) -> str:
        return f"{self.prefix}-{what}"


def names_for(site: Site, tuning: Tuning) -> Names:
    return Names(prefix=site.prefix, replicas=tuning.web_replicas, workers=tuning.workers)


def _env() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined,
                       keep_trailing_newline=True, autoescape=False)


def render_files(site: Site, tuning: Tuning) -> dict[str, str]:
    """Config files as text, keyed by file name."""
    env = _env()
    ctx = {"site": site, "tuning": tuning, "names": names_for(site, tuning)}
    return {name: env.get_template(f"{name}.j2").render(**ctx) for name in CONFIG_FILES}


def driver_vars(site: Site, tuning: Tuning, images: ImageSet, files: dict[str, str]) -> dict:
    """The variables the playbooks read: every value comes from Site, Tuning or ImageSet."""
    names = names_for(site, tuning)
    checksums: dict[str, str] = {}
    for service in ("web", "cron", "worker", "db", "redis"):
        digest = hashlib.sha256()
        for name, users in CONFIG_FILES.items():
            if service in users:
                digest.update(files[name].encode())
        checksums[service] = digest.hexdigest()[:16]
    return {
        "kit_version": __version__,
        "kit_site": site.name,
        "kit_url": site.url,
        "kit_public_host": urlparse(site.url or "").netloc,
        "kit_config_dir": f"/etc/kit/{site.name}",
        "kit_http_bind": site.http.bind,
        "kit_http_port": site.http.port,
        "kit_images": images.as_dict(),
        "kit_names": {
            "network": names.network, "db": names.db, "redis": names.redis, "edge": names.edge,
            "cron": names.cron, "web": names.web, "worker": names.worker,
            "moodledata": names.volume("moodledata"), "pgdata": names.volume("pgdata"),
            "redisdata": names.volume("redisdata"), "prefix": names.prefix,
        },
        "kit_web_replicas": tuning.web_replicas,
        "kit_workers": tuning.workers,
        "kit_fpm_max_children": tuning.fpm_max_children,
        "kit_redis_maxmemory_mb": tuning.redis_maxmemory_mb,
        "kit_checksums": checksums,
        "kit_moodle": {
            "admin_user": site.moodle.admin_user, "admin_email": site.moodle.admin_email,
            "fullname": site.moodle.fullname, "shortname": site.moodle.shortname,
        },
        "kit_config_files": sorted(CONFIG_FILES),
    }


def render(site: Site, tuning: Tuning, images: ImageSet) -> Path:
    """Write build/<site>/: config files, vars.yml, inventory. Returns the folder."""
    out = site.build_dir
    out.mkdir(parents=True, exist_ok=True)
    files = render_files(site, tuning)
    for name, text in files.items():
        _write_if_changed(out / name, text)
    data = driver_vars(site, tuning, images, files)
    _write_if_changed(out / "vars.yml", "# Rendered by `kit render`; the playbooks read only this and secrets.\n"
                      + yaml.safe_dump(data, sort_keys=True))
    _write_if_changed(out / "plan.yml", yaml.safe_dump(tuning.as_dict(), sort_keys=True))
    _write_if_changed(out / "inventory.ini", inventory(site))
    return out


def inventory(site: Site) -> str:
    # The driver sets ansible_python_interpreter to the kit's own Python (see kit.drivers.local).
    return "# Rendered by `kit render`.\n[moodle]\nlocalhost ansible_connection=local\n"


def _write_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def playbooks_dir() -> Path:
    return ROOT / "playbooks"
