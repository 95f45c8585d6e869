"""Monitoring: where each exporter runs and what Prometheus scrapes (the one home of that
layout, read by the templates and the playbooks), and the kit's reads of Prometheus and
Alertmanager for `kit status`, `kit alerts` and the load test's summary.

Everything is a Debian 12 package in one image (`kit/monitor`): Prometheus, Alertmanager,
the postgres, redis, nginx, node, process and blackbox exporters, and mtail for the edge's
latency histogram. php-fpm's own status page speaks OpenMetrics, so Prometheus reads it
directly. Nothing listens beyond the site's network and 127.0.0.1.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import requests

from kit.errors import KitError

if TYPE_CHECKING:
    from kit.config import Site
    from kit.sizing import Tuning

#: The port each exporter listens on inside its container (and, on `hosts`, publishes on its
#: machine's address for the Prometheus on the edge machine).
PORTS = {"node": 9100, "postgres": 9187, "redis": 9121, "blackbox": 9115, "mtail": 3903, "process": 9256}
NGINX_EXPORTER_PORT = 9113          # the edge's; the replicas' follow it (9114, 9115 is blackbox: skip)
#: Every nginx (edge and replicas) answers stub_status, and the replicas php-fpm's status, on
#: this port of the site's network only: it is never published through the edge.
STATUS_PORT = 8081
#: Where the monitoring containers find things (mounts of the rendered files and volumes).
CONFIG_DIR = "/etc/kit/monitor"
SECRETS_DIR = "/run/kit/monitor-secrets"
DISK_DIR = "/mnt/kit"               # volumes node-exporter measures: /mnt/kit/<volume>
EDGE_LOG = f"{DISK_DIR}/logs/edge-metrics.log"
#: Stands for the webhook URL in the rendered alertmanager.yml (Alertmanager 0.25 reads the URL
#: from its config only); the monitoring role writes the real one into the owner-only copy.
WEBHOOK_PLACEHOLDER = "kit-secret:alert_webhook_url"
#: The user every monitoring process runs as (fixed in the image, so secret files can be 0400).
MONITOR_UID = "990"
#: Latency buckets (s) of the edge histogram; the SLO's own limit is added, so the alert and
#: `kit status` interpolate no further than one bucket from it.
BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0, 1.25, 1.5,
           2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0)


@dataclass(frozen=True)
class Exporter:
    """One exporter process: what `exporters.sh` starts and what Prometheus scrapes."""

    kind: str            # node, postgres, redis, blackbox, mtail, nginx
    port: int
    arg: str = ""        # postgres: DSN without login; redis: URI; nginx: stub_status URL
    instance: str = ""   # the label Prometheus gives its series (the nginx's container)

    def argv(self) -> str:
        return f"{self.kind}={self.port}={self.arg}"


@dataclass(frozen=True)
class Layout:
    """Which machine runs which exporter, and what Prometheus (on the edge machine) scrapes."""

    exporters: dict[str, list[Exporter]]            # inventory host -> its exporters
    volumes: dict[str, list[dict[str, str]]]        # inventory host -> mounts node-exporter measures
    jobs: list[dict[str, Any]] = field(default_factory=list)   # prometheus.yml scrape_configs


def buckets(site: Site) -> list[float]:
    return sorted({*BUCKETS, site.slo.p95_ms / 1000})


def probe_target(site: Site, edge: str) -> dict[str, str]:
    """What the blackbox exporter asks for: the login page through the edge, with the public
    host name (Moodle redirects any other), over HTTPS where the edge ends TLS."""
    public = urlparse(site.url or "")
    host, name = public.netloc or "localhost", public.hostname or "localhost"
    if site.tls.at_edge:
        return {"url": f"https://{edge}:443/login/index.php", "host": host, "server_name": name,
                "module": "login_tls"}
    return {"url": f"http://{edge}:80/login/index.php", "host": host, "server_name": name, "module": "login"}


def layout(site: Site, tuning: Tuning) -> Layout:
    from kit.render import names_for, topology_for

    names = names_for(site, tuning)
    topo = topology_for(site, tuning)
    hosts = site.target == "hosts"
    edge_host = topo.edge_host

    def address(host: str, container: str) -> str:
        """How Prometheus (on the edge machine) reaches an exporter."""
        return topo.addresses[host] if hosts else container

    db = topo.hosts_for["db"]
    dbv = _database(site, tuning)
    exporters: dict[str, list[Exporter]] = {}
    volumes: dict[str, list[dict[str, str]]] = {}
    all_hosts = sorted({h for members in topo.hosts_for.values() for h in members})
    for host in all_hosts:
        mine = [Exporter("node", PORTS["node"])]
        mounts = []
        if host == edge_host:
            mine += [Exporter("postgres", PORTS["postgres"], dbv),
                     Exporter("redis", PORTS["redis"], _redis_uri(site, tuning)),
                     Exporter("blackbox", PORTS["blackbox"]),
                     Exporter("mtail", PORTS["mtail"]),
                     Exporter("nginx", NGINX_EXPORTER_PORT, f"http://{names.edge}:{STATUS_PORT}/stub_status",
                              names.edge)]
            mounts += [_measured("logs", "volume", names.volume("edgelogs")),
                       _measured("metrics", "volume", names.volume("metrics"))]
        port = NGINX_EXPORTER_PORT + 1
        for replica, where in topo.replicas.items():
            if where["host"] != host:
                continue
            if port in PORTS.values():
                port += 1
            mine.append(Exporter("nginx", port, f"http://{replica}-nginx:{STATUS_PORT}/stub_status", replica))
            port += 1
        if host in topo.hosts_for["web"] or host in topo.hosts_for["cron"]:
            mounts.append(_measured("moodledata", topo.moodledata["type"], topo.moodledata["source"]))
        if host in db and not site.database.external:
            mounts.append(_measured("pgdata", "volume", names.volume("pgdata")))
        exporters[host] = mine
        volumes[host] = mounts

    def static(job: str, targets: list[tuple[str, dict[str, str]]], **extra: Any) -> dict[str, Any]:
        return {"job_name": job, **extra,
                "static_configs": [{"targets": [t], "labels": labels} for t, labels in targets]}

    jobs: list[dict[str, Any]] = [
        static("prometheus", [("localhost:9090", {})]),
        static("alertmanager", [(f"{names.prefix}-alertmanager:9093", {})]),
    ]
    for kind in ("node", "postgres", "redis", "mtail"):
        targets = [(f"{address(h, names.exporters)}:{e.port}", {"machine": h})
                   for h, found in exporters.items() for e in found if e.kind == kind]
        jobs.append(static(kind, targets))
    jobs.append(static("process", [(f"{address(h, names.procs)}:{PORTS['process']}", {"machine": h})
                                   for h in all_hosts]))
    jobs.append(static("nginx", [(f"{address(h, names.exporters)}:{e.port}", {"machine": h, "instance": e.instance})
                                 for h, found in exporters.items() for e in found if e.kind == "nginx"]))
    fpm = []
    for replica, where in topo.replicas.items():
        if hosts:
            fpm.append((f"{topo.addresses[where['host']]}:{site.hosts.web_port + 1}",
                        {"machine": where["host"], "instance": replica}))
        else:
            fpm.append((f"{replica}-nginx:{STATUS_PORT}", {"machine": where["host"], "instance": replica}))
    jobs.append(static("fpm", fpm, metrics_path="/fpm-status", params={"openmetrics": [""]}))
    probe = probe_target(site, names.edge)
    jobs.append({
        "job_name": "login", "metrics_path": "/probe", "params": {"module": [probe["module"]]},
        "static_configs": [{"targets": [probe["url"]], "labels": {"machine": edge_host}}],
        "relabel_configs": [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"source_labels": ["__param_target"], "target_label": "url"},
            {"target_label": "__address__", "replacement": f"{address(edge_host, names.exporters)}:{PORTS['blackbox']}"},
        ],
    })
    return Layout(exporters=exporters, volumes=volumes, jobs=jobs)


def _measured(what: str, kind: str, source: str) -> dict[str, str]:
    """A mount node-exporter reports the disk of, as mountpoint DISK_DIR/<what>."""
    return {"type": kind, "source": source, "target": f"{DISK_DIR}/{what}"}


def _database(site: Site, tuning: Tuning) -> str:
    """host:port/dbname?sslmode=... for the postgres exporter (its login comes from files)."""
    from kit.render import database_vars

    db = database_vars(site, tuning)
    extra = "&sslrootcert=/run/kit/tls/ca.crt" if tuning.network_tls and not db["external"] else ""
    # The exporter's driver (lib/pq) has no prefer or allow: an external server is asked for
    # TLS, the kit's own on the site's network is not (libpq's prefer would fall back alike).
    mode = str(db["sslmode"])
    if mode in ("prefer", "allow"):
        mode = "require" if db["external"] and mode == "prefer" else "disable"
    return f"{db['host']}:{db['port']}/{db['name']}?sslmode={mode}{extra}"


def _redis_uri(site: Site, tuning: Tuning) -> str:
    from kit.render import names_for, topology_for

    topo = topology_for(site, tuning)
    if topo.redis_tunnel:
        return f"rediss://{topo.redis_tunnel}"
    return f"redis://{names_for(site, tuning).redis}:6379"


def free_ports(tries: int = 20) -> tuple[int, int]:
    """Prometheus's and Alertmanager's loopback ports for a new site: the model's defaults, or
    the first pair 10 apart that no other site or program holds."""
    import socket

    from kit.config import MonitoringSettings

    first = MonitoringSettings.model_fields["prometheus_port"].default
    second = MonitoringSettings.model_fields["alertmanager_port"].default

    def free(port: int) -> bool:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
            return True

    for i in range(tries):
        pair = (int(first) + 10 * i, int(second) + 10 * i)
        if free(pair[0]) and free(pair[1]):
            return pair
    return int(first), int(second)     # `kit up`'s port check names what holds them


def alert_for(site: Site, default: str) -> str:
    """An alert's `for`: its own, or the one test duration of site.yaml."""
    given = site.monitoring.alert_for_s
    return default if given is None else f"{given}s"


# --- reading Prometheus and Alertmanager ---------------------------------------------------

#: What `kit status` shows, as PromQL (each a single number).
STATUS_QUERIES = {
    "req_per_s": "sum(rate(kit_edge_requests_total[1m]))",
    # Answers that are not redirects: pages as a person counts them (a login: POST, 303, GET).
    "pages_per_s": "sum(rate(kit_edge_requests_total{status!~\"3..\"}[1m]))",
    "p95_ms": "1000 * histogram_quantile(0.95, sum by (le) (rate(kit_edge_request_seconds_bucket[1m])))",
    "errors_5xx_percent": "100 * (sum(rate(kit_edge_requests_total{status=~\"5..\"}[5m])) or vector(0))"
                          " / sum(rate(kit_edge_requests_total[5m]))",
    "db_connections": "sum(pg_stat_activity_count)",
    "db_connections_max": "max(pg_settings_max_connections)",
    "queue_oldest_s": "max(kit_adhoc_oldest_age_s)",
    "cron_age_s": "time() - max(kit_moodle_cron_last_start_s)",
    "alerts_firing": "count(ALERTS{alertstate=\"firing\"}) or vector(0)",
}


class Monitor:
    """HTTP reads of one site's Prometheus and Alertmanager (on 127.0.0.1)."""

    def __init__(self, prometheus: str, alertmanager: str, timeout_s: float = 5) -> None:
        self.prometheus = prometheus.rstrip("/")
        self.alertmanager = alertmanager.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, url: str, params: dict[str, str] | None = None) -> Any:
        try:
            resp = requests.get(url, params=params, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise KitError(f"monitoring: {urlparse(url).netloc} does not answer ({type(exc).__name__}); "
                           "is the site up with monitoring enabled? (`kit status`, then `kit up`)") from None
        if resp.status_code != 200:
            raise KitError(f"monitoring: {url} answered HTTP {resp.status_code}: {resp.text[:200]}")
        return resp.json()

    def query(self, promql: str, at: float | None = None) -> float | None:
        """One number (the first series), or None when there is no data yet."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get(f"{self.prometheus}/api/v1/query", params)["data"]
        result = data.get("result") or []
        if data.get("resultType") == "scalar":
            value = float(result[1])
        elif not result:
            return None
        else:
            value = float(result[0]["value"][1])
        return None if value != value or value in (float("inf"), float("-inf")) else value   # NaN: no traffic

    def figures(self) -> dict[str, float | None]:
        return {name: self.query(q) for name, q in STATUS_QUERIES.items()}

    def rules_alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts as Prometheus evaluates them."""
        return list(self._get(f"{self.prometheus}/api/v1/alerts")["data"]["alerts"])

    def delivered(self) -> list[dict[str, Any]]:
        """Active alerts as Alertmanager holds them (what its receivers were sent)."""
        return list(self._get(f"{self.alertmanager}/api/v2/alerts", {"active": "true", "silenced": "false"}))

    def targets_down(self) -> list[str]:
        data = self._get(f"{self.prometheus}/api/v1/targets", {"state": "active"})["data"]
        return [f"{t['labels'].get('job')} {t['labels'].get('instance')}"
                for t in data["activeTargets"] if t.get("health") == "down"]

    def window(self, start: float, end: float) -> dict[str, float | None]:
        """Server-side figures over a finished run (the load test's summary)."""
        span = max(60, int(end - start))
        at = end
        return {
            "p95_ms": self.query("1000 * histogram_quantile(0.95, sum by (le) "
                                 f"(increase(kit_edge_request_seconds_bucket[{span}s])))", at),
            "requests": self.query(f"sum(increase(kit_edge_requests_total[{span}s]))", at),
            "pages": self.query(f"sum(increase(kit_edge_requests_total{{status!~\"3..\"}}[{span}s]))", at),
            "errors_5xx": self.query(f"sum(increase(kit_edge_requests_total{{status=~\"5..\"}}[{span}s])) "
                                     "or vector(0)", at),
        }


@dataclass
class Alert:
    name: str
    state: str               # firing, pending
    since: str
    summary: str
    runbook: str
    first_command: str
    labels: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def alerts(monitor: Monitor) -> list[Alert]:
    """Firing alerts as Alertmanager holds them, then the pending ones from Prometheus."""
    def key(labels: dict[str, str]) -> str:   # Alertmanager's copy carries the external label `site`
        return json.dumps({k: v for k, v in labels.items() if k != "site"}, sort_keys=True)

    found: list[Alert] = []
    seen = set()
    for item in monitor.delivered():
        labels, notes = item.get("labels", {}), item.get("annotations", {})
        if key(labels) in seen:
            continue
        seen.add(key(labels))
        found.append(Alert(labels.get("alertname", "?"), "firing", item.get("startsAt", ""), notes.get("summary", ""),
                           notes.get("runbook", ""), notes.get("first_command", ""), labels))
    for item in monitor.rules_alerts():
        labels, notes = item.get("labels", {}), item.get("annotations", {})
        state = item.get("state", "")
        if key(labels) in seen or state not in ("pending", "firing"):
            continue
        found.append(Alert(labels.get("alertname", "?"), state, item.get("activeAt", ""), notes.get("summary", ""),
                           notes.get("runbook", ""), notes.get("first_command", ""), labels))
    order = {"firing": 0, "pending": 1}
    return sorted(found, key=lambda a: (order.get(a.state, 2), a.name))


def render_prometheus(site: Site, tuning: Tuning) -> str:
    """prometheus.yml: the scrape jobs of `layout`, the rules file, the site's Alertmanager."""
    import yaml

    from kit.render import names_for

    names = names_for(site, tuning)
    interval = f"{site.monitoring.scrape_interval_s}s"
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   "external_labels": {"site": site.name}},
        "rule_files": [f"{CONFIG_DIR}/alerts.yml"],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"{names.prefix}-alertmanager:9093"]}]}]},
        "scrape_configs": layout(site, tuning).jobs,
    }
    return (f"# Rendered by the kit for site \"{site.name}\" (kit/monitoring.py): what Prometheus scrapes.\n"
            + yaml.safe_dump(config, sort_keys=False))


def _fmt(value: float | None, unit: str = "", digits: int = 0) -> str:
    return "no data" if value is None else f"{value:.{digits}f}{unit}"


def status_lines(figures: dict[str, float | None], site: Site) -> list[tuple[str, str | None]]:
    """`kit status`'s monitoring lines (red where an alert's threshold is crossed)."""
    f = figures
    slo = site.slo
    p95 = f["p95_ms"]
    errors = f["errors_5xx_percent"]
    conns, limit = f["db_connections"], f["db_connections_max"]
    queue, cron = f["queue_oldest_s"], f["cron_age_s"]
    firing = int(f["alerts_firing"] or 0)
    hot = ((p95 is not None and p95 > slo.p95_ms) or (errors is not None and errors > slo.errors_percent))
    conn_text = "no data" if conns is None else (f"{conns:.0f}" + (f" of {limit:.0f}" if limit else ""))
    return [
        (f"  traffic  {_fmt(f['req_per_s'], ' req/s', 1)} ({_fmt(f['pages_per_s'], '', 1)} not redirects), "
         f"p95 {_fmt(p95, ' ms')} (SLO {slo.p95_ms} ms), "
         f"5xx {_fmt(errors, ' %', 2)} over 5 min", "red" if hot else None),
        (f"  signals  DB connections {conn_text}, oldest overdue task {_fmt(queue, ' s')}, "
         f"cron started {_fmt(cron, ' s')} ago", None),
        (f"  alerts   {firing} firing" + (": run `kit alerts`" if firing else ""), "red" if firing else None),
    ]
