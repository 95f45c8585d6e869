"""What a load level cost: CPU per request of each tier, database transactions per request,
memory of the PHP workers and the load generator's own CPU, read from the kernel's
cgroup counters of the site's containers and from PostgreSQL's statistics.

A measured report is what `kit plan --from-report` sizes real sites from, so the numbers
come from counters, never from estimates. Only the local target can be read this way
(the containers run on this host); elsewhere the report says "not measured".
"""
from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kit import db
from kit.errors import KitError

if TYPE_CHECKING:
    from kit.targets.docker import DockerTarget

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Containers of the monitoring stack (kit.role labels of playbooks/roles/monitoring).
MONITORING_ROLES = ("prometheus", "alertmanager", "exporters", "procs")


def _cgroup_dir(container_id: str) -> tuple[Path, str] | None:
    """(folder, layout) of a container's cgroup: v1 cpuacct or v2 unified, cgroupfs or systemd driver."""
    candidates = [
        (CGROUP_ROOT / "cpuacct" / "docker" / container_id, "v1"),
        (CGROUP_ROOT / "cpu,cpuacct" / "docker" / container_id, "v1"),
        (CGROUP_ROOT / "cpuacct" / "system.slice" / f"docker-{container_id}.scope", "v1"),
        (CGROUP_ROOT / "docker" / container_id, "v2"),
        (CGROUP_ROOT / "system.slice" / f"docker-{container_id}.scope", "v2"),
    ]
    for path, layout in candidates:
        if (path / ("cpuacct.usage" if layout == "v1" else "cpu.stat")).exists():
            return path, layout
    return None


def container_cpu_ns(container_id: str) -> int | None:
    """CPU time the container's processes used since it started (nanoseconds)."""
    found = _cgroup_dir(container_id)
    if not found:
        return None
    path, layout = found
    if layout == "v1":
        return int((path / "cpuacct.usage").read_text())
    for line in (path / "cpu.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) * 1000
    return None


def container_memory(container_id: str) -> tuple[int, int] | None:
    """(resident bytes without page cache, process count) of a container."""
    for mem_dir, layout in ((CGROUP_ROOT / "memory" / "docker" / container_id, "v1"),
                            (CGROUP_ROOT / "docker" / container_id, "v2"),
                            (CGROUP_ROOT / "system.slice" / f"docker-{container_id}.scope", "v2")):
        stat = mem_dir / "memory.stat"
        if not stat.exists():
            continue
        values = dict(line.split() for line in stat.read_text().splitlines() if " " in line)
        rss = int(values.get("total_rss", values.get("rss", 0))) if layout == "v1" else int(values.get("anon", 0))
        procs = mem_dir / "cgroup.procs"
        count = len(procs.read_text().split()) if procs.exists() else 0
        return rss, count
    return None


def host_busy_ns() -> tuple[int, int]:
    """(busy, total) CPU time of the whole host from /proc/stat, in nanoseconds."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return (total - idle) * tick_ns, total * tick_ns


def _children_cpu_ns() -> int:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return int((usage.ru_utime + usage.ru_stime) * 1e9)


@dataclass
class Snapshot:
    at: float
    cpu_ns: dict[str, int]                 # container name -> cumulative CPU
    roles: dict[str, str]                  # container name -> kit.role
    ids: dict[str, str]                    # container name -> id
    db_xacts: int | None
    host_busy_ns: int
    host_total_ns: int
    load_generator_ns: int


@dataclass
class LevelCost:
    """What one load level cost, per request where that makes sense."""

    seconds: float
    requests: int
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)   # per role, plus "site" and "load_generator"
    cpu_cores_busy: dict[str, float] = field(default_factory=dict)       # mean cores used per role
    host_cpu_pct: float = 0.0                                            # whole host, 100 % per core
    host_cpus: int = 0
    db_xacts_per_request: float | None = None
    php_worker_rss_mb: float | None = None                               # mean resident memory of one PHP process
    php_processes: int | None = None

    def as_dict(self) -> dict:
        return {key: (round(value, 2) if isinstance(value, float) else value)
                for key, value in self.__dict__.items()} | {
            "cpu_ms_per_request": {k: round(v, 2) for k, v in self.cpu_ms_per_request.items()},
            "cpu_cores_busy": {k: round(v, 3) for k, v in self.cpu_cores_busy.items()}}


class SiteMeter:
    """Reads a local site's counters before and after a load level: the containers' cgroups
    (found through the Docker SDK) and PostgreSQL's statistics (the monitoring login)."""

    def __init__(self, target: DockerTarget) -> None:
        self.target = target

    def _containers(self) -> tuple[dict[str, str], dict[str, str]]:
        rows = [c for c in self.target.containers() if c.state == "running"]
        return {c.name: c.role for c in rows}, {c.name: c.id for c in rows}

    def _db_xacts(self) -> int | None:
        try:
            return db.transactions(self.target.monitor_db())
        except KitError:   # a missing figure is reported as "not measured"
            return None

    def snapshot(self) -> Snapshot:
        roles, ids = self._containers()
        cpu = {}
        for name, cid in ids.items():
            value = container_cpu_ns(cid)
            if value is not None:
                cpu[name] = value
        busy, total = host_busy_ns()
        return Snapshot(at=time.monotonic(), cpu_ns=cpu, roles=roles, ids=ids, db_xacts=self._db_xacts(),
                        host_busy_ns=busy, host_total_ns=total, load_generator_ns=_children_cpu_ns())

    def cost(self, before: Snapshot, after: Snapshot, requests: int) -> LevelCost:
        seconds = max(after.at - before.at, 1e-6)
        per_role: dict[str, int] = {}
        for name, value in after.cpu_ns.items():
            if name in before.cpu_ns:   # a container replaced mid-level is left out, not guessed
                role = after.roles.get(name, "?")
                per_role[role] = per_role.get(role, 0) + value - before.cpu_ns[name]
        per_role["load_generator"] = after.load_generator_ns - before.load_generator_ns
        # The monitoring stack watches the site; it is not what serves a request (its own row).
        watching = {k: per_role.pop(k) for k in list(per_role) if k in MONITORING_ROLES}
        site_ns = sum(v for k, v in per_role.items() if k != "load_generator")
        per_role["site"] = site_ns
        if watching:
            per_role["monitoring"] = sum(watching.values())
        req = max(requests, 1)
        cpus = max(1, round((after.host_total_ns - before.host_total_ns) / (seconds * 1e9)))
        cost = LevelCost(
            seconds=round(seconds, 1), requests=requests,
            cpu_ms_per_request={role: ns / 1e6 / req for role, ns in per_role.items()},
            cpu_cores_busy={role: ns / 1e9 / seconds for role, ns in per_role.items()},
            host_cpu_pct=100.0 * (after.host_busy_ns - before.host_busy_ns) / (seconds * 1e9),
            host_cpus=cpus)
        if before.db_xacts is not None and after.db_xacts is not None:
            cost.db_xacts_per_request = (after.db_xacts - before.db_xacts) / req
        rss, procs = 0, 0
        for name, role in after.roles.items():
            if role == "web" and name in after.ids:
                found = container_memory(after.ids[name])
                if found:
                    rss += found[0]
                    procs += max(found[1] - 2, 1)   # minus tini and the php-fpm master
        if procs:
            cost.php_worker_rss_mb = rss / procs / 2**20
            cost.php_processes = procs
        return cost
