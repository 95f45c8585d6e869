"""Sizing from a measured load test (`kit plan --from-report`): what this Moodle, with this
journey, costs per request on real hardware, turned into cores, memory, replicas and workers.

The figures come from a `kit loadtest capacity` report (capacity.json): CPU per request of
each tier read from cgroup counters, requests per user per second, the latency at light
load and the host's utilisation. Queueing is modelled, not measured: response time grows
with utilisation like an M/M/c queue (Sakasegawa's approximation, c = CPU cores). Every
figure says whether it was measured or assumed.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from kit.errors import KitError
from kit.sizing import PHP_WORKER_MB as PHP_PEAK_MB  # a busy php-fpm child at its request's peak

SLO_P95_MS = 1000.0
HOSTS_MACHINE_CPUS = 4          # assumed size of a hosts-target web machine (override: --machine-cpus)
K8S_POD_CPUS = 1.0              # assumed CPU request of one web pod
FPM_HEADROOM = 2.0              # children per busy child: bursts, slow requests
MAX_UTILISATION = 0.85          # never plan a tier busier than this, whatever the queueing model allows
USERS_PER_WORKER = 500          # adhoc workers: a page load test does not measure queued work


def _delay(rho: float, cores: int) -> float:
    """Mean response time over service time in an M/M/c queue (Sakasegawa's approximation)."""
    rho = min(rho, 0.9999)
    return 1.0 + rho ** math.sqrt(2 * (cores + 1)) / (cores * (1.0 - rho))


@dataclass
class Measured:
    """One report's figures (all per request unless named otherwise)."""

    source: str
    cpus: int                         # cores of the measured host
    host_ms: float                    # host CPU per request, everything on the host
    site_ms: float                    # CPU of the site's containers
    load_generator_ms: float          # locust's own CPU (it shared the host)
    tier_ms: dict[str, float]         # per container role: web (php-fpm), db, web-nginx, edge, redis...
    rate_per_user: float              # requests per second one user makes at light load
    light_users: int
    light_rho: float                  # host utilisation at that light level
    light_p95_ms: float
    light_avg_ms: float
    php_worker_rss_mb: float | None
    db_xacts: float | None
    measured_users_at_slo: int        # what the capacity search found (for comparison only)
    # The host's CPU split into what each request adds and what runs whatever the load
    # (cron, health checks, the monitoring): at light load the background is a large part of
    # the per-request mean, which would make a request look dearer than it is.
    host_marginal_ms: float = 0.0     # host CPU each further request adds (0: not fitted, use host_ms)
    background_ms_s: float = 0.0      # host CPU per second that does not grow with requests

    @property
    def think_s(self) -> float:
        """Time a user spends between responses (think time plus journey pauses)."""
        return max(1.0 / self.rate_per_user - self.light_avg_ms / 1000.0, 0.0)

    def rho_at_slo(self, cores: int, slo_ms: float = SLO_P95_MS) -> float:
        """Utilisation at which the modelled p95 reaches the SLO on `cores` cores."""
        base = self.light_p95_ms / _delay(self.light_rho, self.cpus)
        if base >= slo_ms:
            return 0.0
        lo, hi = 0.0, MAX_UTILISATION
        for _ in range(60):
            mid = (lo + hi) / 2
            if base * _delay(mid, cores) <= slo_ms:
                lo = mid
            else:
                hi = mid
        return lo

    @property
    def marginal_ms(self) -> float:
        """Host CPU per request once the background is set apart (the mean when it was not fitted)."""
        return self.host_marginal_ms or self.host_ms

    def users_at_slo(self, cores: int, per_request_ms: float, slo_ms: float = SLO_P95_MS) -> int:
        """Concurrent users `cores` cores hold within the SLO when each request costs per_request_ms
        on top of the background."""
        rho = self.rho_at_slo(cores, slo_ms)
        rps = max(rho * cores * 1000.0 - self.background_ms_s, 0.0) / per_request_ms
        avg_s = self.light_avg_ms / 1000.0 * _delay(rho, cores) / _delay(self.light_rho, self.cpus)
        return int(rps * (self.think_s + avg_s))


def load_report(path: str | Path) -> Measured:
    """Read a capacity.json written by `kit loadtest capacity` on a local site."""
    file = Path(path)
    if file.is_dir():
        file = file / "capacity.json"
    if not file.exists():
        raise KitError(f"--from-report {path}: no such report (a capacity.json from `kit loadtest capacity`)")
    try:
        data = json.loads(file.read_text())
        levels = [lv for lv in data["levels"] if lv.get("cost") and lv["requests"] > 0]
    except (ValueError, KeyError, TypeError) as exc:
        raise KitError(f"--from-report {file}: not a capacity report ({exc})") from None
    if not levels:
        raise KitError(f"--from-report {file}: no level has measured costs (measure a local site with "
                       "`kit loadtest capacity`; reports of remote URLs have none)")
    passed = [lv for lv in levels if lv["passed"]] or levels
    light = min(passed, key=lambda lv: lv["users"])
    requests = sum(lv["requests"] for lv in passed)

    def mean(getter) -> float:
        return sum(getter(lv) * lv["requests"] for lv in passed) / requests

    roles = sorted({role for lv in passed for role in lv["cost"]["cpu_ms_per_request"]})
    tier = {role: mean(lambda lv, r=role: lv["cost"]["cpu_ms_per_request"].get(r, 0.0)) for role in roles}
    cpus = int(light["cost"].get("host_cpus") or (data.get("site") or {}).get("cpus") or 1)
    host_ms = mean(lambda lv: lv["cost"]["host_cpu_pct"] * 10.0 * lv["cost"]["seconds"] / lv["requests"])
    rate = light["rps"] / light["users"]
    marginal, background = split_background(
        [(lv["rps"], lv["cost"]["host_cpu_pct"] * 10.0) for lv in passed], host_ms)
    rss = [lv["cost"]["php_worker_rss_mb"] for lv in passed if lv["cost"].get("php_worker_rss_mb")]
    xacts = [lv["cost"]["db_xacts_per_request"] for lv in passed if lv["cost"].get("db_xacts_per_request")]
    return Measured(
        source=str(file), cpus=cpus, host_ms=host_ms, site_ms=tier.pop("site", 0.0),
        load_generator_ms=tier.pop("load_generator", 0.0), tier_ms=tier, rate_per_user=rate,
        light_users=light["users"], light_rho=min(light["cost"]["host_cpu_pct"] / 100.0 / cpus, 0.95),
        light_p95_ms=light["p95_ms"], light_avg_ms=light.get("avg_ms") or light["p50_ms"],
        php_worker_rss_mb=max(rss) if rss else None, db_xacts=sum(xacts) / len(xacts) if xacts else None,
        measured_users_at_slo=int(data.get("capacity_users") or 0),
        host_marginal_ms=marginal, background_ms_s=background)


def split_background(points: list[tuple[float, float]], mean_ms: float) -> tuple[float, float]:
    """(ms per request, ms per second) of a least-squares line through (req/s, host CPU ms/s)
    over the passing levels. Fewer than two distinct rates, or a line that says requests cost
    nothing or the background is negative, gives (mean_ms, 0): no split."""
    if len({rps for rps, _ in points}) < 2:
        return mean_ms, 0.0
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in points)
             / sum((x - mean_x) ** 2 for x, _ in points))
    intercept = mean_y - slope * mean_x
    if slope <= 0 or intercept < 0:
        return mean_ms, 0.0
    return slope, intercept


@dataclass
class TargetPlan:
    target: str
    lines: list[tuple[str, str, str]]     # (what, value, measured | assumed: why)


def plan_for(measured: Measured, users: int, host_cpus: int, host_memory_mb: int,
             machine_cpus: int = HOSTS_MACHINE_CPUS, slo_ms: float = SLO_P95_MS) -> dict:
    """Cores, memory, replicas and workers for `users` on each target, from measured costs."""
    m = measured
    # A real site has no load generator beside it; the host overhead (dockerd, kernel) scales with requests.
    overhead_ms = max(m.host_ms - m.site_ms - m.load_generator_ms, 0.0)
    site_ms = m.site_ms + overhead_ms
    # What one more request costs on a site without a load generator, with the background apart.
    marginal_ms = max(m.marginal_ms - m.load_generator_ms, 1.0)
    web_ms = m.tier_ms.get("web", 0.0) + m.tier_ms.get("web-nginx", 0.0)
    db_ms = m.tier_ms.get("db", 0.0)
    rest_ms = max(site_ms - web_ms - db_ms, 0.0)
    rps = users * m.rate_per_user
    rho = m.rho_at_slo(host_cpus, slo_ms)
    cores_one_host = (rps * marginal_ms + m.background_ms_s) / 1000.0 / max(rho, 0.05)
    if cores_one_host > host_cpus:   # a bigger host queues less at the same utilisation
        rho = m.rho_at_slo(math.ceil(cores_one_host), slo_ms)
        cores_one_host = (rps * marginal_ms + m.background_ms_s) / 1000.0 / max(rho, 0.05)
    busy_children = rps * m.light_avg_ms / 1000.0 * _delay(rho, max(host_cpus, math.ceil(cores_one_host))) \
        / _delay(m.light_rho, m.cpus)
    children = max(4, math.ceil(busy_children * FPM_HEADROOM))
    php_mb = math.ceil(children * PHP_PEAK_MB)
    workers = max(2, math.ceil(users / USERS_PER_WORKER))

    rho_machine = m.rho_at_slo(machine_cpus, slo_ms)
    web_cores = rps * web_ms / 1000.0 / max(rho_machine, 0.05)
    db_cores = rps * db_ms / 1000.0 / max(rho_machine, 0.05)
    rest_cores = rps * rest_ms / 1000.0 / max(rho_machine, 0.05)
    web_machines = max(2, math.ceil(web_cores / machine_cpus))
    pod_rho = m.rho_at_slo(max(1, int(K8S_POD_CPUS)), slo_ms)
    web_pods = max(2, math.ceil(rps * web_ms / 1000.0 / max(pod_rho, 0.05) / K8S_POD_CPUS))

    rate_line = (f"{rps:.1f} req/s", f"measured: {m.rate_per_user:.3f} req/s per user at {m.light_users} users "
                                     f"(think time and journey of that run)")
    return {
        "users": users,
        "request_rate": round(rps, 2),
        "predicted_users_at_slo": m.users_at_slo(m.cpus, m.marginal_ms),
        "measured_users_at_slo": m.measured_users_at_slo,
        "this_host_holds": m.users_at_slo(host_cpus, marginal_ms, slo_ms),
        # What `users` takes on each target (kit.capacity compares them with the plan).
        "needs": {"local_cores": round(cores_one_host, 2), "hosts_web_machines": web_machines,
                  "hosts_machine_cpus": machine_cpus, "k8s_web_pods": web_pods, "k8s_pod_cpus": K8S_POD_CPUS},
        "costs_ms_per_request": {"site": round(site_ms, 1), "web": round(web_ms, 1), "db": round(db_ms, 1),
                                 "other": round(rest_ms, 1), "load_generator": round(m.load_generator_ms, 1)},
        "targets": {
            "local": [
                ("request rate", *rate_line),
                ("CPU cores", f"{cores_one_host:.1f}",
                 f"measured {marginal_ms:.1f} ms CPU per request + {m.background_ms_s / 1000.0:.2f} cores "
                 f"whatever the load; modelled: p95 <= {slo_ms:.0f} ms up to {rho:.0%} busy "
                 f"(this host has {host_cpus}" + ("" if cores_one_host <= host_cpus else
                                                  ": too few, use target hosts or k8s") + ")"),
                ("php-fpm children", str(children),
                 f"modelled: {busy_children:.1f} busy (request rate x measured {m.light_avg_ms:.0f} ms mean "
                 f"response, queueing included) x{FPM_HEADROOM:g} headroom"),
                ("PHP memory", f"{php_mb} MB",
                 f"assumed {PHP_PEAK_MB} MB per busy php-fpm child (a request's peak; "
                 + (f"measured {m.php_worker_rss_mb:.0f} MB resident per idle child, which is not the peak"
                    if m.php_worker_rss_mb else "the report has no memory figure")
                 + f"); this host has {host_memory_mb} MB"),
                ("workers", str(workers), f"assumed: 2, +1 per {USERS_PER_WORKER} users (a page load test does not "
                                          "measure queued work)"),
            ],
            "hosts": [
                ("request rate", *rate_line),
                ("web machines", str(web_machines),
                 f"measured {web_ms:.1f} ms per request in php-fpm + nginx = {web_cores:.1f} cores at "
                 f"{rho_machine:.0%} busy; assumed {machine_cpus}-core machines; at least 2 for rolling updates"),
                ("db machine cores", f"{max(1, math.ceil(db_cores))}", f"measured {db_ms:.1f} ms per request in "
                                                                        "PostgreSQL"),
                ("edge/redis/cron cores", f"{max(1, math.ceil(rest_cores))}",
                 f"measured {rest_ms:.1f} ms per request in the other containers and the host"),
                ("workers", str(workers), "assumed (see local)"),
            ],
            "k8s": [
                ("request rate", *rate_line),
                ("web pods", str(web_pods), f"measured {web_ms:.1f} ms per request; assumed {K8S_POD_CPUS:g} CPU "
                                            f"per pod, p95 <= {slo_ms:.0f} ms up to {pod_rho:.0%} busy"),
                ("PostgreSQL CPU", f"{max(1.0, db_cores):.1f}", f"measured {db_ms:.1f} ms per request"),
                ("workers (minimum)", str(workers), "assumed (see local)"),
            ],
        },
        "measured": {"source": m.source, "host_cpus": m.cpus, "host_ms_per_request": round(m.host_ms, 1),
                     "rate_per_user": round(m.rate_per_user, 4), "light_users": m.light_users,
                     "light_p95_ms": m.light_p95_ms, "light_avg_ms": m.light_avg_ms,
                     "light_utilisation": round(m.light_rho, 3), "php_worker_rss_mb": m.php_worker_rss_mb,
                     "db_xacts_per_request": m.db_xacts, "tiers_ms": {k: round(v, 2) for k, v in m.tier_ms.items()}},
        "assumed": {"queueing": "M/M/c, Sakasegawa's approximation; p95 scales with the mean",
                    "max_utilisation": MAX_UTILISATION,
                    "hosts_machine_cpus": machine_cpus, "k8s_pod_cpus": K8S_POD_CPUS,
                    "fpm_headroom": FPM_HEADROOM, "users_per_worker": USERS_PER_WORKER,
                    "php_peak_mb": PHP_PEAK_MB},
    }
