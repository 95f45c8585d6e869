"""Sizing: from host resources and expected users to every tuned number, each with a reason.

The result (`Tuning`) is the one home of derived settings: postgresql.conf, the php-fpm
pool, opcache, replica and worker counts all read it. PostgreSQL values are kept as the
exact strings PostgreSQL's `SHOW` prints, so a plan can be checked against a live server.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from kit.config import LEVERS, TUNED_OFF_ON_TARGET, Site

# Planning constants: each is a stated assumption, printed by `kit plan`.
PHP_WORKER_MB = 80          # resident memory of one busy Moodle 4.5 php-fpm child
REQ_PER_USER_S = 0.2        # a concurrent student with think time: one request every ~5 s
SERVICE_TIME_S = 0.3        # mean time a request holds a php-fpm child
CHILDREN_PER_CPU = 3        # measured: 12 children on 2 CPUs gave p95 1.1-1.9 s at 40 users, 5-6 gave 0.67-0.75 s
MIN_CHILDREN_PER_REPLICA = 2
CHILDREN_PER_REPLICA = 48   # keep one replica's pool small enough to drain quickly
OS_RESERVE_MB = 1024
# Debian 12's stock php-fpm pool (www.conf): what `profile: stock` and fpm_sized off run.
DEBIAN_FPM = {"max_children": 5, "start_servers": 2, "min_spare": 1, "max_spare": 3}
DB_RAM_SHARE = 0.25         # on one host PostgreSQL plans against a quarter of RAM
REDIS_MB_PER_USER = 0.25
REQUEST_TIMEOUT_S = 300     # PHP's time limit for one web request, as Moodle's docs advise
TIMEOUT_STEP_S = 10         # each outer hop waits this much longer than the one inside it
MAX_CONN_STEP = 100         # max_connections steps: scaling inside one never restarts PostgreSQL


def pg_needed(connections: int) -> int:
    """max_connections for this many: rounded up to a step, so scaling within it never restarts PostgreSQL."""
    return max(MAX_CONN_STEP, math.ceil(connections / MAX_CONN_STEP) * MAX_CONN_STEP)


def pg_mem(kb: int) -> str:
    """Format kB the way PostgreSQL's SHOW does: the largest unit that keeps an integer."""
    for unit, factor in (("TB", 1024**3), ("GB", 1024**2), ("MB", 1024)):
        if kb % factor == 0 and kb >= factor:
            return f"{kb // factor}{unit}"
    return f"{kb}kB"


def pg_to_kb(value: str) -> int:
    """Inverse of pg_mem: '1536MB' -> 1572864."""
    for unit, factor in (("TB", 1024**3), ("GB", 1024**2), ("MB", 1024), ("kB", 1)):
        if value.endswith(unit):
            return int(value[: -len(unit)]) * factor
    raise ValueError(f"not a PostgreSQL memory value: {value!r}")


@dataclass(frozen=True)
class HostResources:
    cpus: int
    memory_mb: int

    @classmethod
    def detect(cls) -> "HostResources":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
        return cls(cpus=cpus, memory_mb=int(memory_mb))

    @classmethod
    def for_site(cls, site: Site) -> "HostResources":
        found = cls.detect()
        cpus = site.host.cpus or found.cpus
        memory_mb = int(site.host.memory_gb * 1024) if site.host.memory_gb else found.memory_mb
        return cls(cpus=cpus, memory_mb=memory_mb)


INT_FIELDS = ("web_replicas", "fpm_max_children", "fpm_start_servers", "fpm_min_spare", "fpm_max_spare",
              "php_memory_limit_mb", "opcache_memory_mb", "opcache_interned_mb", "opcache_max_files",
              "opcache_revalidate_s",
              "realpath_cache_ttl_s", "workers", "adhoc_concurrency_limit", "redis_maxmemory_mb",
              "request_timeout_s", "fastcgi_read_timeout_s", "edge_read_timeout_s")


def levers_off_by_target(site: Site) -> dict[str, str]:
    """The tuned levers measured not to pay on this site's target, with the reason."""
    return TUNED_OFF_ON_TARGET.get(site.target, {}) if site.performance.profile == "tuned" else {}


def resolve_levers(site: Site) -> dict[str, bool]:
    """The tuned profile turns on every lever that pays on its target, stock none; site.yaml
    may flip single ones."""
    tuned, off = site.performance.profile == "tuned", levers_off_by_target(site)
    return {name: tuned and name not in off for name in LEVERS} | dict(site.performance.levers)


def db_link_leaves_host(site: Site) -> bool:
    """On hosts, Moodle reaches PostgreSQL over the network when any Moodle machine is not the DB's."""
    if site.target != "hosts":
        return False
    db = site.hosts.with_role("db")[0].name
    return any(m.name != db for role in ("web", "cron", "worker") for m in site.hosts.with_role(role))


@dataclass
class Tuning:
    """Every derived number, with the one-line reason `kit plan` prints beside it."""

    host: HostResources
    users: int
    web_replicas: int
    fpm_max_children: int
    fpm_start_servers: int
    fpm_min_spare: int
    fpm_max_spare: int
    php_memory_limit_mb: int
    opcache_memory_mb: int
    opcache_max_files: int
    workers: int
    adhoc_concurrency_limit: int
    redis_maxmemory_mb: int
    postgres: dict[str, str]
    levers: dict[str, bool] = field(default_factory=dict)
    fpm_static: bool = True               # pm = static: children (and their DB connections) stay up
    db_sslmode: str = "prefer"            # libpq sslmode Moodle connects with
    network_tls: bool = False             # PostgreSQL and Redis links between machines: TLS, site CA
    opcache_interned_mb: int = 16
    opcache_revalidate_s: int = 60
    realpath_cache_ttl_s: int = 600
    request_timeout_s: int = REQUEST_TIMEOUT_S
    fastcgi_read_timeout_s: int = REQUEST_TIMEOUT_S + TIMEOUT_STEP_S
    edge_read_timeout_s: int = REQUEST_TIMEOUT_S + 2 * TIMEOUT_STEP_S
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def php_children_total(self) -> int:
        return self.web_replicas * self.fpm_max_children

    def rows(self) -> list[tuple[str, str, str]]:
        """(setting, value, reason) rows in plan order."""
        out = []
        for key, on in self.levers.items():
            out.append((f"lever.{key}", "on" if on else "off", self.reasons.get(f"lever.{key}", "")))
        for key in INT_FIELDS:
            out.append((key, str(getattr(self, key)), self.reasons.get(key, "")))
        for key in ("fpm_static", "db_sslmode", "network_tls"):
            out.append((key, str(getattr(self, key)).lower(), self.reasons.get(key, "")))
        for key, value in self.postgres.items():
            out.append((f"postgres.{key}", value, self.reasons.get(f"postgres.{key}", "")))
        return out

    def as_dict(self) -> dict:
        data: dict = {key: int(getattr(self, key)) for key in INT_FIELDS}
        data["postgres"] = dict(self.postgres)
        data["levers"] = dict(self.levers)
        data["db_sslmode"] = self.db_sslmode
        data["fpm_static"] = self.fpm_static
        data["network_tls"] = self.network_tls
        data["host"] = {"cpus": self.host.cpus, "memory_mb": self.host.memory_mb}
        data["users"] = self.users
        return data


def plan(site: Site, host: HostResources | None = None) -> Tuning:
    host = host or HostResources.for_site(site)
    users, cpus, ram = site.users, host.cpus, host.memory_mb
    why: dict[str, str] = {}
    levers, off = resolve_levers(site), levers_off_by_target(site)
    for name in levers:
        if name in site.performance.levers:
            source = "site.yaml performance.levers"
        elif name in off:
            source = f"off on target {site.target}: {off[name]}"
        else:
            source = f"profile {site.performance.profile}"
        why[f"lever.{name}"] = f"{LEVERS[name]} ({source})"

    # --- PHP tier -------------------------------------------------------------------
    needed = math.ceil(users * REQ_PER_USER_S * SERVICE_TIME_S * 2)
    cpu_cap = cpus * CHILDREN_PER_CPU
    php_ram = max(256, int((ram - OS_RESERVE_MB) * (1 - DB_RAM_SHARE) * 0.6))
    ram_cap = max(4, php_ram // PHP_WORKER_MB)
    total = max(4, min(needed, cpu_cap, ram_cap))
    limiter = {needed: "expected load", cpu_cap: "CPU count", ram_cap: "memory"}[min(needed, cpu_cap, ram_cap)]
    web_hosts = len(site.hosts.with_role("web")) if site.target == "hosts" else 0
    if web_hosts:
        replicas = web_hosts
        why["web_replicas"] = "one per machine with role web (hosts.machines)"
    elif site.scale.web_replicas:
        replicas = site.scale.web_replicas
        why["web_replicas"] = "set in site.yaml (scale.web_replicas)"
    elif not levers["fpm_sized"]:
        replicas = 1
        why["web_replicas"] = "lever fpm_sized off: one php-fpm, as on a stock Debian host"
    else:
        replicas = max(2, math.ceil(total / CHILDREN_PER_REPLICA))
        why["web_replicas"] = (f"at least 2 so a rolling update always has one serving; "
                               f"+1 per {CHILDREN_PER_REPLICA} php-fpm children")
    per_replica = max(MIN_CHILDREN_PER_REPLICA, math.ceil(total / replicas))
    why["fpm_max_children"] = (f"{total} children in all, limited by {limiter} "
                               f"({users} users x {REQ_PER_USER_S} req/s x {SERVICE_TIME_S}s x2 = {needed}; "
                               f"{cpus} CPUs x {CHILDREN_PER_CPU} = {cpu_cap}; "
                               f"{php_ram} MB / {PHP_WORKER_MB} MB = {ram_cap}), split over {replicas} replicas")
    start = max(1, per_replica // 4)
    min_spare = max(1, per_replica // 4)
    max_spare = max(min_spare + 1, per_replica // 2)
    why["fpm_start_servers"] = why["fpm_min_spare"] = why["fpm_max_spare"] = "unused with pm = static"
    why["fpm_static"] = ("pm = static: every child stays up with its opcache-warm state and its persistent "
                         "PostgreSQL connection; a dynamic pool forks and kills children every few seconds "
                         "as load varies, each time opening a new connection")
    if not levers["fpm_sized"]:
        per_replica, start, min_spare, max_spare = (DEBIAN_FPM[k] for k in
                                                    ("max_children", "start_servers", "min_spare", "max_spare"))
        for key in ("fpm_max_children", "fpm_start_servers", "fpm_min_spare", "fpm_max_spare", "fpm_static"):
            why[key] = "lever fpm_sized off: Debian 12's stock www.conf pool (pm = dynamic)"
    why["php_memory_limit_mb"] = "cap for one request (reports, backups); the average is far lower"
    if levers["opcache_sized"]:
        opcache = {"opcache_memory_mb": 128, "opcache_interned_mb": 16, "opcache_max_files": 20000,
                   "opcache_revalidate_s": 60}
        why["opcache_memory_mb"] = "Moodle 4.5 code compiled: ~100 MB; 128 MB per Moodle's docs"
        why["opcache_interned_mb"] = "Moodle's class and string names overflow PHP's 8 MB default"
        why["opcache_max_files"] = "Moodle 4.5 ships ~17,600 PHP files; every one must fit"
        why["opcache_revalidate_s"] = ("the code is immutable in the image, but Moodle writes PHP files into "
                                       "moodledata (class map, cache config) that must be seen within a minute; "
                                       "timestamp checks stay on")
    else:
        opcache = {"opcache_memory_mb": 128, "opcache_interned_mb": 8, "opcache_max_files": 10000,
                   "opcache_revalidate_s": 2}
        for key in opcache:
            why[key] = "lever opcache_sized off: PHP 8.2's defaults"
    ttl = 600 if levers["realpath_cache"] else 120
    why["realpath_cache_ttl_s"] = ("paths never change in an immutable image" if levers["realpath_cache"]
                                   else "lever realpath_cache off: PHP's default")

    # --- queued work --------------------------------------------------------------------
    if site.scale.workers is not None:
        workers = site.scale.workers
        why["workers"] = "set in site.yaml (scale.workers)"
    else:
        workers = min(max(2, math.ceil(users / 500)), max(2, cpus * 2))
        why["workers"] = "2 so the queue drains while one restarts; +1 per 500 users, at most 2 per CPU"
    adhoc_limit = workers + 1
    why["adhoc_concurrency_limit"] = "one adhoc runner per worker, +1 for a worker being replaced"

    # --- timeouts, innermost first: a stuck request is ended by php-fpm, and nginx and the
    # edge pass that answer on; were they equal, whichever fired first would decide (504 or 502).
    why["request_timeout_s"] = ("PHP's max_execution_time and php-fpm's request_terminate_timeout (wall "
                                "clock): Moodle's longest web pages (reports, restores) fit, a stuck one ends")
    why["fastcgi_read_timeout_s"] = (f"request_timeout_s + {TIMEOUT_STEP_S} s: the replica's nginx waits for "
                                     "php-fpm's own answer, so php-fpm is the one that ends a stuck request")
    why["edge_read_timeout_s"] = (f"fastcgi_read_timeout_s + {TIMEOUT_STEP_S} s: the edge waits for the "
                                  "replica's answer; it retries another replica only within the same budget")

    redis_mb = max(256, int(256 + users * REDIS_MB_PER_USER))
    why["redis_maxmemory_mb"] = f"256 MB application cache + {REDIS_MB_PER_USER} MB per user for sessions"

    # --- PostgreSQL (PGTune, web profile) ----------------------------------------------
    db_kb = int(ram * DB_RAM_SHARE) * 1024
    needed_conn = total + per_replica + workers + 1 + 1 + 10
    # Rounded up to a step: scaling replicas or workers within it never restarts PostgreSQL
    # (max_connections only changes with a restart).
    max_conn = pg_needed(needed_conn)
    why["postgres.max_connections"] = (f"{total} php-fpm children + {per_replica} for the replica added during a "
                                       f"rolling update + {workers} workers + cron + 1 admin CLI + 10 headroom "
                                       f"= {needed_conn}, rounded up to a multiple of {MAX_CONN_STEP} so that "
                                       "`kit scale` within it does not restart PostgreSQL")
    shared_buffers_mb = db_kb // 4 // 1024
    pg: dict[str, str] = {}
    pg["max_connections"] = str(max_conn)
    pg["shared_buffers"] = pg_mem(shared_buffers_mb * 1024)
    why["postgres.shared_buffers"] = (f"1/4 of the {db_kb // 1024} MB planned for PostgreSQL "
                                      f"({int(DB_RAM_SHARE * 100)}% of RAM on a shared host)")
    pg["effective_cache_size"] = pg_mem(db_kb * 3 // 4 // 1024 * 1024)
    why["postgres.effective_cache_size"] = "3/4 of PostgreSQL's memory: what the OS cache can hold"
    maint_mb = min(db_kb // 16 // 1024, 2048)
    pg["maintenance_work_mem"] = pg_mem(maint_mb * 1024)
    why["postgres.maintenance_work_mem"] = "1/16 of PostgreSQL's memory, at most 2 GB"
    parallel_workers = cpus if cpus >= 4 else 8
    work_kb = max(4096, (db_kb - shared_buffers_mb * 1024) // ((max_conn + parallel_workers) * 3))
    pg["work_mem"] = pg_mem(work_kb)
    why["postgres.work_mem"] = "(memory - shared_buffers) / ((max_connections + worker processes) x 3), at least 4 MB"
    wal_kb = min(16 * 1024, shared_buffers_mb * 1024 * 3 // 100) // 8 * 8
    pg["wal_buffers"] = pg_mem(max(wal_kb, 64))
    why["postgres.wal_buffers"] = "3% of shared_buffers, at most 16 MB"
    pg["min_wal_size"] = "1GB"
    pg["max_wal_size"] = "4GB"
    why["postgres.min_wal_size"] = why["postgres.max_wal_size"] = "web profile: fewer forced checkpoints under write bursts"
    pg["checkpoint_completion_target"] = "0.9"
    why["postgres.checkpoint_completion_target"] = "spread checkpoint writes over the interval"
    pg["default_statistics_target"] = "100"
    why["postgres.default_statistics_target"] = "PGTune web profile"
    pg["random_page_cost"] = "1.1"
    why["postgres.random_page_cost"] = "SSD: random reads cost about as much as sequential"
    pg["effective_io_concurrency"] = "200"
    why["postgres.effective_io_concurrency"] = "SSD: many concurrent reads"
    pg["max_worker_processes"] = str(parallel_workers)
    why["postgres.max_worker_processes"] = "CPUs when 4 or more, else PostgreSQL's 8"
    if cpus >= 4:
        pg["max_parallel_workers_per_gather"] = str(min(4, cpus // 2))
        pg["max_parallel_workers"] = str(cpus)
        pg["max_parallel_maintenance_workers"] = str(min(4, cpus // 2))
        why["postgres.max_parallel_workers_per_gather"] = "half the CPUs, at most 4"
        why["postgres.max_parallel_workers"] = "one per CPU"
        why["postgres.max_parallel_maintenance_workers"] = "half the CPUs, at most 4"
    pg["jit"] = "off"
    why["postgres.jit"] = "web queries are short: JIT compile time costs more than it saves"
    pg["wal_compression"] = "lz4"
    why["postgres.wal_compression"] = "PostgreSQL 15: cheaper WAL for full-page writes"
    pg["huge_pages"] = "try"
    why["postgres.huge_pages"] = "used when the kernel offers them, never required"
    if not levers["postgres_sized"]:
        # Every other setting at PostgreSQL 15's default (shared_buffers spelled out: doctor reads it).
        pg = {"max_connections": pg["max_connections"], "shared_buffers": "128MB"}
        why["postgres.shared_buffers"] = "lever postgres_sized off: PostgreSQL's default"
    leaves = db_link_leaves_host(site)
    if not levers["db_tls_local_off"]:
        pg["ssl"], sslmode = "on", "prefer"
        why["postgres.ssl"] = "lever db_tls_local_off off: TLS on, as Debian's package ships it"
        why["db_sslmode"] = "libpq's default: TLS whenever the server offers it"
    elif site.target == "hosts":
        pg["ssl"], sslmode = "on", "verify-full"
        why["postgres.ssl"] = ("the database link leaves the machine: encrypted, with the site CA's certificate"
                               if leaves else "hosts: the database port is published on the machine's address, "
                               "so it takes TLS only, with the site CA's certificate")
        why["db_sslmode"] = "refuse an unencrypted or unverified link to a database on another machine"
    elif site.target == "k8s":
        pg["ssl"], sslmode = "on", "prefer"
        why["postgres.ssl"] = "the database is reached over the cluster network"
        why["db_sslmode"] = "TLS whenever the cluster's PostgreSQL offers it (CloudNativePG does)"
    else:
        pg["ssl"], sslmode = "off", "prefer"
        why["postgres.ssl"] = ("the database link never leaves this host's Docker network; TLS costs ~8 ms of "
                               "PostgreSQL CPU per new connection")
        why["db_sslmode"] = "the server offers no TLS on this host"
    if levers["db_persistent_connections"]:
        # A replaced container's network namespace can vanish before its php-fpm children say
        # goodbye: without keepalives PostgreSQL keeps such connections for hours and runs out of slots.
        pg["tcp_keepalives_idle"], pg["tcp_keepalives_interval"], pg["tcp_keepalives_count"] = "60", "10", "6"
        for key in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count"):
            why[f"postgres.{key}"] = ("persistent connections of replaced containers are closed within 2 minutes "
                                      "(60 s idle + 6 probes x 10 s)")
    pg["synchronous_commit"] = "on"
    why["postgres.synchronous_commit"] = "durability is not a tuning lever"
    why["network_tls"] = ("PostgreSQL and Redis are reached across machines: TLS with certificates of the site's own "
                          "CA, plain connections refused" if site.target == "hosts"
                          else "every link stays inside one host's Docker network or the cluster's")

    return Tuning(
        host=host, users=users, web_replicas=replicas, fpm_max_children=per_replica,
        fpm_start_servers=start, fpm_min_spare=min_spare, fpm_max_spare=max_spare,
        php_memory_limit_mb=256, workers=workers, adhoc_concurrency_limit=adhoc_limit, redis_maxmemory_mb=redis_mb,
        postgres=pg, levers=levers, fpm_static=levers["fpm_sized"], db_sslmode=sslmode, realpath_cache_ttl_s=ttl,
        network_tls=site.target == "hosts",
        reasons=why, **opcache,
    )
