"""Every `kit` command on a `k8s` site, against a fake Kubernetes API and a fake helm (no
cluster and no helm CLI can run here), with a real PostgreSQL behind the port-forward for
the database figures. Each command works or refuses in one line, and no code path reaches
Docker or Ansible: both are replaced by tripwires.
"""
from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
import yaml

from kit import cli, db
from kit.config import load_secrets, load_site
from kit.identity import load as load_identity
from kit.k8s.values import monitor_secret_name, secret_name
from kit.targets import k8s
from tests.pg import MOODLE_TABLES, LocalPostgres, available


class ApiError(Exception):
    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.status = status


def deployment(name: str, component: str, replicas: int = 1) -> NS:
    return NS(metadata=NS(name=name, generation=1, labels={"app.kubernetes.io/component": component}),
              spec=NS(replicas=replicas),
              status=NS(replicas=replicas, updated_replicas=replicas, ready_replicas=replicas,
                        available_replicas=replicas, observed_generation=1))


def pod(name: str, component: str, containers: tuple[str, ...] = ("php",), labels: dict | None = None) -> NS:
    return NS(metadata=NS(name=name, labels={"app.kubernetes.io/component": component, **(labels or {})},
                          creation_timestamp=None),
              spec=NS(containers=[NS(name=c) for c in containers]),
              status=NS(phase="Running", container_statuses=[NS(ready=True, restart_count=0, image="kit/moodle:1")]))


class FakeCluster:
    """The API objects K8sTarget uses, recording what it asks."""

    def __init__(self) -> None:
        self.secrets: dict[str, object] = {}
        self.deployed = False          # helm upgrade --install sets it, helm uninstall clears it
        self.calls: list[tuple] = []
        self.execs: list[list[str]] = []
        pods = [pod("lms-moodle-web-a", "web", ("fpm", "nginx")), pod("lms-moodle-cron-b", "cron", ("cron",)),
                pod("lms-moodle-db-1", "database", ("postgres",),
                    {"cnpg.io/cluster": "lms-moodle-db", "cnpg.io/instanceRole": "primary"})]
        outer = self

        class Core:
            def read_namespace(self, name):
                return NS(metadata=NS(name=name))

            def read_namespaced_secret(self, name, ns):
                if name not in outer.secrets:
                    raise ApiError(404)
                return outer.secrets[name]

            def create_namespaced_secret(self, ns, body):
                outer.calls.append(("create_secret", body.metadata.name))
                if body.metadata.name in outer.secrets:
                    raise ApiError(409)
                outer.secrets[body.metadata.name] = body

            def replace_namespaced_secret(self, name, ns, body):
                outer.calls.append(("replace_secret", name))
                outer.secrets[name] = body

            def delete_namespaced_secret(self, name, ns):
                outer.calls.append(("delete_secret", name))
                outer.secrets.pop(name, None)

            def list_namespaced_pod(self, ns, label_selector):
                wanted = dict(part.split("=") for part in label_selector.split(",")
                              if not part.startswith("app.kubernetes.io/instance="))
                return NS(items=[p for p in pods if all(p.metadata.labels.get(k) == v for k, v in wanted.items())])

            def read_namespaced_pod_log(self, name, ns, container=None, since_seconds=None, tail_lines=None):
                outer.calls.append(("log", name, container, since_seconds, tail_lines))
                return f"log of {name}/{container}\n"

            def list_namespaced_persistent_volume_claim(self, ns, label_selector):
                return NS(items=[NS(metadata=NS(name="lms-moodle-moodledata"))])

            def delete_namespaced_persistent_volume_claim(self, name, ns):
                outer.calls.append(("delete_pvc", name))

        class Apps:
            def list_namespaced_deployment(self, ns, label_selector):
                if not outer.deployed:
                    return NS(items=[])
                return NS(items=[deployment("lms-moodle-web", "web", 2), deployment("lms-moodle-cron", "cron")])

        class Autoscaling:
            def list_namespaced_horizontal_pod_autoscaler(self, ns, label_selector):
                return NS(items=[])

        class Custom:
            def list_namespaced_custom_object(self, group, version, ns, plural, label_selector=None):
                if plural == "clusters":
                    return {"items": [{"metadata": {"name": "lms-moodle-db"}}]}
                return {"items": []}

            def patch_namespaced_custom_object(self, group, version, ns, plural, name, body):
                outer.calls.append(("patch", plural, name, body))

            def delete_namespaced_custom_object(self, group, version, ns, plural, name):
                outer.calls.append(("delete", plural, name))

        class Apiext:
            def read_custom_resource_definition(self, name):
                return NS(metadata=NS(name=name))

        self.cluster = k8s.Cluster(core=Core(), apps=Apps(), autoscaling=Autoscaling(), custom=Custom(),
                                   apiext=Apiext())

        def exec_in_pod(namespace, pod_name, container, argv, stdin=None):
            outer.execs.append([pod_name, container, *argv])
            return 0, ""
        self.cluster.exec_in_pod = exec_in_pod  # type: ignore[method-assign]


HISTORY = [{"revision": 1, "status": "superseded", "updated": "2026-11-30", "app_version": "4.5.6"},
           {"revision": 2, "status": "deployed", "updated": "2026-12-01", "app_version": "4.5.6"}]


@pytest.fixture(scope="module")
def pg():
    reason = available()
    if reason:
        pytest.skip(reason)
    with LocalPostgres() as server:
        yield server


@pytest.fixture
def k8s_site(tmp_path, fake_moodle, pg, monkeypatch):
    """A k8s site folder, its fake cluster and helm, and tripwires on Docker and Ansible."""
    monkeypatch.chdir(tmp_path)
    assert run_kit("init", "--target", "k8s", "--host", "lms.example.edu", "--namespace", "lms",
                   "--moodle-source", str(fake_moodle))[0] == 0
    data = yaml.safe_load(Path("site.yaml").read_text())
    data["kubernetes"]["release"] = "lms"
    Path("site.yaml").write_text(yaml.safe_dump(data))
    site = load_site("site.yaml")
    secrets = load_secrets(site)
    # The database the port-forward reaches: Moodle's tables and the kit's monitoring login.
    pg.sql("drop database if exists moodle; drop role if exists kit_monitor; drop role if exists moodle")
    pg.sql(f"create role moodle login password '{secrets['db_password']}'; create database moodle owner moodle")
    pg.sql("set role moodle;" + MOODLE_TABLES + "insert into mdl_config (name, value) values ('version', "
           "'2024100706.00'), ('release', '4.5.6 (Build: 20250811)'); insert into mdl_task_adhoc (classname, "
           "nextruntime) select 'x', extract(epoch from now())::bigint - 30 from generate_series(1, 7)",
           dbname="moodle")
    endpoint = db.Endpoint(host="127.0.0.1", port=pg.port)
    admin = db.Database(endpoint, db.Login("postgres", pg.admin_password), "admin")
    db.ensure_monitor_role(admin, endpoint, db.Login("kit_monitor", secrets["monitor_password"]))
    db.ensure_functions(admin, "kit_monitor", as_role="moodle")

    fake = FakeCluster()
    helm: list[list[str]] = []

    def fake_run(cmd, **kw):
        helm.append([str(c) for c in cmd])
        if "upgrade" in cmd and "--dry-run=server" not in cmd:
            fake.deployed = True
        if "uninstall" in cmd:
            fake.deployed = False
        return 0

    def fake_capture(cmd, **kw):
        helm.append([str(c) for c in cmd])
        if "history" in cmd:
            return NS(returncode=0, stdout=json.dumps(HISTORY), stderr="")
        return NS(returncode=0, stdout=json.dumps({"moodle": {"version": "2024100706.00"}}), stderr="")

    monkeypatch.setattr(k8s, "connect", lambda s: fake.cluster)
    monkeypatch.setattr(k8s, "require_helm", lambda: 3)
    monkeypatch.setattr(k8s, "run", fake_run)
    monkeypatch.setattr(k8s, "capture", fake_capture)
    monkeypatch.setattr(k8s, "pod_socket", lambda core, ns, name, port: lambda: socket.create_connection(
        ("127.0.0.1", pg.port)))
    monkeypatch.setattr(k8s.K8sTarget, "wait_ready", lambda self, timeout_s=0: (True, "serving"))

    def tripwire(what):
        def trip(*a, **kw):
            raise AssertionError(f"a k8s command reached {what}")
        return trip
    monkeypatch.setattr("kit.engine.Engine.local", tripwire("Docker (kit.engine)"))
    monkeypatch.setattr("docker.from_env", tripwire("Docker (the SDK)"))
    monkeypatch.setattr("kit.targets.ansible.playbook", tripwire("Ansible"))
    monkeypatch.setattr("kit.images.build_all", tripwire("docker build"))
    return site, fake, helm


def run_kit(*args: str) -> tuple[int, str, str]:
    """`kit ARGS` in this process (the fakes apply), as a shell would see it."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    code = 0
    old_argv = sys.argv
    sys.argv = ["kit", *args]
    try:
        with redirect_stdout(out), redirect_stderr(err):
            cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = old_argv
    return code, out.getvalue(), err.getvalue()


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("$ ")]
    assert len(lines) == 1, err
    return lines[0]


def test_up_status_doctor_and_releases_work_on_a_fake_k8s_api_with_a_real_database(k8s_site):
    site, fake, helm = k8s_site
    code, out, err = run_kit("up")
    assert code == 0, err
    assert "Site is up" in out
    assert {secret_name(site), monitor_secret_name(site)} <= set(fake.secrets)
    assert any(cmd[:5] == ["helm", "--namespace", "lms", "upgrade", "--install"] for cmd in helm)
    code, out, err = run_kit("status", "--json")
    assert code == 0, err
    status = json.loads(out)
    assert status["ready"] is True
    # Read through the port-forward relay from the real PostgreSQL by the monitoring role.
    assert status["queue"]["queued"] == 7 and status["queue"]["due"] == 7
    assert status["moodle_release"] == "4.5.6 (Build: 20250811)"
    code, out, err = run_kit("doctor")
    assert code == 0, out + err
    assert "7 adhoc tasks queued (7 due)" in out and "connections in use" in out
    code, out, err = run_kit("releases")
    assert code == 0 and "deployed" in out


def test_every_other_command_works_or_refuses_in_one_line_on_a_fake_k8s_api(k8s_site, tmp_path):
    site, fake, helm = k8s_site
    assert run_kit("up")[0] == 0
    backup_dir = tmp_path / "some-backup"
    backup_dir.mkdir()
    works = {
        ("plan",): "Plan for",
        ("render",): "manifests",
        ("up", "--dry-run"): "dry run",
        ("upgrade",): "Release is live",
        ("rollback", "--yes"): "Rolled back to revision 1",
        ("scale", "web=3", "workers=2"): "scaled",
        ("maintenance", "on", "--message", "Back at 10"): "",
        ("maintenance", "off"): "",
        ("logs", "web", "--since", "5m", "--tail", "20"): "log of lms-moodle-web-a/fpm",
        ("logs",): "log of lms-moodle-cron-b/cron",
        ("admin", "reset-password"): "stored in",
        ("adopt",): "adopted",
    }
    for args, needle in works.items():
        code, out, err = run_kit(*args)
        assert code == 0, (args, out, err)
        assert needle in out, (args, out)
    assert yaml.safe_load(Path("site.yaml").read_text())["scale"] == {"web_replicas": 3, "workers": 2}
    maintenance = [e for e in fake.execs if "admin/cli/maintenance.php" in e]
    assert [e[-1] for e in maintenance] == ["--enable", "--disable"]
    assert ["lms-moodle-cron-b", "cron", "php", "admin/cli/cfg.php", "--name=maintenance_message",
            "--set=Back at 10"] in fake.execs
    logs = [c for c in fake.calls if c[0] == "log" and c[1] == "lms-moodle-web-a"]
    assert logs and logs[0][3:] == (300, 20)
    refused = {
        ("backup",): "`kit backup` is not available on target k8s: CloudNativePG backs up",
        ("restore", str(backup_dir), "--yes"): "`kit restore` is not available on target k8s",
        ("secrets", "rotate", "--yes"): "`kit secrets rotate` is not available on target k8s",
        ("scale", "web=0"): "scale.web_replicas",
        ("scale", "web=\u0663"): "use web=N",
        ("logs", "--since", "yesterday"): "--since 'yesterday'",
    }
    for args, needle in refused.items():
        code, out, err = run_kit(*args)
        assert code in (2, 3), (args, code, out, err)
        assert needle in one_line(err), (args, err)
    code, out, err = run_kit("down", "--destroy-data", "--yes")
    assert code == 0, err
    assert ("delete", "clusters", "lms-moodle-db") in fake.calls and ("delete_pvc", "lms-moodle-moodledata") in fake.calls
    assert not fake.secrets


def test_a_k8s_site_made_from_another_folder_is_refused_on_a_fake_k8s_api(k8s_site, tmp_path, monkeypatch):
    site, fake, helm = k8s_site
    assert run_kit("up")[0] == 0
    mine = load_identity(site)
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    assert run_kit("init", "--target", "k8s", "--host", "lms.example.edu", "--namespace", "lms")[0] == 0
    data = yaml.safe_load(Path("site.yaml").read_text())
    data["kubernetes"]["release"] = "lms"
    Path("site.yaml").write_text(yaml.safe_dump(data))
    before = dict(fake.secrets)
    calls = len(helm)
    for args in (("down", "--yes"), ("upgrade",), ("scale", "workers=4"), ("maintenance", "on"), ("status",)):
        code, out, err = run_kit(*args)
        assert code == 3, (args, out, err)
        line = one_line(err)
        assert "belongs to another folder" in line and str(site.site_dir) in line, line
    assert fake.secrets == before
    assert not [c for c in fake.calls if c[0] in ("create_secret", "replace_secret", "delete_secret")][2:]
    assert all("history" in cmd or "get" in cmd for cmd in helm[calls:]), helm[calls:]
    assert mine is not None and fake.secrets[secret_name(site)].metadata.labels["kit.site-id"] == mine.id
