"""The `k8s` target: `helm` through kit.runner (shown, streamed), the Kubernetes Python
client for what Helm does not do (the Secrets, prerequisites, status, logs, Moodle CLI
commands in a pod, backups), and psycopg through a port-forward for the database figures.

Secrets never reach Helm: the target writes them to Secrets with the API, and the values
file (build/<site>/k8s/values.yaml) only names them. No code path here touches Docker or
Ansible.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import click
import yaml

from kit import db, identity, policy
from kit import images as kit_images
from kit.config import Site, dump_site, load_secrets
from kit.doctor import Check
from kit.errors import KitError, OperationFailed, Unsupported
from kit.identity import Found, Owner
from kit.k8s import chart as kchart
from kit.k8s.portforward import PortForward, pod_socket
from kit.k8s.status import K8sStatus, format_status, read_status
from kit.k8s.values import chart_dir, chart_values, config_texts, monitor_secret_name, secret_data, secret_name
from kit.runner import capture, run
from kit.sizing import Tuning
from kit.targets import Status, Target

HELM_TIMEOUT = "20m"
READY_TIMEOUT_S = 600
LABEL_SITE_ID = "kit.site-id"
ANNOTATION_OWNER = "kit.owner"
CRDS = {
    "cloudnativepg": ("clusters.postgresql.cnpg.io", "the CloudNativePG operator "
                      "(https://cloudnative-pg.io/documentation/current/installation_upgrade/), or use "
                      "kubernetes.database: external"),
    "pgbouncer": ("poolers.postgresql.cnpg.io", "CloudNativePG 1.17 or later (Pooler)"),
    "keda": ("scaledobjects.keda.sh", "KEDA (https://keda.sh/docs/deploy/), or set kubernetes.keda: false"),
    "cert-manager": ("certificates.cert-manager.io", "cert-manager (https://cert-manager.io/docs/installation/), "
                     "or remove kubernetes.cert_manager_issuer"),
}
#: `kit logs SERVICE` -> the chart's component label.
COMPONENTS = {"web": "web", "web-nginx": "web", "cron": "cron", "worker": "worker", "db": "database",
              "redis": "redis"}


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
    """The API objects the target and the status reader use."""

    core: Any
    apps: Any
    autoscaling: Any
    custom: Any
    apiext: Any
    api_client: Any = None

    def exec_in_pod(self, namespace: str, pod: str, container: str, argv: list[str],
                    stdin: bytes | None = None) -> tuple[int, str]:
        """Run a command in a pod's container; (exit code, output)."""
        from kubernetes.stream import stream

        resp = stream(self.core.connect_get_namespaced_pod_exec, pod, namespace, container=container,
                      command=argv, stderr=True, stdin=stdin is not None, stdout=True, tty=False,
                      _preload_content=False)
        if stdin is not None:
            resp.write_stdin(stdin.decode())
        output: list[str] = []
        while resp.is_open():
            resp.update(timeout=1)
            for chunk in (resp.read_stdout(), resp.read_stderr()):
                if chunk:
                    output.append(chunk)
                    sys.stdout.write(chunk)
        resp.close()
        code = resp.returncode
        return (code if code is not None else -1), "".join(output)


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
    except Exception as exc:  # noqa: BLE001 - urllib3/TLS/HTTP errors all mean the same to the user
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
        except Exception as exc:  # noqa: BLE001 - the client's ApiException, or a fake's: both carry .status
            if _status_code(exc) == 404:
                raise KitError(f"the cluster has no {crd}: install {what}; nothing was changed") from None
            raise KitError(f"cannot read CRD {crd}: {type(exc).__name__} (permissions?)") from None


def _secret_body(site: Site, name: str, data: dict[str, str], owner: Owner) -> Any:
    from kubernetes import client

    return client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, namespace=site.kubernetes.namespace, labels={
            "app.kubernetes.io/managed-by": "kit", "app.kubernetes.io/instance": site.kubernetes.release,
            LABEL_SITE_ID: owner.site_id}, annotations={ANNOTATION_OWNER: owner.to_json()}),
        type="kubernetes.io/basic-auth", string_data=data)


def apply_secret(cluster: Cluster, site: Site, secrets: dict[str, str], owner: Owner) -> None:
    """Create the namespace if needed and write the Secrets the pods and the database read
    (never a Helm value). They carry the site's identity: the ownership check reads it."""
    from kubernetes import client

    ns = site.kubernetes.namespace
    try:
        cluster.core.read_namespace(ns)
    except Exception as exc:
        if _status_code(exc) != 404:
            raise
        cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        click.echo(f"    created namespace {ns}")
    monitor = {"username": site.database.monitor_user, "password": secrets["monitor_password"]}
    for name, data in ((secret_name(site), secret_data(site, secrets)), (monitor_secret_name(site), monitor)):
        body = _secret_body(site, name, data, owner)
        try:
            cluster.core.create_namespaced_secret(ns, body)
            click.echo(f"    created Secret {name}")
        except Exception as exc:
            if _status_code(exc) != 409:
                raise
            cluster.core.replace_namespaced_secret(name, ns, body)
            click.echo(f"    Secret {name} up to date")


def helm_history(site: Site) -> list[dict[str, Any]]:
    result = capture(helm_base(site) + ["history", site.kubernetes.release, "--output", "json"], check=False)
    if result.returncode != 0:
        return []
    return list(json.loads(result.stdout or "[]"))


def helm_values(site: Site, revision: int) -> dict[str, Any]:
    out = capture(helm_base(site) + ["get", "values", site.kubernetes.release, "--revision", str(revision),
                                     "--output", "json"]).stdout
    return dict(json.loads(out or "{}") or {})


def _version_of(values: dict[str, Any]) -> str:
    return str((values.get("moodle") or {}).get("version") or "")


def recent_backup(backups: list[dict[str, Any]], cluster_name: str, now: datetime) -> str | None:
    """The newest completed CloudNativePG Backup of the cluster within the policy's age, if any."""
    best: tuple[datetime, str] | None = None
    for item in backups:
        st = item.get("status", {})
        if item.get("spec", {}).get("cluster", {}).get("name") != cluster_name or st.get("phase") != "completed":
            continue
        stopped = st.get("stoppedAt")
        if not stopped:
            continue
        when = datetime.fromisoformat(stopped.replace("Z", "+00:00"))
        if policy.backup_is_recent(when, now) and (best is None or when > best[0]):
            best = (when, item["metadata"]["name"])
    return best[1] if best else None


def rollback_target(history: list[dict[str, Any]]) -> tuple[int, int]:
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


def parse_since(text: str) -> int:
    from kit.targets.docker import parse_since as docker_parse

    return docker_parse(text)


class K8sTarget(Target):
    name = "k8s"
    refusals = {
        "backup": "CloudNativePG backs up the database (`kit upgrade --backup-now` takes one) and your storage "
                  "snapshots moodledata",
        "restore": "restore CloudNativePG's backup into a new cluster (see docs/kubernetes.md) and moodledata from "
                   "your storage's snapshot",
        "secrets rotate": "change the site's Secret and run `kit upgrade` (see docs/kubernetes.md)",
        "certs": "the Ingress serves the certificate (kubernetes.cert_manager_issuer or kubernetes.tls_secret): "
                 "`kubectl describe certificate` shows it",
    }

    @cached_property
    def cluster(self) -> Cluster:
        return connect(self.site)

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.site.kubernetes.release}"

    def owner(self) -> Owner:
        me = identity.ensure(self.site)
        return Owner.of(self.site, me)

    # --- ownership ------------------------------------------------------------------------------
    def found(self) -> list[Found]:
        ns = self.site.kubernetes.namespace
        objects: list[str] = []
        ids: set[str] = set()
        owner = None
        try:
            secret = self.cluster.core.read_namespaced_secret(secret_name(self.site), ns)
        except Exception as exc:  # noqa: BLE001 - the client's ApiException, or a fake's: both carry .status
            if _status_code(exc) != 404:
                raise KitError(f"cannot read Secret {secret_name(self.site)} in namespace {ns}: "
                               f"{type(exc).__name__}") from None
            secret = None
        if secret is not None:
            objects.append(f"Secret {secret.metadata.name}")
            ids.add((secret.metadata.labels or {}).get(LABEL_SITE_ID, ""))
            owner = Owner.from_json((secret.metadata.annotations or {}).get(ANNOTATION_OWNER, ""))
        deployments = self.cluster.apps.list_namespaced_deployment(ns, label_selector=self.selector).items
        if deployments and secret is None:
            objects.append(f"Deployment {deployments[0].metadata.name}")
            ids.add("")
        return [Found(where=f"namespace {ns}", objects=objects, site_ids=ids, owner=owner)]

    def adopt(self) -> None:
        ids = {i for f in self.found() for i in f.site_ids if i}
        if len(ids) != 1:
            raise KitError(f"release {self.site.kubernetes.release} in namespace {self.site.kubernetes.namespace} "
                           "has no single identity to adopt: `kit up` claims a new one")
        secrets = load_secrets(self.site)
        identity.save(self.site, identity.Identity(id=ids.pop(), created=time.strftime("%Y-%m-%dT%H:%M:%S%z")))
        apply_secret(self.cluster, self.site, secrets, self.owner())
        click.secho(f"adopted: site {self.site.name!r} is now managed from {self.site.site_dir}", fg="green")

    # --- checks ----------------------------------------------------------------------------------
    def preflight(self) -> list[Check]:
        try:
            major = require_helm()
        except KitError as exc:
            return [Check("helm", False, str(exc))]
        checks = [Check("helm", True, f"helm {major}.x")]
        try:
            check_prerequisites(self.cluster, self.site)
        except KitError as exc:
            return [*checks, Check("cluster", False, str(exc))]
        return [*checks, Check("cluster", True, f"cluster answers; namespace {self.site.kubernetes.namespace}")]

    def runtime_checks(self) -> list[Check]:
        st = self.read_status(with_db=False)
        if not st.deployments:
            return []
        checks = [Check("replicas", st.ready, "every Deployment rolled out and ready" if st.ready else st.reason)]
        try:
            with self.database("monitor") as monitor:
                figures = db.connections(monitor)
                queue = db.queue(monitor)
        except KitError as exc:
            return [*checks, Check("db-conn", False, f"cannot query PostgreSQL: {exc}")]
        ratio = figures.used / figures.limit
        checks.append(Check("db-conn", ratio < 0.8, f"{figures.used} of {figures.limit} connections in use "
                                                    f"({ratio:.0%})"))
        if queue:
            checks.append(Check("queue", queue.oldest_age_s <= 600 and queue.failing == 0,
                                f"{queue.queued} adhoc tasks queued ({queue.due} due), oldest overdue "
                                f"{queue.oldest_age_s}s, {queue.failing_text()}"))
        return checks

    # --- the database, through a port-forward -----------------------------------------------------
    def database(self, role: db.Role) -> "_Forwarded":
        return _Forwarded(self, role)

    def monitor_db(self) -> db.Database:
        raise Unsupported("on target k8s the database is reached through a port-forward: use `with "
                          "target.database('monitor')`")

    def queue(self) -> db.Queue | None:
        with self.database("monitor") as monitor:
            return db.queue(monitor)

    def primary_pod(self) -> str:
        ns = self.site.kubernetes.namespace
        pods = self.cluster.core.list_namespaced_pod(
            ns, label_selector=f"cnpg.io/cluster={self._cnpg_cluster_name()},cnpg.io/instanceRole=primary").items
        if not pods:
            raise KitError(f"no primary PostgreSQL pod of release {self.site.kubernetes.release} in namespace {ns}: "
                           "is the site up? (`kit status`)")
        return str(pods[0].metadata.name)

    # --- status ------------------------------------------------------------------------------------
    def read_status(self, *, with_db: bool = True) -> K8sStatus:
        def read_db() -> tuple[dict[str, int], str]:
            with self.database("monitor") as monitor:
                found = db.queue(monitor)
                return (found.as_dict() if found else {}), db.moodle_setting(monitor, "release") or ""
        c = self.cluster
        return read_status(self.site, apps=c.apps, core=c.core, autoscaling=c.autoscaling, custom=c.custom,
                           read_db=read_db if with_db else None)

    def status(self) -> Status:
        st = self.read_status()
        shown_by_the_cli = ("  url ", "  moodle ", "  queue ")
        lines = [line for line in format_status(self.site, st)[1:] if not line[0].startswith(shown_by_the_cli)]
        return Status(url=st.url, ready=st.ready, reason=st.reason, queue=st.queue, moodle_release=st.moodle_release,
                      details={"deployments": st.deployments, "pods": st.pods, "autoscalers": st.autoscalers},
                      lines=lines)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> tuple[bool, str]:
        """Every Deployment rolled out and ready (web readiness is a rendered Moodle page)."""
        deadline = time.monotonic() + timeout_s
        st = self.read_status(with_db=False)
        while not st.ready and time.monotonic() < deadline:
            time.sleep(5)
            st = self.read_status(with_db=False)
        return st.ready, st.reason

    def _finish(self, started: float, what: str) -> None:
        click.secho("==> Health", bold=True)
        ready, msg = self.wait_ready()
        if not ready:
            raise OperationFailed(f"Helm finished, but the site is not healthy: {msg} (see `kit status`)")
        policy.banner(self.site, what, time.monotonic() - started)

    # --- rollouts -----------------------------------------------------------------------------------
    def _prepare(self, *, version_required: bool = False) -> tuple[Path, str]:
        version = moodle_version_of(self.site, required=version_required)
        out, note = render(self.site, self.tuning, kit_images.image_set(self.site), version)
        click.echo(f"    rendered {out} ({note})")
        return out / "values.yaml", version

    def up(self, *, yes: bool, skip_build: bool, dry_run: bool) -> None:
        """helm upgrade --install --atomic --wait, then wait for a healthy site."""
        started = time.monotonic()
        click.secho("==> Render", bold=True)
        major = require_helm()
        values_file, _ = self._prepare()
        click.secho("==> Cluster", bold=True)
        check_prerequisites(self.cluster, self.site)
        if dry_run:
            run(upgrade_command(self.site, values_file, install=True, helm_major=major, dry_run=True))
            click.secho("dry run: Helm rendered and the API server accepted every object; nothing was changed",
                        fg="green")
            return
        apply_secret(self.cluster, self.site, load_secrets(self.site), self.owner())
        click.secho("==> Helm", bold=True)
        run(upgrade_command(self.site, values_file, install=True, helm_major=major))
        self._finish(started, "Site is up")

    def deployed_version(self, history: list[dict[str, Any]]) -> str:
        """Moodle's version in the database, else the one the release recorded."""
        try:
            with self.database("monitor") as monitor:
                found = db.moodle_setting(monitor, "version")
            if found:
                return found
        except KitError:
            pass
        current = [h for h in history if h.get("status") == "deployed"]
        return _version_of(helm_values(self.site, current[-1]["revision"])) if current else ""

    def upgrade(self, *, backup_now: bool) -> None:
        """helm upgrade (no install): rolling for the same Moodle version; the pre-upgrade Job
        runs Moodle's upgrade once for a new one, after a backup."""
        started = time.monotonic()
        major = require_helm()
        history = helm_history(self.site)
        if not any(h.get("status") == "deployed" for h in history):
            raise KitError(f"release {self.site.kubernetes.release} is not deployed in namespace "
                           f"{self.site.kubernetes.namespace}: run `kit up` first")
        click.secho("==> Render", bold=True)
        values_file, new_version = self._prepare(version_required=True)
        old_version = self.deployed_version(history)
        kind = policy.upgrade_kind(old_version, new_version) if old_version else "same"
        if kind == "database":
            click.secho(f"==> Moodle version upgrade: {old_version} -> {new_version}", bold=True)
            self.require_backup(backup_now)
        check_prerequisites(self.cluster, self.site)
        apply_secret(self.cluster, self.site, load_secrets(self.site), self.owner())
        click.secho("==> Helm", bold=True)
        run(upgrade_command(self.site, values_file, install=False, helm_major=major))
        if kind == "database":
            seconds = self.maintenance_seconds()
            if seconds is not None:
                click.secho(f"users saw the maintenance page for {seconds}s", bold=True)
        self._finish(started, "Release is live")

    def maintenance_seconds(self) -> int | None:
        """The upgrade Job prints how long maintenance lasted; read it from its pod's log."""
        selector = f"{self.selector},app.kubernetes.io/component=upgrade"
        pods = self.cluster.core.list_namespaced_pod(self.site.kubernetes.namespace, label_selector=selector).items
        if not pods:
            return None
        newest = max(pods, key=lambda p: p.metadata.creation_timestamp or datetime.min.replace(tzinfo=UTC))
        log = self.cluster.core.read_namespaced_pod_log(newest.metadata.name, self.site.kubernetes.namespace)
        match = re.search(r"maintenance lasted (\d+)s", log or "")
        return int(match.group(1)) if match else None

    def _cnpg_cluster_name(self) -> str:
        found = self.cluster.custom.list_namespaced_custom_object(
            "postgresql.cnpg.io", "v1", self.site.kubernetes.namespace, "clusters",
            label_selector=f"{self.selector},app.kubernetes.io/component=database")
        items = found.get("items", [])
        if not items:
            raise KitError("no CloudNativePG cluster of this release was found: is the site up?")
        return str(items[0]["metadata"]["name"])

    def require_backup(self, backup_now: bool) -> None:
        """The policy's rule: a database upgrade needs a recent backup."""
        ns = self.site.kubernetes.namespace
        if self.site.kubernetes.database == "external":
            if not backup_now:
                raise policy.backup_missing("the kit cannot snapshot a managed PostgreSQL",
                                            "snapshot the managed PostgreSQL with your provider, then rerun "
                                            "`kit upgrade --backup-now` to confirm it; nothing was changed")
            click.echo("    backup: confirmed by --backup-now (the kit cannot snapshot a managed PostgreSQL)")
            return
        name = self._cnpg_cluster_name()
        backups = self.cluster.custom.list_namespaced_custom_object("postgresql.cnpg.io", "v1", ns, "backups")
        found = recent_backup(backups.get("items", []), name, datetime.now(UTC))
        if found and not backup_now:
            click.echo(f"    backup: {found} (CloudNativePG, recent)")
            return
        if not backup_now:
            raise policy.backup_missing(f"cluster {name} has none", "rerun with --backup-now (the cluster needs a "
                                        "backup target configured)")
        self.run_backup(name, f"{name}-kit-{datetime.now(UTC):%Y%m%d%H%M%S}")

    def run_backup(self, cluster_name: str, backup_name: str, timeout_s: float = 3600) -> None:
        ns = self.site.kubernetes.namespace
        body = {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Backup",
                "metadata": {"name": backup_name, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "kit"}},
                "spec": {"cluster": {"name": cluster_name}}}
        click.echo(f"    backup: creating CloudNativePG Backup {backup_name}")
        self.cluster.custom.create_namespaced_custom_object("postgresql.cnpg.io", "v1", ns, "backups", body)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            st = self.cluster.custom.get_namespaced_custom_object("postgresql.cnpg.io", "v1", ns, "backups",
                                                                  backup_name).get("status", {})
            if st.get("phase") == "completed":
                click.echo(f"    backup: {backup_name} completed")
                return
            if st.get("phase") == "failed":
                raise OperationFailed(f"backup {backup_name} failed: {st.get('error', 'no reason given')}; "
                                      "nothing was upgraded")
            time.sleep(10)
        raise OperationFailed(f"backup {backup_name} did not finish in {timeout_s / 60:.0f} minutes; nothing was "
                              "upgraded")

    def releases(self) -> list[dict[str, Any]]:
        require_helm()
        return helm_history(self.site)

    def rollback_target(self) -> str:
        require_helm()
        current, target = rollback_target(helm_history(self.site))
        now_version = _version_of(helm_values(self.site, current))
        target_version = _version_of(helm_values(self.site, target))
        policy.check_rollback(now_version, target_version, what=f"revision {current}",
                              restore_hint="restore CloudNativePG's backup of the cluster")
        return f"revision {target} (from revision {current})"

    def rollback(self) -> None:
        """helm rollback to the previous revision, refused across a Moodle version upgrade."""
        started = time.monotonic()
        self.rollback_target()
        _, target = rollback_target(helm_history(self.site))
        run(helm_base(self.site) + ["rollback", self.site.kubernetes.release, str(target), "--wait",
                                    "--timeout", HELM_TIMEOUT])
        self._finish(started, f"Rolled back to revision {target}'s images and settings; "
                              "site.yaml still describes the newer release")

    def down(self, *, destroy_data: bool) -> None:
        """helm uninstall; the database (hibernated) and moodledata stay unless destroy_data."""
        require_helm()
        ns, release = self.site.kubernetes.namespace, self.site.kubernetes.release
        custom, core = self.cluster.custom, self.cluster.core
        if helm_history(self.site):
            run(helm_base(self.site) + ["uninstall", release, "--wait"])
        db_clusters = []
        if self.site.kubernetes.database == "cloudnativepg":
            try:
                db_clusters = custom.list_namespaced_custom_object(
                    "postgresql.cnpg.io", "v1", ns, "clusters", label_selector=self.selector).get("items", [])
            except Exception as exc:
                if _status_code(exc) != 404:
                    raise
        for item in db_clusters:
            name = item["metadata"]["name"]
            if destroy_data:
                custom.delete_namespaced_custom_object("postgresql.cnpg.io", "v1", ns, "clusters", name)
                click.echo(f"    deleted database cluster {name}")
            else:
                custom.patch_namespaced_custom_object("postgresql.cnpg.io", "v1", ns, "clusters", name,
                                                      {"metadata": {"annotations": {"cnpg.io/hibernation": "on"}}})
                click.echo(f"    database cluster {name} hibernated (its volumes are kept)")
        if destroy_data:
            for pvc in core.list_namespaced_persistent_volume_claim(ns, label_selector=self.selector).items:
                core.delete_namespaced_persistent_volume_claim(pvc.metadata.name, ns)
                click.echo(f"    deleted volume claim {pvc.metadata.name}")
            for name in (secret_name(self.site), monitor_secret_name(self.site)):
                try:
                    core.delete_namespaced_secret(name, ns)
                except Exception as exc:
                    if _status_code(exc) != 404:
                        raise

    def scale(self, *, web: int | None, workers: int | None) -> None:
        """Minimum web pods and workers (the autoscalers grow from there): saved in site.yaml,
        applied with helm upgrade (a rolling update)."""
        scaled = self.scaled_site(web=web, workers=workers)
        target = K8sTarget(scaled)
        target.__dict__["cluster"] = self.cluster
        major = require_helm()
        if not any(h.get("status") == "deployed" for h in helm_history(scaled)):
            raise KitError(f"release {scaled.kubernetes.release} is not deployed: run `kit up` first")
        (self.site.site_dir / "site.yaml").write_text(dump_site(scaled))
        values_file, _ = target._prepare()
        run(upgrade_command(scaled, values_file, install=False, helm_major=major))
        target._finish(time.monotonic(), f"scaled: at least {target.tuning.web_replicas} web pods, "
                                         f"{target.tuning.workers} workers")

    def logs(self, service: str | None, *, since: str, tail: int) -> None:
        seconds = parse_since(since)
        ns = self.site.kubernetes.namespace
        selector = self.selector
        if service:
            selector += f",app.kubernetes.io/component={COMPONENTS[service]}"
        for pod in self.cluster.core.list_namespaced_pod(ns, label_selector=selector).items:
            for container in pod.spec.containers:
                if service == "web-nginx" and container.name != "nginx":
                    continue
                click.secho(f"==> {pod.metadata.name} ({container.name})", bold=True)
                text = self.cluster.core.read_namespaced_pod_log(pod.metadata.name, ns, container=container.name,
                                                                 since_seconds=seconds, tail_lines=tail)
                click.echo(text or "", nl=False)

    def render_notes(self) -> list[str]:
        from kit.render import render as render_files

        shared = render_files(self.site, self.tuning, kit_images.image_set(self.site))
        out, note = render(self.site, self.tuning, kit_images.image_set(self.site), moodle_version_of(self.site))
        return [f"rendered {shared} (the config files every target shares)", f"rendered {out} ({note})"]

    def moodle_cli(self, args: list[str], *, stdin: bytes | None = None, check: bool = True,
                   quiet: bool = False) -> tuple[int, str]:
        ns = self.site.kubernetes.namespace
        pods = [p for p in self.cluster.core.list_namespaced_pod(
            ns, label_selector=f"{self.selector},app.kubernetes.io/component=cron").items
            if p.status.phase == "Running"]
        if not pods:
            raise OperationFailed("no running cron pod to run Moodle's CLI in: is the site up? (`kit status`)")
        pod = pods[0].metadata.name
        click.secho(f"$ php {' '.join(args)}   (in pod {pod})", fg="cyan", err=True)
        code, out = self.cluster.exec_in_pod(ns, pod, "cron", ["php", *args], stdin=stdin)
        if check and code != 0:
            raise OperationFailed(f"php {' '.join(args)} in pod {pod} exited {code}")
        return code, out

    def meter(self) -> Any:
        return None


class _Forwarded:
    """`with target.database(role) as database:` a login through a port-forward to the
    primary pod, or straight to an external database."""

    def __init__(self, target: K8sTarget, role: db.Role) -> None:
        self.target, self.role = target, role
        self._forward: PortForward | None = None

    def _login(self) -> db.Login:
        secrets = load_secrets(self.target.site)
        if self.role == "monitor":
            return db.Login(self.target.site.database.monitor_user, secrets["monitor_password"])
        if self.role == "admin":
            raise Unsupported("on target k8s the kit has no database admin login (CloudNativePG manages roles)")
        user = self.target.site.kubernetes.database_user if self.target.site.kubernetes.database == "external" \
            else db.OWNER_ROLE
        return db.Login(user, secrets["db_password"])

    def __enter__(self) -> db.Database:
        site = self.target.site
        login = self._login()
        if site.kubernetes.database == "external":
            return db.Database(db.Endpoint(host=site.kubernetes.database_host or "", port=5432, sslmode="require"),
                               login, self.role)
        cluster = self.target.cluster
        self._forward = PortForward(pod_socket(cluster.core, site.kubernetes.namespace, self.target.primary_pod(),
                                               5432)).__enter__()
        return db.Database(db.Endpoint(host="127.0.0.1", port=self._forward.port, sslmode="prefer"), login,
                           self.role)

    def __exit__(self, *exc: object) -> None:
        if self._forward is not None:
            self._forward.__exit__(None, None, None)

