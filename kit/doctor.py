"""Preflight checks, run by `kit doctor` and by `kit up` before it changes anything.

Each check returns one line: what is wrong and how to fix it.
"""
from __future__ import annotations

import errno
import platform
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from kit import docker
from kit.drivers import hosts
from kit.config import Site
from kit.errors import KitError
from kit.images import check_moodle_tree
from kit.sizing import PHP_WORKER_MB, Tuning, pg_to_kb

MIN_FREE_DISK_GB = 5


@dataclass
class Check:
    name: str
    ok: bool
    message: str


def is_debian_like() -> bool:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return False
    return any(line.startswith(("ID=debian", "ID=ubuntu", "ID_LIKE=debian")) for line in text.splitlines()) \
        or "ID_LIKE=\"debian" in text


def check_docker() -> Check:
    ok, detail = docker.engine_reachable()
    if ok:
        return Check("docker", True, f"Docker engine {detail} reachable")
    if is_debian_like():
        fix = "start it (`service docker start` or `dockerd &`), or let `kit up --yes` install docker.io"
    else:
        fix = f"install Docker Engine for {platform.system()} (https://docs.docker.com/engine/install/) and start it"
    return Check("docker", False, f"Docker is not reachable ({detail}): {fix}")


def _port_owner_is_site(site: Site) -> bool:
    return any(c["role"] == "edge" and c["state"] == "running" for c in docker.site_containers(site.name))


def check_port(site: Site) -> Check:
    bind, port = site.http.bind, site.http.port
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind, port))
        except OSError as exc:
            if docker.cli_present() and _port_owner_is_site(site):
                return Check("port", True, f"{bind}:{port} is served by this site's edge proxy")
            if exc.errno == errno.EADDRINUSE:
                return Check("port", False, f"port {bind}:{port} is already in use by another program: "
                                            "free it, or set http.port in site.yaml")
            return Check("port", False, f"cannot listen on {bind}:{port} ({exc.strerror}): set http.bind/http.port")
    return Check("port", True, f"{bind}:{port} is free")


def check_disk(site: Site) -> Check:
    target = Path("/var/lib/docker") if Path("/var/lib/docker").exists() else site.site_dir
    free_gb = shutil.disk_usage(target).free / 1024**3
    if free_gb < MIN_FREE_DISK_GB:
        return Check("disk", False, f"only {free_gb:.1f} GB free on {target}: images and data need {MIN_FREE_DISK_GB} GB; free some space")
    return Check("disk", True, f"{free_gb:.0f} GB free on {target}")


def check_memory(site: Site, tuning: Tuning) -> Check:
    need_mb = (tuning.php_children_total * PHP_WORKER_MB + pg_to_kb(tuning.postgres["shared_buffers"]) // 1024
               + tuning.redis_maxmemory_mb + 1024)
    have_mb = tuning.host.memory_mb
    if need_mb > have_mb:
        return Check("memory", False, f"the plan needs ~{need_mb} MB but the host has {have_mb} MB: "
                                      "lower `users` or set host.memory_gb to the real size")
    return Check("memory", True, f"plan needs ~{need_mb} MB of {have_mb} MB")


def check_moodle_source(site: Site) -> Check:
    kind = site.moodle.source_kind()
    if kind == "git":
        return Check("moodle", True, f"Moodle from git {site.moodle.source} @ {site.moodle.ref}")
    path = site.moodle_source_path
    if kind == "tarball":
        if not path.is_file():
            return Check("moodle", False, f"moodle.source: tarball {path} does not exist")
        return Check("moodle", True, f"Moodle from tarball {path}")
    try:
        release = check_moodle_tree(path)
    except KitError as exc:
        return Check("moodle", False, str(exc))
    return Check("moodle", True, f"Moodle {release} at {path}")


def preflight(site: Site, tuning: Tuning, *, docker_required: bool = True) -> list[Check]:
    checks = [check_moodle_source(site), check_disk(site)]
    if site.target == "hosts":  # the machines' memory and ports are theirs: checked there by the rollout
        return checks
    checks.append(check_memory(site, tuning))
    dock = check_docker()
    if docker_required or dock.ok:
        checks.append(dock)
    checks.append(check_port(site))
    return checks


QUEUE_AGE_WARN_S = 600  # Moodle's $CFG->adhoctaskagewarn default (10 min)
CONNECTIONS_WARN = 0.8


def runtime_checks(site: Site) -> list[Check]:
    """A running site's pressure points: replicas, DB connections and size, the task queue."""
    from kit import health
    from kit.errors import CommandFailed

    containers = [c for c in hosts.containers(site) if c["role"] not in ("install", "oneoff")]
    if not containers:
        return []
    checks = []
    bad = [f"{c['name']} {c['state']}/{c['health']}" for c in containers
           if c["state"] != "running" or c["health"] not in ("healthy", "none")]
    checks.append(Check("replicas", not bad, "all containers running and healthy" if not bad
                        else "not healthy: " + ", ".join(bad) + " (see `kit logs`, then `kit up`)"))
    try:
        used, limit, size_mb = hosts.psql(
            site, "select count(*), current_setting('max_connections'), "
            "pg_database_size('moodle') / 1048576 from pg_stat_activity").split("|")
        ratio = int(used) / int(limit)
        checks.append(Check("db-conn", ratio < CONNECTIONS_WARN,
                            f"{used} of {limit} connections in use ({ratio:.0%})"
                            + ("" if ratio < CONNECTIONS_WARN else ": see runbooks/db-connections.md")))
        checks.append(Check("db-size", True, f"database is {size_mb} MB"))
    except (CommandFailed, ValueError):
        checks.append(Check("db-conn", False, "cannot query PostgreSQL: is the db container up? (`kit status`)"))
    queue = health.queue_depth(site)
    if queue:
        ok = queue["oldest_age_s"] <= QUEUE_AGE_WARN_S and queue["failing"] == 0
        checks.append(Check("queue", ok, f"{queue['queued']} adhoc tasks queued ({queue['due']} due), "
                                         f"oldest overdue {queue['oldest_age_s']}s (Moodle warns after "
                                         f"{QUEUE_AGE_WARN_S}s), {queue['failing']} failing"
                                         + ("" if ok else ": see runbooks/queue-backlog.md")))
    return checks
