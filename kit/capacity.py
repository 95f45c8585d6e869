"""How many concurrent users the planned site holds at its SLO, and what more would take.

`kit plan` and `kit up` say it for every site. The figures come from a measured report when
one is given (`kit plan --from-report`); otherwise from the kit's reference report
(kit/data/reference-capacity.json, whose `provenance` says which run), marked assumed: a
course with more activities, or other hardware, costs differently per request.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from kit import measured
from kit.config import Site
from kit.sizing import Tuning

#: A `kit loadtest capacity` report of the tuned default on S data (see docs/performance.md).
REFERENCE = Path(__file__).parent / "data" / "reference-capacity.json"
MAX_USERS = 1_000_000


@dataclass
class Capacity:
    target: str
    planned_users: int
    holds_users: int              # at the SLO, as planned (this host / these machines / these pods)
    slo_p95_ms: int
    source: str                   # "measured: <report>" or "assumed: ..."
    needs: dict[str, float]       # what planned_users takes (kit.measured.plan_for)

    @property
    def short(self) -> bool:
        return self.planned_users > self.holds_users

    def what_it_takes(self) -> str:
        n = self.needs
        return (f"~{n['local_cores']:.0f} cores on one host (target local), or {n['hosts_web_machines']:.0f} web "
                f"machines of {n['hosts_machine_cpus']:.0f} cores (target hosts), or {n['k8s_web_pods']:.0f} web "
                f"pods of {n['k8s_pod_cpus']:g} CPU (target k8s)")

    def line(self) -> str:
        held = f"holds about {self.holds_users} concurrent users at p95 <= {self.slo_p95_ms} ms ({self.source})"
        if not self.short:
            return f"{held}; planned for {self.planned_users}"
        return (f"planned for {self.planned_users} users, but the site {held}: {self.planned_users} would take "
                f"{self.what_it_takes()}")

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "short": self.short}


def source_of(report: str | Path | None) -> tuple[measured.Measured, str]:
    if report:
        figures = measured.load_report(report)
        return figures, f"measured: {figures.source}"
    figures = measured.load_report(REFERENCE)
    seeded = json.loads(REFERENCE.read_text()).get("data") or {}
    course = f"course of size {seeded.get('size') or 'unknown'}" + (
        f" of {seeded['enrolled']} students" if seeded.get("enrolled") else "")
    return figures, (f"assumed: the kit's reference run, a {course} on {figures.cpus} cores; measure yours "
                     "with `kit loadtest capacity`")


def estimate(site: Site, tuning: Tuning, report: str | Path | None = None,
             machine_cpus: int = measured.HOSTS_MACHINE_CPUS) -> Capacity:
    """The planned site's capacity on its target, and what site.yaml's users would take."""
    figures, source = source_of(report)
    slo_ms = float(site.slo.p95_ms)
    host = tuning.host

    def needs(users: int) -> dict[str, float]:
        return measured.plan_for(figures, users, host.cpus, host.memory_mb, machine_cpus, slo_ms)["needs"]

    planned = measured.plan_for(figures, site.users, host.cpus, host.memory_mb, machine_cpus, slo_ms)
    if site.target == "hosts":
        machines = sum(1 for m in site.hosts.machines if "web" in m.roles)
        holds = _largest(lambda users: needs(users)["hosts_web_machines"] <= machines)
    elif site.target == "k8s":
        holds = _largest(lambda users: needs(users)["k8s_web_pods"] <= tuning.web_replicas)
    else:
        holds = planned["this_host_holds"]
    return Capacity(target=site.target, planned_users=site.users, holds_users=holds, slo_p95_ms=site.slo.p95_ms,
                    source=source, needs=planned["needs"])


def _largest(fits) -> int:
    """The most users for which fits(users) holds (it only turns false as users grow)."""
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while fits(hi):
        if hi >= MAX_USERS:
            return MAX_USERS
        lo, hi = hi, min(hi * 2, MAX_USERS)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
