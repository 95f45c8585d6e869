"""The `k8s` target's driver: `helm` through kit.runner (shown, streamed), the Kubernetes
Python client for what Helm does not do (the Secret, prerequisites, status, backups).

Secrets never reach Helm: the driver writes them to a Secret with the API, and the values
file (build/<site>/k8s/values.yaml) only names it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
import yaml

from kit import images as kit_images
from kit.config import Site, ensure_secrets
from kit.errors import KitError
from kit.k8s import chart as kchart
from kit.k8s.status import VERSION_SQL, K8sStatus, format_status, psql_argv, read_status
from kit.k8s.values import chart_dir, chart_values, config_texts, secret_data, secret_name
from kit.runner import capture, run
from kit.sizing import Tuning, plan

HELM_TIMEOUT = "20m"
READY_TIMEOUT_S = 600
BACKUP_MAX_AGE = timedelta(hours=24)
CRDS = {
    "cloudnativepg": ("clusters.postgresql.cnpg.io", "the CloudNativePG operator "
                      "(https://cloudnative-pg.io/documentation/current/installation_upgrade/), or use "
                      "kubernetes.database: external"),
    "pgbouncer": ("poolers.postgresql.cnpg.io", "CloudNativePG 1.17 or later (Pooler)"),
    "keda": ("scaledobjects.keda.sh", "KEDA (https://keda.sh/docs/deploy/), or set kubernetes.keda: false"),
    "cert-manager": ("certificates.cert-manager.io", "cert-manager (https://cert-manager.io/docs/installation/), "
                     "or remove kubernetes.cert_manager_issuer"),
}


# --- render ---------------------------------------------------------------------------------

def moodle_version_of(site: Site, *, required: bool = False) -> str:
    """Moodle's $version in the code the images are built from ("" when it cannot be read)."""
    source = kit_images.MoodleSource(site)
    try:
        return kit_images.moodle_version(source.path())
    except KitError:
        if required:
            raise
        return ""
    finally:
        source.cleanup()


def render(site: Site, tuning: Tuning, images: kit_images.ImageSet, moodle_version: str = "") -> tuple[Path, str]:
    """Write build/<site>/k8s/: values.yaml, the rendered manifests, postgresql.conf.
    Returns the folder and a note on the manifests (rendered, or why not)."""
    out = site.build_dir / "k8s"
    out.mkdir(parents=True, exist_ok=True)
    values = chart_values(site, tuning, images, moodle_version)
    header = ("# Rendered by `kit render` from site.yaml and `kit plan`: the values `kit up` passes to Helm.\n"
              f"# No secret is here: the pods read Secret {secret_name(site)} (created by `kit up`).\n")
    _write(out / "values.yaml", header + yaml.dump(values, Dumper=_BlockDumper, sort_keys=False, width=120))
    pg_note = ("# Apply to the managed PostgreSQL (the chart cannot), except ssl: keep the provider's TLS.\n"
               if site.kubernetes.database == "external" else
               "# For reference: the chart passes these parameters to the CloudNativePG Cluster.\n")
    _write(out / "postgresql.conf", pg_note + config_texts(site, tuning)["postgresql.conf"])
    try:
        manifests = kchart.template(values, release=site.kubernetes.release, namespace=site.kubernetes.namespace)
    except KitError as exc:
        return out, f"manifests not rendered: {exc}"
    _write(out / "manifests.yaml", "# Rendered by `kit render` (helm template, first install).\n" + manifests)
    return out, f"manifests.yaml rendered by {'the helm CLI' if kchart.engine() == 'helm' else 'helm-python-sdk'}"


class _BlockDumper(yaml.SafeDumper):
    """Multi-line texts (config.php, nginx.conf...) as readable YAML blocks."""


_BlockDumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def _write(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# --- helm and the cluster ---------------------------------------------------------------------

def require_helm() -> int:
    """The helm CLI's major version; a one-line error when it is missing."""
    if shutil.which("helm") is None:
        raise KitError("helm is not installed: install Helm 3.13 or later (https://helm.sh/docs/intro/install/), "
                       "then rerun; nothing was changed")
    out = capture(["helm", "version", "--short"], check=False).stdout.strip()
    match = re.match(r"v(\d+)\.", out)
    return int(match.group(1)) if match else 3


def helm_base(site: Site) -> list[str]:
    cmd = ["helm", "--namespace", site.kubernetes.namespace]
    if site.kubernetes.context:
        cmd += ["--kube-context", site.kubernetes.context]
    return cmd


def upgrade_command(site: Site, values_file: Path, *, install: bool, helm_major: int = 3,
                    dry_run: bool = False) -> list[str]:
    """helm upgrade [--install] with rollback on failure and a wait for ready pods."""
    cmd = helm_base(site) + ["upgrade"]
    if install:
        cmd.append("--install")
    cmd += [site.kubernetes.release, str(chart_dir()), "--values", str(values_file),
            "--rollback-on-failure" if helm_major >= 4 else "--atomic", "--wait", "--timeout", HELM_TIMEOUT]
    if dry_run:
        cmd.append("--dry-run=server")
    return cmd


@dataclass
class Cluster:
    """The API objects the driver and the status reader use."""

    core: Any
    apps: Any
    autoscaling: Any
    custom: Any
    apiext: Any
    api_client: Any = None

    def exec_in_pod(self, namespace: str):
        from kubernetes.stream import stream

        def run_in(pod: str, container: str, argv: list[str]) -> str:
            return stream(self.core.connect_get_namespaced_pod_exec, pod, namespace, container=container,
                          command=argv, stderr=False, stdin=False, stdout=True, tty=False, _request_timeout=30)
        return run_in


def connect(site: Site) -> Cluster:
    """The cluster of the kubeconfig (or the pod's service account), answering; else one line."""
    try:
        from kubernetes import client
        from kubernetes import config as kconfig
    except ImportError:
        raise KitError("the kubernetes Python client is missing: `pip install kubernetes`") from None
    context = site.kubernetes.context
    # Read KUBECONFIG now: the client library reads it once, when it is imported.
    config_file = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        api_client = kconfig.new_client_from_config(config_file=config_file, context=context)
    except (kconfig.ConfigException, FileNotFoundError, TypeError) as exc:
        try:
            kconfig.load_incluster_config()
            api_client = client.ApiClient()
        except kconfig.ConfigException:
            where = f"context {context!r}" if context else "a current context"
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise KitError(f"no Kubernetes cluster configured ({detail}): point KUBECONFIG or ~/.kube/config "
                           f"at a cluster with {where} (kubernetes.context in site.yaml)") from None
    try:
        client.VersionApi(api_client).get_code(_request_timeout=10)
    except Exception as exc:  # urllib3/TLS/HTTP errors all mean the same to the user
        raise KitError(f"the Kubernetes cluster at {api_client.configuration.host} does not answer "
                       f"({type(exc).__name__}): check the kubeconfig context and the network; nothing was changed") \
            from None
    return Cluster(core=client.CoreV1Api(api_client), apps=client.AppsV1Api(api_client),
                   autoscaling=client.AutoscalingV2Api(api_client), custom=client.CustomObjectsApi(api_client),
                   apiext=client.ApiextensionsV1Api(api_client), api_client=api_client)


def _status_code(exc: Exception) -> int | None:
    return getattr(exc, "status", None)


def check_prerequisites(cluster: Cluster, site: Site) -> None:
    """Operators the chart's objects need: a one-line error naming what to install."""
    k8s = site.kubernetes
    wanted = []
    if k8s.database == "cloudnativepg":
        wanted.append("cloudnativepg")
    if k8s.pgbouncer:
        wanted.append("pgbouncer")
    if k8s.keda:
        wanted.append("keda")
    if k8s.cert_manager_issuer:
        wanted.append("cert-manager")
    for key in wanted:
        crd, what = CRDS[key]
        try:
            cluster.apiext.read_custom_resource_definition(crd)
        except Exception as exc:
            if _status_code(exc) == 404:
                raise KitError(f"the cluster has no {crd}: install {what}; nothing was changed") from None
            raise KitError(f"cannot read CRD {crd}: {type(exc).__name__} (permissions?)") from None


def apply_secret(cluster: Cluster, site: Site, secrets: dict[str, str]) -> None:
    """Create the namespace if needed and write the Secret the pods read (never a Helm value)."""
    from kubernetes import client

    ns = site.kubernetes.namespace
    try:
        cluster.core.read_namespace(ns)
    except Exception as exc:
        if _status_code(exc) != 404:
            raise
        cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        click.echo(f"    created namespace {ns}")
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=secret_name(site), namespace=ns, labels={
            "app.kubernetes.io/managed-by": "kit", "app.kubernetes.io/instance": site.kubernetes.release}),
        type="kubernetes.io/basic-auth", string_data=secret_data(site, secrets))
    try:
        cluster.core.create_namespaced_secret(ns, body)
        click.echo(f"    created Secret {secret_name(site)}")
    except Exception as exc:
        if _status_code(exc) != 409:
            raise
        cluster.core.replace_namespaced_secret(secret_name(site), ns, body)
        click.echo(f"    Secret {secret_name(site)} up to date")


def status(site: Site, cluster: Cluster | None = None, *, with_queue: bool = True) -> K8sStatus:
    cluster = cluster or connect(site)
    return read_status(site, apps=cluster.apps, core=cluster.core, autoscaling=cluster.autoscaling,
                       custom=cluster.custom,
                       exec_in_pod=cluster.exec_in_pod(site.kubernetes.namespace) if with_queue else None)


def print_status(site: Site, as_json: bool) -> bool:
    st = status(site)
    if as_json:
        click.echo(json.dumps(st.as_dict(), indent=2))
    else:
        for number, (line, colour) in enumerate(format_status(site, st)):
            click.secho(line, fg=colour, bold=number == 0)
    return st.ready


def wait_ready(site: Site, cluster: Cluster, timeout_s: float = READY_TIMEOUT_S) -> tuple[bool, str]:
    """Every Deployment rolled out and ready (web readiness is a rendered Moodle page)."""
    deadline = time.monotonic() + timeout_s
    st = status(site, cluster, with_queue=False)
    while not st.ready and time.monotonic() < deadline:
        time.sleep(5)
        st = status(site, cluster, with_queue=False)
    return st.ready, st.reason


# --- commands ------------------------------------------------------------------------------------

def _prepare(site: Site, *, version_required: bool = False) -> tuple[Tuning, Path, str]:
    tuning = plan(site)
    version = moodle_version_of(site, required=version_required)
    out, note = render(site, tuning, kit_images.image_set(site), version)
    click.echo(f"    rendered {out} ({note})")
    return tuning, out / "values.yaml", version


def up(site: Site, *, dry_run: bool = False) -> None:
    """helm upgrade --install --atomic --wait, then wait for a healthy site."""
    started = time.monotonic()
    click.secho("==> Render", bold=True)
    major = require_helm()
    _, values_file, _ = _prepare(site)
    click.secho("==> Cluster", bold=True)
    cluster = connect(site)
    check_prerequisites(cluster, site)
    if dry_run:
        run(upgrade_command(site, values_file, install=True, helm_major=major, dry_run=True))
        click.secho("dry run: Helm rendered and the API server accepted every object; nothing was changed",
                    fg="green")
        return
    apply_secret(cluster, site, ensure_secrets(site))
    click.secho("==> Helm", bold=True)
    run(upgrade_command(site, values_file, install=True, helm_major=major))
    _finish(site, cluster, started, "Site is up")


def _finish(site: Site, cluster: Cluster, started: float, what: str) -> None:
    click.secho("==> Health", bold=True)
    ready, msg = wait_ready(site, cluster)
    if not ready:
        raise KitError(f"Helm finished, but the site is not healthy: {msg} (see `kit status`)")
    click.secho(f"{what} ({time.monotonic() - started:.0f}s).", fg="green")
    click.echo(f"  URL:            {site.url}")
    click.echo(f"  Admin user:     {site.moodle.admin_user}")
    click.echo(f"  Admin password: stored in {site.secrets_file} (key admin_password)")


def helm_history(site: Site) -> list[dict]:
    result = capture(helm_base(site) + ["history", site.kubernetes.release, "--output", "json"], check=False)
    if result.returncode != 0:
        return []
    return json.loads(result.stdout or "[]")


def helm_values(site: Site, revision: int) -> dict:
    out = capture(helm_base(site) + ["get", "values", site.kubernetes.release, "--revision", str(revision),
                                     "--output", "json"]).stdout
    return json.loads(out or "{}") or {}


def _version_of(values: dict) -> str:
    return str((values.get("moodle") or {}).get("version") or "")


def deployed_version(site: Site, cluster: Cluster, history: list[dict]) -> str:
    """Moodle's version in the database (from the cron pod), else the one the release recorded."""
    st = status(site, cluster, with_queue=False)
    cron = [p["name"] for p in st.pods if p["component"] == "cron" and p["ready"]]
    if cron:
        try:
            return cluster.exec_in_pod(site.kubernetes.namespace)(cron[0], "cron", psql_argv(VERSION_SQL)).strip()
        except Exception:
            pass
    current = [h for h in history if h.get("status") == "deployed"]
    return _version_of(helm_values(site, current[-1]["revision"])) if current else ""


def upgrade(site: Site, *, backup_now: bool) -> None:
    """helm upgrade (no install): rolling for the same Moodle version; the pre-upgrade Job
    runs Moodle's upgrade once for a new one, after a backup."""
    started = time.monotonic()
    major = require_helm()
    history = helm_history(site)
    if not any(h.get("status") == "deployed" for h in history):
        raise KitError(f"release {site.kubernetes.release} is not deployed in namespace "
                       f"{site.kubernetes.namespace}: run `kit up` first")
    cluster = connect(site)
    click.secho("==> Render", bold=True)
    _, values_file, new_version = _prepare(site, version_required=True)
    old_version = deployed_version(site, cluster, history)
    if old_version and new_version and float(new_version) < float(old_version):
        raise KitError(f"the new code is Moodle {new_version}, older than the database ({old_version}): "
                       "Moodle cannot downgrade; restore a backup instead")
    version_upgrade = bool(old_version) and float(new_version) > float(old_version)
    if version_upgrade:
        click.secho(f"==> Moodle version upgrade: {old_version} -> {new_version}", bold=True)
        require_backup(site, cluster, backup_now)
    check_prerequisites(cluster, site)
    apply_secret(cluster, site, ensure_secrets(site))
    click.secho("==> Helm", bold=True)
    run(upgrade_command(site, values_file, install=False, helm_major=major))
    if version_upgrade:
        seconds = maintenance_seconds(site, cluster)
        if seconds is not None:
            click.secho(f"users saw the maintenance page for {seconds}s", bold=True)
    _finish(site, cluster, started, "Release is live")


def maintenance_seconds(site: Site, cluster: Cluster) -> int | None:
    """The upgrade Job prints how long maintenance lasted; read it from its pod's log."""
    selector = f"app.kubernetes.io/instance={site.kubernetes.release},app.kubernetes.io/component=upgrade"
    pods = cluster.core.list_namespaced_pod(site.kubernetes.namespace, label_selector=selector).items
    if not pods:
        return None
    newest = max(pods, key=lambda p: p.metadata.creation_timestamp or datetime.min.replace(tzinfo=timezone.utc))
    log = cluster.core.read_namespaced_pod_log(newest.metadata.name, site.kubernetes.namespace)
    match = re.search(r"maintenance lasted (\d+)s", log or "")
    return int(match.group(1)) if match else None


def _cnpg_cluster_name(site: Site, cluster: Cluster) -> str:
    selector = f"app.kubernetes.io/instance={site.kubernetes.release},app.kubernetes.io/component=database"
    found = cluster.custom.list_namespaced_custom_object("postgresql.cnpg.io", "v1", site.kubernetes.namespace,
                                                         "clusters", label_selector=selector)
    items = found.get("items", [])
    if not items:
        raise KitError("no CloudNativePG cluster of this release was found: is the site up?")
    return items[0]["metadata"]["name"]


def recent_backup(backups: list[dict], cluster_name: str, now: datetime) -> str | None:
    """The newest completed CloudNativePG Backup of the cluster younger than a day, if any."""
    best = None
    for item in backups:
        st = item.get("status", {})
        if item.get("spec", {}).get("cluster", {}).get("name") != cluster_name or st.get("phase") != "completed":
            continue
        stopped = st.get("stoppedAt")
        if not stopped:
            continue
        when = datetime.fromisoformat(stopped.replace("Z", "+00:00"))
        if now - when <= BACKUP_MAX_AGE and (best is None or when > best[0]):
            best = (when, item["metadata"]["name"])
    return best[1] if best else None


def require_backup(site: Site, cluster: Cluster, backup_now: bool) -> None:
    """The same rule as on hosts: a database upgrade needs a backup from the last 24 hours."""
    ns = site.kubernetes.namespace
    if site.kubernetes.database == "external":
        if not backup_now:
            raise KitError("a new Moodle version upgrades the database: snapshot the managed PostgreSQL with your "
                           "provider, then rerun `kit upgrade --backup-now` to confirm it; nothing was changed")
        click.echo("    backup: confirmed by --backup-now (the kit cannot snapshot a managed PostgreSQL)")
        return
    name = _cnpg_cluster_name(site, cluster)
    backups = cluster.custom.list_namespaced_custom_object("postgresql.cnpg.io", "v1", ns, "backups")
    found = recent_backup(backups.get("items", []), name, datetime.now(timezone.utc))
    if found and not backup_now:
        click.echo(f"    backup: {found} (CloudNativePG, less than a day old)")
        return
    if not backup_now:
        raise KitError(f"a new Moodle version upgrades the database and cluster {name} has no backup from the "
                       "last 24 h: rerun with --backup-now (the cluster needs a backup target configured)")
    backup_name = f"{name}-kit-{datetime.now(timezone.utc):%Y%m%d%H%M%S}"
    run_backup(cluster, ns, name, backup_name)


def run_backup(cluster: Cluster, ns: str, cluster_name: str, backup_name: str, timeout_s: float = 3600) -> None:
    body = {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Backup",
            "metadata": {"name": backup_name, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "kit"}},
            "spec": {"cluster": {"name": cluster_name}}}
    click.echo(f"    backup: creating CloudNativePG Backup {backup_name}")
    cluster.custom.create_namespaced_custom_object("postgresql.cnpg.io", "v1", ns, "backups", body)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = cluster.custom.get_namespaced_custom_object("postgresql.cnpg.io", "v1", ns, "backups",
                                                         backup_name).get("status", {})
        if st.get("phase") == "completed":
            click.echo(f"    backup: {backup_name} completed")
            return
        if st.get("phase") == "failed":
            raise KitError(f"backup {backup_name} failed: {st.get('error', 'no reason given')}; nothing was upgraded")
        time.sleep(10)
    raise KitError(f"backup {backup_name} did not finish in {timeout_s / 60:.0f} minutes; nothing was upgraded")


def rollback_target(history: list[dict]) -> tuple[int, int]:
    """(current deployed revision, the revision before it that was deployed)."""
    deployed = [h for h in history if h.get("status") == "deployed"]
    if not deployed:
        raise KitError("no deployed release to roll back (run `kit up` first)")
    current = deployed[-1]["revision"]
    earlier = [h["revision"] for h in history
               if h["revision"] < current and h.get("status") in ("superseded", "deployed")]
    if not earlier:
        raise KitError(f"revision {current} is the first release: there is nothing to roll back to")
    return current, max(earlier)


def rollback(site: Site, *, yes: bool) -> None:
    """helm rollback to the previous revision, refused across a Moodle version upgrade."""
    started = time.monotonic()
    require_helm()
    current, target = rollback_target(helm_history(site))
    now_version, target_version = _version_of(helm_values(site, current)), _version_of(helm_values(site, target))
    if now_version and target_version and float(target_version) < float(now_version):
        raise KitError(f"revision {current} upgraded Moodle's database ({target_version} -> {now_version}): a "
                       "rollback cannot undo that; restore the backup taken before the upgrade instead")
    if not yes:
        click.confirm(f"Roll release {site.kubernetes.release} back from revision {current} to {target}?",
                      abort=True, default=False)
    cluster = connect(site)
    run(helm_base(site) + ["rollback", site.kubernetes.release, str(target), "--wait", "--timeout", HELM_TIMEOUT])
    _finish(site, cluster, started, f"Rolled back to revision {target}'s images and settings; "
                                    "site.yaml still describes the newer release")


def down(site: Site, *, destroy_data: bool) -> None:
    """helm uninstall; the database (hibernated) and moodledata stay unless destroy_data."""
    require_helm()
    cluster = connect(site)
    ns, release = site.kubernetes.namespace, site.kubernetes.release
    if helm_history(site):
        run(helm_base(site) + ["uninstall", release, "--wait"])
    selector = f"app.kubernetes.io/instance={release}"
    db_clusters = []
    if site.kubernetes.database == "cloudnativepg":
        try:
            db_clusters = cluster.custom.list_namespaced_custom_object(
                "postgresql.cnpg.io", "v1", ns, "clusters", label_selector=selector).get("items", [])
        except Exception as exc:
            if _status_code(exc) != 404:
                raise
    for item in db_clusters:
        name = item["metadata"]["name"]
        if destroy_data:
            cluster.custom.delete_namespaced_custom_object("postgresql.cnpg.io", "v1", ns, "clusters", name)
            click.echo(f"    deleted database cluster {name}")
        else:
            cluster.custom.patch_namespaced_custom_object("postgresql.cnpg.io", "v1", ns, "clusters", name,
                                                          {"metadata": {"annotations": {"cnpg.io/hibernation": "on"}}})
            click.echo(f"    database cluster {name} hibernated (its volumes are kept)")
    if destroy_data:
        for pvc in cluster.core.list_namespaced_persistent_volume_claim(ns, label_selector=selector).items:
            cluster.core.delete_namespaced_persistent_volume_claim(pvc.metadata.name, ns)
            click.echo(f"    deleted volume claim {pvc.metadata.name}")
        try:
            cluster.core.delete_namespaced_secret(secret_name(site), ns)
        except Exception as exc:
            if _status_code(exc) != 404:
                raise
