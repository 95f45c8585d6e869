"""What runs on the cluster, read with the Kubernetes API: rollout state of each Deployment,
pods, autoscalers, and Moodle's adhoc queue (read by the target through kit.db).

The reader takes its API objects as arguments, so tests can stand in for a cluster.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from kit.config import Site
from kit.db import queue_line

#: () -> (queue figures, Moodle's release), read through psycopg (kit.db) by the target.
ReadDb = Callable[[], tuple[dict[str, int], str]]


@dataclass
class K8sStatus:
    url: str
    ready: bool
    reason: str
    deployments: list[dict] = field(default_factory=list)
    pods: list[dict] = field(default_factory=list)
    autoscalers: list[dict] = field(default_factory=list)
    queue: dict = field(default_factory=dict)
    moodle_release: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _component(obj: Any) -> str:
    return (obj.metadata.labels or {}).get("app.kubernetes.io/component", "?")


def rollout_state(dep: Any) -> tuple[bool, str]:
    """Like `kubectl rollout status`: done when every replica runs the newest template."""
    spec, st = dep.spec, dep.status
    want = spec.replicas if spec.replicas is not None else 1
    updated, ready, available = st.updated_replicas or 0, st.ready_replicas or 0, st.available_replicas or 0
    total = st.replicas or 0
    if (st.observed_generation or 0) < (dep.metadata.generation or 0):
        return False, "waiting for the controller to see the new spec"
    if updated < want:
        return False, f"{updated}/{want} replicas updated"
    if total > updated:
        return False, f"{total - updated} old replicas terminating"
    if available < updated or ready < want:
        return False, f"{ready}/{want} replicas ready"
    return True, f"{ready}/{want} ready"


def read_status(site: Site, *, apps: Any, core: Any, autoscaling: Any, custom: Any | None,
                read_db: ReadDb | None) -> K8sStatus:
    ns, release = site.kubernetes.namespace, site.kubernetes.release
    selector = f"app.kubernetes.io/instance={release}"
    problems: list[str] = []
    deployments = []
    for dep in apps.list_namespaced_deployment(ns, label_selector=selector).items:
        done, state = rollout_state(dep)
        component = _component(dep)
        deployments.append({"name": dep.metadata.name, "component": component, "desired": dep.spec.replicas,
                            "ready": dep.status.ready_replicas or 0, "rollout": state, "complete": done})
        if not done:
            problems.append(f"{component}: {state}")
    found = {d["component"] for d in deployments}
    for needed in ("web", "cron"):
        if needed not in found:
            problems.append(f"no {needed} Deployment: the site is not up (run `kit up`)")
    pods = []
    for pod in core.list_namespaced_pod(ns, label_selector=selector).items:
        statuses = pod.status.container_statuses or []
        ready = bool(statuses) and all(c.ready for c in statuses)
        component = _component(pod)
        pods.append({"name": pod.metadata.name, "component": component, "phase": pod.status.phase,
                     "ready": ready, "restarts": sum(c.restart_count or 0 for c in statuses),
                     "images": sorted({c.image for c in statuses})})
    autoscalers = []
    for hpa in autoscaling.list_namespaced_horizontal_pod_autoscaler(ns, label_selector=selector).items:
        cpu = None
        for metric in hpa.status.current_metrics or []:
            if metric.type == "Resource" and metric.resource and metric.resource.name == "cpu":
                cpu = metric.resource.current.average_utilization
        autoscalers.append({"name": hpa.metadata.name, "kind": "HPA", "min": hpa.spec.min_replicas,
                            "max": hpa.spec.max_replicas, "current": hpa.status.current_replicas,
                            "desired": hpa.status.desired_replicas, "cpu_percent": cpu})
    if custom is not None:
        try:
            scaled = custom.list_namespaced_custom_object("keda.sh", "v1alpha1", ns, "scaledobjects",
                                                          label_selector=selector)
        except Exception:  # noqa: BLE001 - any API error here means KEDA is not installed: nothing to show
            scaled = {"items": []}
        for item in scaled.get("items", []):
            conditions = {c.get("type"): c.get("status") for c in item.get("status", {}).get("conditions", [])}
            autoscalers.append({"name": item["metadata"]["name"], "kind": "KEDA",
                                "min": item["spec"].get("minReplicaCount"), "max": item["spec"].get("maxReplicaCount"),
                                "current": None, "desired": None, "active": conditions.get("Active") == "True"})
    queue: dict[str, int] = {}
    release_text = ""
    if read_db is not None and deployments:
        from kit.errors import KitError

        try:
            queue, release_text = read_db()
        except KitError as exc:  # the status shows what it can even when the database does not answer
            problems.append(f"database: {exc}")
    ready = not problems
    return K8sStatus(url=site.url or "", ready=ready, reason="serving" if ready else "; ".join(problems),
                     deployments=deployments, pods=pods, autoscalers=autoscalers, queue=queue,
                     moodle_release=release_text)


def format_status(site: Site, st: K8sStatus) -> list[tuple[str, str | None]]:
    """Lines to print, each with a colour (or None)."""
    lines: list[tuple[str, str | None]] = [
        (f"{site.name}: {'READY' if st.ready else 'NOT READY'} - {st.reason}", "green" if st.ready else "red"),
        (f"  url      {st.url}", None),
        (f"  cluster  namespace {site.kubernetes.namespace}, release {site.kubernetes.release}", None),
        (f"  moodle   {st.moodle_release or '?'}", None),
    ]
    if st.queue:
        lines.append((f"  queue    {queue_line(st.queue)}", None))
    for d in st.deployments:
        lines.append((f"  {d['component']:7} {d['name']:32} {d['rollout']}", None))
    for a in st.autoscalers:
        if a["kind"] == "HPA":
            cpu = f", CPU {a['cpu_percent']}%" if a.get("cpu_percent") is not None else ""
            lines.append((f"  hpa     {a['name']:32} {a['current']} of {a['min']}-{a['max']} replicas{cpu}", None))
        else:
            lines.append((f"  keda    {a['name']:32} {a['min']}-{a['max']} workers, "
                          f"{'scaling on the queue' if a.get('active') else 'idle'}", None))
    for p in st.pods:
        mark = "ready" if p["ready"] else "not ready"
        lines.append((f"  pod     {p['name']:40} {p['phase']:9} {mark:9} restarts {p['restarts']}", None))
    return lines
