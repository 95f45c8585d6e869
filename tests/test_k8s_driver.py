"""The k8s target: its helm command lines, the status reader, rollback and backup rules,
and the CLI for target k8s. No cluster and no helm CLI run here: tests whose names say
`fake_k8s_api` or `fake_helm` stand in for them with recording fakes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
import yaml

from kit.config import create_secrets, load_site, parse_site
from kit.errors import KitError
from kit.identity import Owner, ensure
from kit.k8s.status import read_status, rollout_state
from kit.k8s.values import chart_dir, monitor_secret_name, secret_name
from kit.targets import k8s as driver
from kit.targets.k8s import K8sTarget
from tests.conftest import write_site

KIT = [sys.executable, "-m", "kit.cli"]


def kit(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*KIT, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def site(site_dir, fake_moodle):
    return load_site(write_site(site_dir, {
        "name": "k1", "target": "k8s", "users": 800, "url": "https://lms.example.edu",
        "host": {"cpus": 8, "memory_gb": 32}, "moodle": {"source": str(fake_moodle)},
        "kubernetes": {"namespace": "lms", "release": "lms", "host": "lms.example.edu", "context": "prod-eu"}}))


class ApiError(Exception):
    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.status = status


# --- helm command lines -------------------------------------------------------------------

def test_helm_upgrade_command_line(site, tmp_path):
    values = tmp_path / "values.yaml"
    cmd = driver.upgrade_command(site, values, install=True, helm_major=3)
    assert cmd == ["helm", "--namespace", "lms", "--kube-context", "prod-eu", "upgrade", "--install", "lms",
                   str(chart_dir()), "--values", str(values), "--atomic", "--wait", "--timeout", "20m"]
    v4 = driver.upgrade_command(site, values, install=False, helm_major=4, dry_run=True)
    assert "--install" not in v4 and "--rollback-on-failure" in v4 and "--atomic" not in v4
    assert v4[-1] == "--dry-run=server"


def test_missing_helm_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(driver.shutil, "which", lambda name: None)
    with pytest.raises(KitError, match=r"^helm is not installed: install Helm .*nothing was changed$"):
        driver.require_helm()


def test_missing_kubeconfig_is_one_clear_line(site, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nope" / "config"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KitError) as err:
        driver.connect(site)
    assert str(err.value).startswith("no Kubernetes cluster configured") and "\n" not in str(err.value)


def test_unreachable_cluster_is_one_clear_line(site, tmp_path, monkeypatch):
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "prod-eu",
              "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
              "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
              "contexts": [{"name": "prod-eu", "context": {"cluster": "c", "user": "u"}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    with pytest.raises(KitError, match=r"^the Kubernetes cluster at https://127.0.0.1:9 does not answer"):
        driver.connect(site)


class FakeCore:
    """Records what the driver asks of the core API (namespace, Secret)."""

    def __init__(self, namespace_exists: bool = False, secret_exists: bool = False):
        self.calls: list[tuple] = []
        self.namespace_exists, self.secret_exists = namespace_exists, secret_exists

    def read_namespace(self, name):
        self.calls.append(("read_namespace", name))
        if not self.namespace_exists:
            raise ApiError(404)

    def create_namespace(self, body):
        self.calls.append(("create_namespace", body.metadata.name))

    def create_namespaced_secret(self, ns, body):
        self.calls.append(("create_secret", ns, body))
        if self.secret_exists:
            raise ApiError(409)

    def replace_namespaced_secret(self, name, ns, body):
        self.calls.append(("replace_secret", ns, body))


def owner_of(site) -> Owner:
    return Owner.of(site, ensure(site))


class FakeApiext:
    def __init__(self, present: set[str]):
        self.present = present

    def read_custom_resource_definition(self, name):
        if name not in self.present:
            raise ApiError(404)
        return NS(metadata=NS(name=name))


def fake_target(site, cluster, monkeypatch, commands: list) -> K8sTarget:
    target = K8sTarget(site)
    target.__dict__["cluster"] = cluster
    monkeypatch.setattr(driver, "require_helm", lambda: 3)
    monkeypatch.setattr(driver, "run", lambda cmd, **kw: commands.append([str(c) for c in cmd]) or 0)
    monkeypatch.setattr(K8sTarget, "wait_ready", lambda self, timeout_s=0: (True, "serving"))
    return target


def test_up_with_fake_k8s_api_and_fake_helm_keeps_secrets_out_of_helm(site, monkeypatch):
    secrets = create_secrets(site)
    commands: list[list[str]] = []
    core = FakeCore()
    cluster = driver.Cluster(core=core, apps=None, autoscaling=None, custom=None,
                             apiext=FakeApiext({"clusters.postgresql.cnpg.io"}))
    fake_target(site, cluster, monkeypatch, commands).up(yes=False, skip_build=False, dry_run=False)
    assert ("create_namespace", "lms") in core.calls
    created = {c[2].metadata.name: c[2] for c in core.calls if c[0] == "create_secret"}
    assert set(created) == {secret_name(site), monitor_secret_name(site)}
    body = created[secret_name(site)]
    assert body.type == "kubernetes.io/basic-auth"
    assert body.string_data["password"] == secrets["db_password"]
    assert body.string_data["admin-password"] == secrets["admin_password"]
    assert created[monitor_secret_name(site)].string_data == {"username": "kit_monitor",
                                                              "password": secrets["monitor_password"]}
    assert body.metadata.labels["kit.site-id"] == owner_of(site).site_id
    assert Owner.from_json(body.metadata.annotations["kit.owner"]).folder == str(site.site_dir)
    (helm_cmd,) = commands
    values_file = site.build_dir / "k8s" / "values.yaml"
    assert helm_cmd == driver.upgrade_command(site, values_file, install=True, helm_major=3)
    rendered = "\n".join(p.read_text() for p in (site.build_dir / "k8s").iterdir())
    for value in secrets.values():
        assert value not in rendered
        assert all(value not in part for part in helm_cmd)
    values = yaml.safe_load(values_file.read_text())
    assert values["auth"]["existingSecret"] == secret_name(site)
    assert values["database"]["cloudnativepg"]["monitorRole"] == {"name": "kit_monitor",
                                                                  "secret": monitor_secret_name(site)}


def test_up_with_fake_k8s_api_refuses_without_the_operator(site, monkeypatch):
    create_secrets(site)
    commands: list = []
    cluster = driver.Cluster(core=FakeCore(), apps=None, autoscaling=None, custom=None, apiext=FakeApiext(set()))
    with pytest.raises(KitError, match="clusters.postgresql.cnpg.io: install the CloudNativePG operator"):
        fake_target(site, cluster, monkeypatch, commands).up(yes=False, skip_build=False, dry_run=False)
    assert commands == [] and cluster.core.calls == []


def test_existing_secret_is_replaced_with_fake_k8s_api(site):
    core = FakeCore(namespace_exists=True, secret_exists=True)
    cluster = driver.Cluster(core=core, apps=None, autoscaling=None, custom=None, apiext=None)
    driver.apply_secret(cluster, site, create_secrets(site), owner_of(site))
    assert [c[0] for c in core.calls] == ["read_namespace", "create_secret", "replace_secret", "create_secret",
                                          "replace_secret"]


# --- status reader ------------------------------------------------------------------------------

def deployment(name, component, *, replicas=2, ready=2, updated=2, total=2, generation=3, observed=3):
    return NS(metadata=NS(name=name, generation=generation, labels={"app.kubernetes.io/component": component}),
              spec=NS(replicas=replicas),
              status=NS(replicas=total, updated_replicas=updated, ready_replicas=ready, available_replicas=ready,
                        observed_generation=observed))


def pod(name, component, *, ready=True, restarts=0, phase="Running"):
    return NS(metadata=NS(name=name, labels={"app.kubernetes.io/component": component}),
              status=NS(phase=phase, container_statuses=[NS(ready=ready, restart_count=restarts,
                                                            image="registry.example.edu/kit/moodle:abc")]))


class FakeApps:
    def __init__(self, items):
        self.items, self.selectors = items, []

    def list_namespaced_deployment(self, ns, label_selector):
        self.selectors.append((ns, label_selector))
        return NS(items=self.items)


class FakePods:
    def __init__(self, items):
        self.items = items

    def list_namespaced_pod(self, ns, label_selector):
        return NS(items=self.items)


class FakeAutoscaling:
    def list_namespaced_horizontal_pod_autoscaler(self, ns, label_selector):
        metric = NS(type="Resource", resource=NS(name="cpu", current=NS(average_utilization=63)))
        return NS(items=[NS(metadata=NS(name="lms-moodle-web"), spec=NS(min_replicas=3, max_replicas=6),
                            status=NS(current_replicas=4, desired_replicas=4, current_metrics=[metric]))])


class FakeCustom:
    def list_namespaced_custom_object(self, group, version, ns, plural, label_selector=None):
        assert (group, plural) == ("keda.sh", "scaledobjects")
        return {"items": [{"metadata": {"name": "lms-moodle-worker"},
                           "spec": {"minReplicaCount": 2, "maxReplicaCount": 8},
                           "status": {"conditions": [{"type": "Active", "status": "True"}]}}]}


def test_status_reader_with_fake_k8s_api_reports_rollouts_autoscalers_and_queue(site):
    reads: list[int] = []

    def read_db():
        reads.append(1)
        return {"queued": 57, "due": 12, "oldest_age_s": 340, "failing": 1}, "4.5.6 (Build: 20250811)"

    apps = FakeApps([deployment("lms-moodle-web", "web", replicas=3, ready=3, updated=3, total=3),
                     deployment("lms-moodle-cron", "cron", replicas=1, ready=1, updated=1, total=1),
                     deployment("lms-moodle-worker", "worker", replicas=4, ready=4, updated=2, total=5)])
    core = FakePods([pod("lms-moodle-web-a", "web"), pod("lms-moodle-cron-b", "cron", restarts=2),
                     pod("lms-moodle-worker-c", "worker", ready=False)])
    st = read_status(site, apps=apps, core=core, autoscaling=FakeAutoscaling(), custom=FakeCustom(), read_db=read_db)
    assert apps.selectors == [("lms", "app.kubernetes.io/instance=lms")]
    assert not st.ready and st.reason == "worker: 2/4 replicas updated"
    assert st.queue == {"queued": 57, "due": 12, "oldest_age_s": 340, "failing": 1}
    assert st.moodle_release == "4.5.6 (Build: 20250811)"
    assert {a["kind"] for a in st.autoscalers} == {"HPA", "KEDA"}
    assert next(a for a in st.autoscalers if a["kind"] == "HPA")["cpu_percent"] == 63
    assert reads == [1]
    lines = "\n".join(line for line, _ in driver.format_status(site, st))
    assert "57 adhoc tasks queued (12 due)" in lines and "4 of 3-6 replicas, CPU 63%" in lines


def test_status_reader_with_fake_k8s_api_says_when_the_database_does_not_answer(site):
    def read_db():
        raise KitError("PostgreSQL at 127.0.0.1:5432 (as kit_monitor): password authentication failed")

    apps = FakeApps([deployment("w", "web"), deployment("c", "cron", replicas=1, ready=1, updated=1, total=1)])
    st = read_status(site, apps=apps, core=FakePods([]), autoscaling=NS(
        list_namespaced_horizontal_pod_autoscaler=lambda ns, label_selector: NS(items=[])),
        custom=None, read_db=read_db)
    assert not st.ready and "database: PostgreSQL at 127.0.0.1:5432" in st.reason


def test_status_reader_with_fake_k8s_api_is_ready_when_everything_rolled_out(site):
    apps = FakeApps([deployment("w", "web"), deployment("c", "cron", replicas=1, ready=1, updated=1, total=1)])
    st = read_status(site, apps=apps, core=FakePods([]), autoscaling=NS(
        list_namespaced_horizontal_pod_autoscaler=lambda ns, label_selector: NS(items=[])),
        custom=None, read_db=None)
    assert st.ready and st.reason == "serving"


def test_status_reader_with_fake_k8s_api_says_when_nothing_is_deployed(site):
    st = read_status(site, apps=FakeApps([]), core=FakePods([]), autoscaling=NS(
        list_namespaced_horizontal_pod_autoscaler=lambda ns, label_selector: NS(items=[])),
        custom=None, read_db=None)
    assert not st.ready and "no web Deployment: the site is not up (run `kit up`)" in st.reason


@pytest.mark.parametrize("kwargs, done, text", [
    ({}, True, "2/2 ready"),
    ({"observed": 2}, False, "waiting for the controller"),
    ({"updated": 1}, False, "1/2 replicas updated"),
    ({"total": 3}, False, "1 old replicas terminating"),
    ({"ready": 1}, False, "1/2 replicas ready"),
])
def test_rollout_state_reads_like_kubectl_rollout_status(kwargs, done, text):
    ok, message = rollout_state(deployment("d", "web", **kwargs))
    assert ok is done and message.startswith(text)


# --- rollback, upgrade, backups ----------------------------------------------------------------------

HISTORY = [{"revision": 1, "status": "superseded"}, {"revision": 2, "status": "superseded"},
           {"revision": 3, "status": "failed"}, {"revision": 4, "status": "deployed"}]


def fake_helm(monkeypatch, versions: dict[int, str], commands: list):
    def capture(cmd, **kw):
        commands.append(list(cmd))
        if "history" in cmd:
            return NS(returncode=0, stdout=json.dumps(HISTORY), stderr="")
        revision = int(cmd[cmd.index("--revision") + 1])
        return NS(returncode=0, stdout=json.dumps({"moodle": {"version": versions[revision]}}), stderr="")
    monkeypatch.setattr(driver, "capture", capture)
    monkeypatch.setattr(driver, "require_helm", lambda: 3)


def test_rollback_target_skips_failed_revisions():
    assert driver.rollback_target(HISTORY) == (4, 2)
    with pytest.raises(KitError, match="first release"):
        driver.rollback_target([{"revision": 1, "status": "deployed"}])


def test_rollback_with_fake_helm_is_refused_across_a_moodle_upgrade(site, monkeypatch):
    commands: list = []
    fake_helm(monkeypatch, {4: "2024100706.00", 2: "2024042200.00"}, commands)
    monkeypatch.setattr(driver, "run", lambda cmd, **kw: pytest.fail("must not run helm rollback"))
    with pytest.raises(KitError, match=r"revision 4 upgraded Moodle's database .* restore the backup"):
        K8sTarget(site).rollback_target()
    assert ["helm", "--namespace", "lms", "--kube-context", "prod-eu", "history", "lms", "--output", "json"] in commands


def test_rollback_with_fake_helm_runs_helm_rollback_to_the_previous_good_revision(site, monkeypatch):
    commands: list = []
    ran: list = []
    fake_helm(monkeypatch, {4: "2024100706.00", 2: "2024100706.00"}, commands)
    monkeypatch.setattr(driver, "run", lambda cmd, **kw: ran.append(list(cmd)))
    monkeypatch.setattr(K8sTarget, "wait_ready", lambda self, timeout_s=0: (True, "serving"))
    target = K8sTarget(site)
    assert target.rollback_target() == "revision 2 (from revision 4)"
    target.rollback()
    assert ran == [["helm", "--namespace", "lms", "--kube-context", "prod-eu", "rollback", "lms", "2", "--wait",
                    "--timeout", "20m"]]


def test_recent_backup_picks_a_completed_one_from_the_last_day():
    now = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)

    def backup(name, cluster, phase, age_h):
        return {"metadata": {"name": name}, "spec": {"cluster": {"name": cluster}},
                "status": {"phase": phase, "stoppedAt": (now - timedelta(hours=age_h)).isoformat().replace("+00:00", "Z")}}
    items = [backup("old", "lms-db", "completed", 30), backup("failed", "lms-db", "failed", 1),
             backup("other", "x-db", "completed", 1), backup("good", "lms-db", "completed", 5),
             backup("better", "lms-db", "completed", 2)]
    assert driver.recent_backup(items, "lms-db", now) == "better"
    assert driver.recent_backup(items[:3], "lms-db", now) is None


def test_external_database_upgrade_needs_backup_confirmation(site_dir, fake_moodle):
    ext = parse_site({"target": "k8s", "url": "https://lms.example.edu", "moodle": {"source": str(fake_moodle)},
                      "kubernetes": {"host": "lms.example.edu", "database": "external", "database_host": "pg.x"}},
                     site_dir=site_dir)
    with pytest.raises(KitError, match="snapshot the managed PostgreSQL"):
        K8sTarget(ext).require_backup(False)
    K8sTarget(ext).require_backup(True)


def test_upgrade_with_fake_helm_refuses_an_undeployed_release(site, monkeypatch):
    monkeypatch.setattr(driver, "require_helm", lambda: 3)
    monkeypatch.setattr(driver, "capture", lambda cmd, **kw: NS(returncode=1, stdout="", stderr="not found"))
    with pytest.raises(KitError, match="is not deployed in namespace lms: run `kit up` first"):
        K8sTarget(site).upgrade(backup_now=False)


# --- values that do not fit ---------------------------------------------------------------------------

def test_url_and_ingress_host_must_agree(site_dir):
    from kit.k8s.values import host_of

    bad = parse_site({"target": "k8s", "url": "https://other.example.edu", "kubernetes": {"host": "lms.example.edu"}},
                     site_dir=site_dir)
    with pytest.raises(KitError, match="set url: https://lms.example.edu"):
        host_of(bad)
    port = parse_site({"target": "k8s", "url": "http://lms.example.edu:8080"}, site_dir=site_dir)
    with pytest.raises(KitError, match="has a port"):
        host_of(port)


# --- the CLI ------------------------------------------------------------------------------------

def test_cli_init_and_render_for_k8s(tmp_path, fake_moodle):
    result = kit("init", "--target", "k8s", "--users", "5000", "--namespace", "lms", "--host", "lms.example.edu",
                 "--moodle-source", str(fake_moodle), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load((tmp_path / "site.yaml").read_text())
    assert data["url"] == "https://lms.example.edu"
    assert data["kubernetes"] == {"namespace": "lms", "host": "lms.example.edu"}
    result = kit("render", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "build" / "moodle" / "k8s"
    assert {p.name for p in out.iterdir()} >= {"values.yaml", "manifests.yaml", "postgresql.conf"}
    values = yaml.safe_load((out / "values.yaml").read_text())
    assert values["moodle"]["host"] == "lms.example.edu" and values["moodle"]["version"] == "2024100706.00"
    docs = [d for d in yaml.safe_load_all((out / "manifests.yaml").read_text()) if d]
    assert {d["kind"] for d in docs} >= {"Deployment", "Ingress", "Cluster", "Job", "ConfigMap"}
    assert all(d["metadata"]["namespace"] == "lms" for d in docs)
    secrets = yaml.safe_load((tmp_path / ".kit" / "moodle" / "secrets.yaml").read_text())
    everything = "".join(p.read_text() for p in out.iterdir()) + result.stdout + result.stderr
    for value in secrets.values():
        assert value not in everything


def test_cli_namespace_flag_needs_target_k8s(tmp_path):
    result = kit("init", "--namespace", "lms", cwd=tmp_path)
    assert result.returncode == 3 and "--namespace and --host are for --target k8s" in result.stderr
    result = kit("init", "--target", "k8s", cwd=tmp_path)
    assert result.returncode == 3 and "--target k8s needs --host" in result.stderr
    assert not (tmp_path / "site.yaml").exists()


def test_cli_up_for_k8s_without_helm_is_one_line(tmp_path, fake_moodle):
    kit("init", "--target", "k8s", "--host", "lms.example.edu", "--moodle-source", str(fake_moodle), cwd=tmp_path)
    result = kit("up", cwd=tmp_path, env={"PATH": str(Path(sys.executable).parent)})
    assert result.returncode == 3
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: preflight failed: helm is not installed: install Helm 3.13 or later "
                     "(https://helm.sh/docs/intro/install/), then rerun; nothing was changed"]

