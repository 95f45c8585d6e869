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

from kit import ROOT, __version__, monitoring, signin
from kit.config import Site
from kit.db import SCHEMA
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
    "pg_hba.conf": ("db",),
    "redis.conf": ("redis",),
    "signin.json": (),   # read by signin.php on each rollout; no container restarts for it
    "ldap.conf": ("web", "cron", "worker"),     # libldap reads it once per process
    "ldap-ca.crt": ("web", "cron", "worker"),   # the directory's CA (auth.ldap.ca_file), or empty
    "outbound-ca.crt": ("web", "cron", "worker"),   # the system's CAs and auth.idp_ca_file, or empty
    # Monitoring (kit/monitoring.py): Prometheus, Alertmanager and the exporters restart on a change.
    "prometheus.yml": ("prometheus",),
    "alerts.yml": ("prometheus",),
    "alertmanager.yml": ("alertmanager",),
    "blackbox.yml": ("exporters",),
    "pg-queries.yaml": ("exporters",),
    "edge.mtail": ("exporters",),
}
#: Config files that are not jinja templates (made in render_files).
GENERATED = ("signin.json", "ldap-ca.crt", "outbound-ca.crt", "prometheus.yml")
#: The monitoring stack's files (mounted into its containers, under monitoring.CONFIG_DIR).
MONITORING_FILES = ("prometheus.yml", "alerts.yml", "alertmanager.yml", "blackbox.yml", "pg-queries.yaml",
                    "edge.mtail")


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
    def prometheus(self) -> str:
        return f"{self.prefix}-prometheus"

    @property
    def alertmanager(self) -> str:
        return f"{self.prefix}-alertmanager"

    @property
    def exporters(self) -> str:
        return f"{self.prefix}-exporters"

    @property
    def procs(self) -> str:
        """The process exporter (it sees the host's processes: CPU per tier)."""
        return f"{self.prefix}-procs"

    @property
    def cron(self) -> str:
        return f"{self.prefix}-cron"

    @property
    def oneoff(self) -> str:
        """The throw-away container of install, upgrade and Moodle CLI one-offs."""
        return f"{self.prefix}-oneoff"

    @property
    def web(self) -> list[str]:
        return [f"{self.prefix}-web-{i}" for i in range(1, self.replicas + 1)]

    @property
    def worker(self) -> list[str]:
        return [f"{self.prefix}-worker-{i}" for i in range(1, self.workers + 1)]

    def volume(self, what: str) -> str:
        return f"{self.prefix}-{what}"

    def claims(self, name: str) -> bool:
        """Whether a Docker object's name is one this site uses (whatever the counts): a name
        prefix alone is not enough, site `e2e` must not claim `kit-e2e-ext-db`."""
        import re

        pattern = (rf"{re.escape(self.prefix)}(-(db|redis|edge|cron|oneoff|web-[0-9]+(-nginx)?|worker-[0-9]+"
                   r"|moodledata|pgdata|redisdata|letsencrypt|prometheus|alertmanager|exporters|procs|metrics|edgelogs))?")
        return re.fullmatch(pattern, name) is not None


def names_for(site: Site, tuning: Tuning) -> Names:
    return Names(prefix=site.prefix, replicas=tuning.web_replicas, workers=tuning.workers)


LOCAL_HOST = "localhost"
#: Where every Moodle container finds its secrets as files (a read-only mount; on
#: Kubernetes, the Secret as a volume). config.php reads them; nothing else may.
SECRETS_DIR = "/run/kit/secrets"
#: The one-off install container's admin password, beside the others.
INSTALL_SECRETS_DIR = "/run/kit/install"
#: Inside the edge: where nginx finds the certificate (a mount, or links to certbot's), and
#: the webroot certbot answers ACME HTTP-01 challenges from.
EDGE = {"cert_dir": "/run/kit-tls", "acme_webroot": "/var/www/acme",
        # the metrics log mtail reads (a volume the exporters mount at monitoring.EDGE_LOG)
        "metrics_log": "/var/log/kit/edge-metrics.log"}


@dataclass(frozen=True)
class Topology:
    """Which host runs what, and how the containers reach each other.

    local: one host, containers find each other by name on the site's network.
    hosts: several machines; services publish ports on their machine's address, the edge
    proxies to each web machine's published port, moodledata is a shared mount.
    """

    db_endpoint: str
    redis_endpoint: str                # where Moodle connects to Redis
    redis_tunnel: str                  # hosts: the Redis machine's TLS port Moodle's local tunnel reaches
    replicas: dict[str, dict]          # replica name -> {host, upstream, publish}
    workers: dict[str, str]            # worker name -> host
    hosts_for: dict[str, list[str]]    # role -> inventory host names
    publish: dict[str, list[str]]      # service -> docker published ports
    moodledata: dict[str, str]         # docker mount source/type for moodledata
    addresses: dict[str, str]          # inventory host -> address (hosts target)

    @property
    def edge_host(self) -> str:
        return self.hosts_for["edge"][0]

    def host_of(self, container_role: str) -> str:
        """The inventory host that runs the first container of a role (db, redis, cron, web)."""
        if container_role == "web":
            return next(iter(self.replicas.values()))["host"]
        return self.hosts_for[container_role][0]


def topology_for(site: Site, tuning: Tuning) -> Topology:
    names = names_for(site, tuning)
    external = site.database.external_parts() if site.database.external else None
    if site.target != "hosts":
        return Topology(
            db_endpoint=str(external["host"]) if external else names.db, redis_endpoint=names.redis, redis_tunnel="",
            replicas={n: {"host": LOCAL_HOST, "upstream": f"{n}-nginx:80", "publish": []} for n in names.web},
            workers={n: LOCAL_HOST for n in names.worker},
            hosts_for={role: [] if role == "db" and external else [LOCAL_HOST]
                       for role in ("edge", "db", "redis", "cron", "web", "worker")},
            # The kit's own probes (kit.db) reach PostgreSQL on a loopback port Docker picks.
            publish={"db": ["127.0.0.1::5432"], "redis": []},
            moodledata={"type": "volume", "source": names.volume("moodledata")},
            addresses={},
        )
    hosts = site.hosts
    web = hosts.with_role("web")
    runners = hosts.with_role("worker") or hosts.with_role("cron")
    db, redis = hosts.with_role("db")[0], hosts.with_role("redis")[0]
    return Topology(
        # Moodle 4.5's session handler cannot open TLS to a single Redis ("tls://host" breaks
        # its host:port parsing), so each Moodle container reaches Redis through a local TLS
        # tunnel (socat, checking the site CA's certificate) on 127.0.0.1:6379.
        db_endpoint=str(external["host"]) if external else db.address, redis_endpoint="127.0.0.1",
        redis_tunnel=f"{redis.address}:6379",
        replicas={n: {"host": m.name, "upstream": f"{m.address}:{hosts.web_port}",
                      # the status port too (stub_status, php-fpm's), for the Prometheus on the edge machine
                      "publish": [f"{m.address}:{hosts.web_port}:80"]
                      + ([f"{m.address}:{hosts.web_port + 1}:{monitoring.STATUS_PORT}"] if site.monitoring.enabled
                         else [])} for n, m in zip(names.web, web, strict=False)},
        workers={n: runners[i % len(runners)].name for i, n in enumerate(names.worker)},
        hosts_for={role: [] if role == "db" and external else
                   [m.name for m in hosts.with_role(role)] or [hosts.with_role("cron")[0].name]
                   for role in ("edge", "db", "redis", "cron", "web", "worker")},
        publish={"db": [f"{db.address}:5432:5432"], "redis": [f"{redis.address}:6379:6379"]},
        moodledata={"type": "bind", "source": hosts.moodledata},
        addresses={m.name: m.address for m in hosts.machines},
    )


def _env() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined,
                       keep_trailing_newline=True, autoescape=False)


def render_files(site: Site, tuning: Tuning) -> dict[str, str]:
    """Config files as text, keyed by file name."""
    env = _env()
    ctx = {"site": site, "tuning": tuning, "names": names_for(site, tuning), "topology": topology_for(site, tuning),
           "database": database_vars(site, tuning), "secrets_dir": SECRETS_DIR, "edge": EDGE,
           "alert_for": monitoring.alert_for, "probe_target": monitoring.probe_target,
           "buckets": monitoring.buckets(site), "disk_dir": monitoring.DISK_DIR, "schema": SCHEMA,
           "monitor_secrets_dir": monitoring.SECRETS_DIR, "status_port": monitoring.STATUS_PORT,
           "webhook_placeholder": monitoring.WEBHOOK_PLACEHOLDER}
    files = {name: env.get_template(f"{name}.j2").render(**ctx) for name in CONFIG_FILES if name not in GENERATED}
    files["prometheus.yml"] = monitoring.render_prometheus(site, tuning)
    files["signin.json"] = signin.render(site)
    files["ldap-ca.crt"] = signin.ldap_ca(site)
    files["outbound-ca.crt"] = signin.outbound_ca(site)
    return files


def driver_vars(site: Site, tuning: Tuning, images: ImageSet, files: dict[str, str]) -> dict:
    """The variables the playbooks read: every value comes from Site, Tuning or ImageSet."""
    names = names_for(site, tuning)
    topo = topology_for(site, tuning)
    checksums: dict[str, str] = {}
    for service in ("web", "cron", "worker", "db", "redis", "prometheus", "alertmanager", "exporters"):
        digest = hashlib.sha256()
        for name, users in CONFIG_FILES.items():
            if service in users:
                digest.update(files[name].encode())
        served = site.state_dir / "tls" / "site" / f"{service}.crt"
        if tuning.network_tls and service in ("db", "redis") and served.is_file():
            digest.update(served.read_bytes())   # a renewed certificate restarts the server that serves it
        checksums[service] = digest.hexdigest()[:16]
    return {
        "kit_version": __version__,
        "kit_site": site.name,
        "kit_url": site.url,
        "kit_public_host": urlparse(site.url or "").netloc,
        "kit_config_dir": host_config_dir(site),
        "kit_http_bind": site.http.bind,
        "kit_http_port": site.http.port,
        "kit_images": images.as_dict(),
        "kit_names": {
            "network": names.network, "db": names.db, "redis": names.redis, "edge": names.edge,
            "cron": names.cron, "web": names.web, "worker": names.worker,
            "moodledata": names.volume("moodledata"), "pgdata": names.volume("pgdata"),
            "redisdata": names.volume("redisdata"), "prefix": names.prefix, "oneoff": names.oneoff,
            "letsencrypt": names.volume("letsencrypt"),
            "prometheus": names.prometheus, "alertmanager": names.alertmanager, "exporters": names.exporters,
            "procs": names.procs, "metrics": names.volume("metrics"), "edgelogs": names.volume("edgelogs"),
        },
        "kit_monitoring": monitoring_vars(site, tuning),
        "kit_web_replicas": tuning.web_replicas,
        "kit_workers": tuning.workers,
        "kit_adhoc_concurrency_limit": tuning.adhoc_concurrency_limit,
        "kit_fpm_max_children": tuning.fpm_max_children,
        "kit_redis_maxmemory_mb": tuning.redis_maxmemory_mb,
        "kit_app_cache": "redis" if tuning.levers["redis_cache"] else "file",
        "kit_checksums": checksums,
        "kit_target": site.target,
        "kit_replicas": topo.replicas,
        "kit_worker_hosts": topo.workers,
        "kit_edge_host": topo.edge_host,
        "kit_db": database_vars(site, tuning),
        "kit_cron_host": topo.hosts_for["cron"][0],
        "kit_redis_endpoint": topo.redis_endpoint,
        "kit_redis_tunnel": topo.redis_tunnel,
        "kit_network_tls": tuning.network_tls,
        "kit_publish": topo.publish,
        "kit_moodledata_mount": {**topo.moodledata, "target": "/var/moodledata"},
        "kit_moodle": {
            "admin_user": site.moodle.admin_user, "admin_email": site.moodle.admin_email,
            "fullname": site.moodle.fullname, "shortname": site.moodle.shortname,
        },
        "kit_config_files": sorted(CONFIG_FILES),
        "kit_secrets_dir": SECRETS_DIR,
        "kit_tls": tls_vars(site),
        "kit_install_secrets_dir": INSTALL_SECRETS_DIR,
        "kit_signin_file": signin.SIGNIN_FILE,
        # Secret files the sign-in settings read (given with `kit auth`, never generated).
        "kit_signin_secrets": site.auth.secret_files(),
    }


def host_config_dir(site: Site) -> str:
    """Where each machine keeps the site's rendered files and secrets."""
    return f"/etc/kit/{site.name}"


def monitoring_vars(site: Site, tuning: Tuning) -> dict[str, object]:
    """What the monitoring role needs: where each exporter runs, its ports, what it measures."""
    m = site.monitoring
    if not m.enabled:
        return {"enabled": False}
    lay = monitoring.layout(site, tuning)
    topo = topology_for(site, tuning)
    hosts = site.target == "hosts"
    return {
        "enabled": True,
        "config_dir": monitoring.CONFIG_DIR, "secrets_dir": monitoring.SECRETS_DIR, "disk_dir": monitoring.DISK_DIR,
        "uid": monitoring.MONITOR_UID, "monitor_user": site.database.monitor_user,
        "webhook_placeholder": monitoring.WEBHOOK_PLACEHOLDER,
        "config_mounts": [{"type": "bind", "source": f"{host_config_dir(site)}/{name}",
                           "target": f"{monitoring.CONFIG_DIR}/{name}", "read_only": True} for name in MONITORING_FILES],
        "prometheus_publish": [f"127.0.0.1:{m.prometheus_port}:9090"],
        "alertmanager_publish": [f"127.0.0.1:{m.alertmanager_port}:9093"],
        "retention": {"time": f"{m.retention_days}d", "size": f"{m.retention_mb}MB"},
        # host -> exporter arguments (kind=port=arg) and the volumes node-exporter measures.
        "exporters": {h: [e.argv() for e in found] for h, found in lay.exporters.items()},
        "exporter_publish": {h: [f"{topo.addresses[h]}:{e.port}:{e.port}" for e in found] if hosts else []
                             for h, found in lay.exporters.items()},
        "procs_publish": {h: [f"{topo.addresses[h]}:{monitoring.PORTS['process']}:{monitoring.PORTS['process']}"]
                          if hosts else [] for h in lay.exporters},
        "volumes": lay.volumes,
        "redis_uri": next(e.arg for e in lay.exporters[topo.edge_host] if e.kind == "redis"),
    }


def tls_vars(site: Site) -> dict[str, object]:
    """What the edge role needs to end TLS (nothing secret: the key is a file the kit stages)."""
    tls = site.tls
    return {"mode": tls.mode or "off", "at_edge": tls.at_edge, "port": tls.port,
            "host": urlparse(site.url or "").hostname or "", "cert_dir": EDGE["cert_dir"],
            "acme_ca_bundle": bool(tls.acme_ca_bundle)}


def database_vars(site: Site, tuning: Tuning) -> dict[str, object]:
    """Where Moodle connects: the kit's own PostgreSQL, or the external one of site.yaml."""
    topo = topology_for(site, tuning)
    if site.database.external:
        parts = site.database.external_parts()
        return {"external": True, "host": parts["host"], "port": parts["port"], "name": parts["dbname"],
                "user": parts["user"], "sslmode": parts["sslmode"]}
    return {"external": False, "host": topo.db_endpoint, "port": 5432, "name": "moodle", "user": "moodle",
            "sslmode": tuning.db_sslmode}


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
    _write_if_changed(out / "inventory.ini", inventory(site, tuning))
    return out


def inventory(site: Site, tuning: Tuning) -> str:
    """One group per role. local: this host in every group, driven with the kit's own Python."""
    import sys

    topo = topology_for(site, tuning)
    lines = ["# Rendered by `kit render`."]
    if site.target != "hosts":
        lines += ["[all]", f"{LOCAL_HOST} ansible_connection=local ansible_python_interpreter={sys.executable}"]
    else:
        ssh_args = f"-F {site.site_dir / site.hosts.ssh_config}" if site.hosts.ssh_config else ""
        lines += ["[all:vars]", f"ansible_user={site.hosts.ssh_user}", "ansible_python_interpreter=/usr/bin/python3"]
        if ssh_args:
            lines.append(f"ansible_ssh_common_args={ssh_args}")
        lines += ["[all]"] + [f"{name} ansible_host={address}" for name, address in topo.addresses.items()]
    for role, members in topo.hosts_for.items():
        lines += [f"[{role}]", *members]
    return "\n".join(lines) + "\n"


def _write_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def playbooks_dir() -> Path:
    return ROOT / "playbooks"
