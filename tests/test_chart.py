"""The Helm chart, rendered by a real Helm engine (helm-python-sdk: Helm's Go SDK) and checked
against the Kubernetes OpenAPI schemas (kubernetes-validate, strict) of three minor versions.

No cluster runs here: CRD objects (CloudNativePG, KEDA) are checked structurally by this
file's own rules, and nothing here proves a pod starts. Four value sets: the chart's
defaults, an external database, CloudNativePG + pgbouncer + KEDA, and a 20000-user plan.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import re
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (Helm's Go SDK) is not installed")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError, all_versions  # noqa: E402
from kubernetes_validate.utils import validate as k8s_validate  # noqa: E402

from kit.config import parse_site  # noqa: E402
from kit.images import ImageSet  # noqa: E402
from kit.k8s import chart as kchart  # noqa: E402
from kit.k8s import chartdoc  # noqa: E402
from kit.k8s.values import CNPG_MANAGED, Scaling, chart_dir, chart_values, resources, scaling  # noqa: E402
from kit.sizing import plan  # noqa: E402

CHART = chart_dir()
RELEASE, NAMESPACE = "lms", "lms"
IMAGES = ImageSet("-", "registry.example.edu:5000/kit/moodle:4a5b6c7d8e9f",
                  "registry.example.edu:5000/kit/moodle-web:4a5b6c7d8e9f",
                  "-", "registry.example.edu:5000/kit/redis:0a1b2c3d4e5f", "-")
MOODLE_VERSION = "2024100706.00"
#: Kubernetes minors validated: the newest kubernetes-validate ships and the two before it.
K8S_VERSIONS = sorted({".".join(v.split(".")[:2]) for v in all_versions()},
                      key=lambda v: tuple(int(x) for x in v.split(".")))[-3:]

SITES = {
    "external-db": {
        "target": "k8s", "users": 5000, "url": "https://lms.example.edu", "host": {"cpus": 16, "memory_gb": 64},
        "kubernetes": {"namespace": NAMESPACE, "release": RELEASE, "host": "lms.example.edu", "database": "external",
                       "database_host": "pg.lms.example.internal", "database_user": "moodle_app",
                       "ingress_class": "nginx", "tls_secret": "lms-tls", "storage_class": "nfs-client"}},
    "cloudnativepg-keda": {
        "target": "k8s", "users": 5000, "url": "https://lms.example.edu", "host": {"cpus": 16, "memory_gb": 64},
        "kubernetes": {"namespace": NAMESPACE, "release": RELEASE, "host": "lms.example.edu", "keda": True,
                       "pgbouncer": True, "cert_manager_issuer": "letsencrypt", "database_instances": 3}},
    # `kit plan --users 20000` for a cluster budget of 64 CPUs / 256 GB.
    "large-20000": {
        "target": "k8s", "users": 20000, "url": "https://lms.example.edu", "host": {"cpus": 64, "memory_gb": 256},
        "kubernetes": {"namespace": NAMESPACE, "release": RELEASE, "host": "lms.example.edu", "keda": True,
                       "pgbouncer": True, "web_max_replicas": 30, "workers_max": 40}},
}
#: How people sign in (site.yaml's auth): the install Job applies it as `kit up` does.
SIGNIN = {"ldap": {"url": "ldaps://dc.example.edu", "base_dns": ["ou=students,dc=example,dc=edu"],
                   "bind_dn": "cn=moodle,ou=svc,dc=example,dc=edu", "user_type": "ad",
                   "user_attribute": "sAMAccountName"},
          "oauth2": [{"name": "microsoft", "provider": "microsoft", "client_id": "abc", "tenant": "t-1",
                      "domains": ["example.edu"]}],
          "mfa": {"admins": "totp"}}
SITES["signin"] = {"target": "k8s", "users": 300, "url": "https://lms.example.edu",
                   "kubernetes": {"namespace": NAMESPACE, "release": RELEASE, "host": "lms.example.edu"},
                   "auth": SIGNIN}
#: A cluster with the Prometheus operator: the chart adds exporters, ServiceMonitors, PrometheusRule.
SITES["monitoring"] = {"target": "k8s", "users": 300, "url": "https://lms.example.edu",
                       "kubernetes": {"namespace": NAMESPACE, "release": RELEASE, "host": "lms.example.edu",
                                      "monitoring": True},
                       "slo": {"p95_ms": 800}, "monitoring": {"queue_age_minutes": 15}}
VALUE_SETS = ["defaults", *SITES]
CRD_KINDS = {("postgresql.cnpg.io/v1", "Cluster"), ("postgresql.cnpg.io/v1", "Pooler"),
             ("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication"),
             ("monitoring.coreos.com/v1", "PrometheusRule"), ("monitoring.coreos.com/v1", "ServiceMonitor")}


def site_and_plan(name: str):
    site = parse_site(copy.deepcopy(SITES[name]), site_dir=Path("."), source=name)
    return site, plan(site)


@cache
def _values_json(name: str) -> str:
    if name == "defaults":
        return "{}"
    site, tuning = site_and_plan(name)
    return json.dumps(chart_values(site, tuning, IMAGES, MOODLE_VERSION))


def values_for(name: str) -> dict:
    return json.loads(_values_json(name))


def render(values: dict, *, upgrade: bool = False) -> list[dict]:
    return kchart.objects(kchart.template(values, release=RELEASE, namespace=NAMESPACE, upgrade=upgrade))


@cache
def _rendered_json(name: str) -> str:
    return json.dumps(render(values_for(name)))


def rendered(name: str) -> list[dict]:
    return json.loads(_rendered_json(name))


def find(objs: list[dict], kind: str, component: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind and (
        component is None or o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component)]


def one(objs: list[dict], kind: str, component: str | None = None) -> dict:
    found = find(objs, kind, component)
    assert len(found) == 1, f"{len(found)} {kind} {component}"
    return found[0]


def pod_specs(objs: list[dict]) -> list[tuple[str, dict]]:
    return [(f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
            for o in objs if o["kind"] in ("Deployment", "StatefulSet", "Job")]


def claim_templates(objs: list[dict]) -> set[str]:
    return {t["metadata"]["name"] for o in objs if o["kind"] == "StatefulSet"
            for t in o["spec"].get("volumeClaimTemplates", [])}


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def render_error(values: dict) -> str:
    with pytest.raises(Exception) as info:
        render(values)
    return str(info.value)


# --- 1. Helm lint and Kubernetes schemas ----------------------------------------------------

def test_three_kubernetes_minors_are_validated():
    assert len(K8S_VERSIONS) == 3
    newest = tuple(int(x) for x in K8S_VERSIONS[-1].split("."))
    assert [tuple(int(x) for x in v.split(".")) for v in K8S_VERSIONS] == [
        (newest[0], newest[1] - 2), (newest[0], newest[1] - 1), newest]


@pytest.mark.parametrize("name", VALUE_SETS)
@pytest.mark.parametrize("kube", K8S_VERSIONS)
def test_helm_lint_strict_is_clean(name, kube):
    report = helm.lint(str(CHART), values_for(name), strict=True, namespace=NAMESPACE, kube_version=f"v{kube}.0")
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize("name", VALUE_SETS)
@pytest.mark.parametrize("kube", K8S_VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_schema(name, kube):
    checked = 0
    for obj in rendered(name):
        key = (obj["apiVersion"], obj["kind"])
        try:
            k8s_validate(obj, kube, strict=True)
            checked += 1
        except SchemaNotFoundError:
            # kubernetes-validate only warns on unknown kinds; we allow exactly the CRDs we check below.
            assert key in CRD_KINDS, f"no schema for {key}"
        except ValidationError as err:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for {kube}: "
                        f"{'.'.join(map(str, err.path))}: {err.message}")
    assert checked >= 15


def test_the_schema_validation_would_catch_a_mistake():
    """Strict schemas reject an unknown field: the check above is not vacuous."""
    dep = copy.deepcopy(one(rendered("external-db"), "Deployment", "web"))
    dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailabel"] = 0
    with pytest.raises(ValidationError):
        k8s_validate(dep, K8S_VERSIONS[-1], strict=True)


def _need(obj: dict, path: str):
    node = obj
    for key in path.split("."):
        assert isinstance(node, dict) and key in node, f"{obj['kind']}/{obj['metadata']['name']}: no {path}"
        node = node[key]
    return node


def check_crd(obj: dict) -> None:
    """Structural rules for the CRD objects (no OpenAPI schema for them here)."""
    kind = obj["kind"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
    assert obj["metadata"]["namespace"] == NAMESPACE
    if kind == "Cluster":
        assert isinstance(_need(obj, "spec.instances"), int) and obj["spec"]["instances"] >= 1
        assert isinstance(_need(obj, "spec.imageName"), str)
        assert re.fullmatch(r"\d+(Gi|Mi|Ti)", _need(obj, "spec.storage.size"))
        for key in ("database", "owner", "secret.name"):
            _need(obj, f"spec.bootstrap.initdb.{key}")
        params = _need(obj, "spec.postgresql.parameters")
        assert params and all(isinstance(v, str) for v in params.values())
        assert _need(obj, "spec.resources.requests.memory") == _need(obj, "spec.resources.limits.memory")
        assert set(obj["spec"]) <= {"instances", "imageName", "primaryUpdateStrategy", "enableSuperuserAccess",
                                    "bootstrap", "postgresql", "storage", "resources", "affinity", "managed"}
        for role in obj["spec"].get("managed", {}).get("roles", []):
            # CloudNativePG's RoleConfiguration: the kit's read-only monitoring login.
            assert set(role) <= {"name", "ensure", "login", "inRoles", "passwordSecret"}
            assert role["inRoles"] == ["pg_monitor"] and role["login"] is True and role["passwordSecret"]["name"]
    elif kind == "Pooler":
        _need(obj, "spec.cluster.name")
        assert _need(obj, "spec.type") in ("rw", "ro")
        assert _need(obj, "spec.pgbouncer.poolMode") in ("session", "transaction")
        assert all(isinstance(v, str) for v in _need(obj, "spec.pgbouncer.parameters").values())
    elif kind == "ScaledObject":
        _need(obj, "spec.scaleTargetRef.name")
        low, high = _need(obj, "spec.minReplicaCount"), _need(obj, "spec.maxReplicaCount")
        assert isinstance(low, int) and isinstance(high, int) and 0 <= low <= high
        for trigger in _need(obj, "spec.triggers"):
            assert trigger["type"] == "postgresql"
            assert all(isinstance(v, str) for v in trigger["metadata"].values())
            assert {"host", "port", "dbName", "query", "targetQueryValue", "sslmode"} <= set(trigger["metadata"])
            assert "password" not in trigger["metadata"]
            assert trigger["authenticationRef"]["name"]
    elif kind == "TriggerAuthentication":
        refs = _need(obj, "spec.secretTargetRef")
        assert {r["parameter"] for r in refs} >= {"password"}
        assert all(r["name"] and r["key"] for r in refs)
    elif kind == "PrometheusRule":
        for group in _need(obj, "spec.groups"):
            assert group["name"] and group["rules"]
            for rule in group["rules"]:
                assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}
                assert rule["annotations"]["runbook"].startswith("runbooks/")
    elif kind == "ServiceMonitor":
        assert _need(obj, "spec.selector.matchLabels")
        for endpoint in _need(obj, "spec.endpoints"):
            assert endpoint["port"] and endpoint["interval"]
    else:
        pytest.fail(f"no rules for {kind}")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_crd_objects_pass_the_structural_checks(name):
    objs = rendered(name)
    crds = [o for o in objs if (o["apiVersion"], o["kind"]) in CRD_KINDS]
    for obj in crds:
        check_crd(obj)
    kinds = {o["kind"] for o in crds}
    if name in ("cloudnativepg-keda", "large-20000"):
        assert kinds == {"Cluster", "Pooler", "ScaledObject", "TriggerAuthentication"}
    elif name == "external-db":
        assert kinds == set()


@pytest.mark.parametrize("name", VALUE_SETS)
def test_references_between_objects_resolve(name):
    objs = rendered(name)
    values = kchart.reference_values() if name == "defaults" else values_for(name)
    by_kind: dict[str, set[str]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], set()).add(o["metadata"]["name"])
    fullname = one(objs, "Deployment", "web")["metadata"]["name"].removesuffix("-web")
    existing_secret = values["auth"]["existingSecret"] or f"{fullname}-secrets"
    for where, spec in pod_specs(objs):
        assert spec.get("serviceAccountName") in by_kind["ServiceAccount"], where
        for vol in spec.get("volumes", []):
            if "configMap" in vol:
                assert vol["configMap"]["name"] in by_kind["ConfigMap"], (where, vol)
            if "persistentVolumeClaim" in vol:
                assert vol["persistentVolumeClaim"]["claimName"] in by_kind["PersistentVolumeClaim"], where
            if "secret" in vol:   # the site's Secret, or the monitoring role's (CloudNativePG's basic-auth)
                assert vol["secret"]["secretName"] in (existing_secret,
                                                       values["database"]["cloudnativepg"]["monitorRole"]["secret"])
        for c in spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == existing_secret, (where, e["name"])
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in spec["volumes"]} | claim_templates(objs), where
    web_labels = one(objs, "Deployment", "web")["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        for o in find(objs, kind, "web"):
            selector = o["spec"]["selector"] if kind == "Service" else o["spec"]["selector"]["matchLabels"]
            assert selector.items() <= web_labels.items()
    for ing in find(objs, "Ingress"):
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] in by_kind["Service"]
    for o in find(objs, "HorizontalPodAutoscaler") + find(objs, "ScaledObject"):
        assert o["spec"]["scaleTargetRef"]["name"] in by_kind["Deployment"]


def test_the_kits_values_satisfy_the_charts_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(defaults, schema)
    with helm.Chart.load(str(CHART)) as loaded:
        for name in SITES:
            loaded.validate_schema(values_for(name))
            jsonschema.validate(values_for(name), schema)
        with pytest.raises(helm.HelmError):
            loaded.validate_schema({"web": {"replicas": 0}})
        with pytest.raises(helm.HelmError):
            loaded.validate_schema({"workers": {"keda": {"maxReplica": 3}}})


# --- 2. The classic chart mistakes --------------------------------------------------------------

@pytest.mark.parametrize("name", VALUE_SETS)
def test_cron_never_runs_in_web_pods(name):
    objs = rendered(name)
    web = one(objs, "Deployment", "web")["spec"]["template"]["spec"]
    for c in web["containers"]:
        command = " ".join(c.get("command", []) + c.get("args", []))
        assert "cron" not in command and "adhoc_task" not in command, c["name"]
        if "env" in c:
            assert env_of(c)["KIT_ROLE"]["value"] == "web"
    config = next(o for o in find(objs, "ConfigMap") if o["metadata"]["name"].endswith("-config"))
    assert "$CFG->cronclionly = true;" in config["data"]["config.php"]
    cron = one(objs, "Deployment", "cron")
    assert cron["spec"]["replicas"] == 1
    assert cron["spec"]["strategy"] == {"type": "Recreate"}
    runner, *sidecars = cron["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in sidecars] == (["postgres-exporter"] if name == "monitoring" else [])
    assert "admin/cli/cron.php" in runner["command"] and any(a.startswith("--keep-alive=") for a in runner["command"])
    assert env_of(runner)["KIT_ROLE"]["value"] == "cron"
    (worker,) = one(objs, "Deployment", "worker")["spec"]["template"]["spec"]["containers"]
    assert "admin/cli/adhoc_task.php" in worker["command"] and "--execute" in worker["command"]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rolling_updates_never_take_a_serving_pod_away(name):
    objs = rendered(name)
    for component in ("web", "worker"):
        strategy = one(objs, "Deployment", component)["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate"
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0
        # kit plan's max_connections and adhoc concurrency count exactly one extra pod.
        assert strategy["rollingUpdate"]["maxSurge"] == 1
    pdb = one(objs, "PodDisruptionBudget", "web")
    assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("name", VALUE_SETS)
def test_web_pods_have_separate_liveness_readiness_and_startup_probes(name):
    web = one(rendered(name), "Deployment", "web")["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in web["containers"] if c["name"] != "nginx-exporter"}
    assert set(containers) == {"nginx", "php-fpm"}
    for c in containers.values():
        assert "livenessProbe" in c and "startupProbe" in c, c["name"]
        assert c["lifecycle"]["preStop"]["exec"]["command"], c["name"]
    ready = " ".join(containers["nginx"]["readinessProbe"]["exec"]["command"])
    # Ready = the login page renders: database reachable, no upgrade redirect, no maintenance 503.
    assert "/login/index.php" in ready and "logintoken" in ready and "curl -fsS" in ready
    host = values_for(name)["moodle"]["host"] if name != "defaults" else "moodle.example.com"
    assert f"Host: {host}" in ready
    # Alive = php-fpm answers its ping, and nginx itself: a slow database never restarts pods.
    alive = " ".join(containers["php-fpm"]["livenessProbe"]["exec"]["command"])
    assert "fpm-ping" in alive and "login" not in alive
    assert containers["nginx"]["livenessProbe"]["httpGet"]["path"] == "/kit-nginx-health"
    assert "readinessProbe" not in containers["php-fpm"] or "login" not in str(containers["php-fpm"]["readinessProbe"])
    assert containers["nginx"]["startupProbe"]["failureThreshold"] * containers["nginx"]["startupProbe"][
        "periodSeconds"] >= 300
    # Drain before stopping: nginx quits after the drain pause, php-fpm after nginx.
    nginx_stop = " ".join(containers["nginx"]["lifecycle"]["preStop"]["exec"]["command"])
    fpm_stop = " ".join(containers["php-fpm"]["lifecycle"]["preStop"]["exec"]["command"])
    drain = int(re.search(r"sleep (\d+)", nginx_stop).group(1))
    assert "nginx -s quit" in nginx_stop and drain > 0
    assert int(re.search(r"sleep (\d+)", fpm_stop).group(1)) > drain and "kill -QUIT 1" in fpm_stop
    assert web["terminationGracePeriodSeconds"] > drain + 30


SECRET_VALUES = {"dbPassword": "db-Secret-9f8e7d", "redisPassword": "redis-Secret-6c5b4a",
                 "adminPassword": "admin-Secret-3a2b1c", "loadtestPassword": "lt-Secret-0d9c8b"}


def test_secrets_never_reach_configmaps_notes_or_command_lines():
    values = values_for("cloudnativepg-keda")
    values["auth"].update({"create": True, "dbUser": "moodle", **SECRET_VALUES})
    with helm.Chart.load(str(CHART)) as loaded:
        texts = loaded.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    notes = texts.pop("moodle/templates/NOTES.txt")
    objs = kchart.objects(kchart._join(texts))
    secret = one(objs, "Secret")
    assert secret["stringData"]["password"] == SECRET_VALUES["dbPassword"]
    assert re.fullmatch(r"user default on #[0-9a-f]{64} ~\* &\* \+@all\n", secret["stringData"]["redis-users.acl"])
    everything_else = json.dumps([o for o in objs if o["kind"] != "Secret"]) + notes
    for value in SECRET_VALUES.values():
        assert value not in everything_else
    for where, spec in pod_specs(objs):
        for c in spec["containers"]:
            for e in c.get("env", []):
                if re.search(r"PASSWORD|PASS$|SECRET", e["name"]):
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], (where, e["name"])


def test_the_kit_puts_no_secret_in_values():
    for name in SITES:
        values = values_for(name)
        assert values["auth"]["create"] is False and values["auth"]["existingSecret"]
        assert all(values["auth"][k] == "" for k in SECRET_VALUES)


def _checksums(objs: list[dict]) -> dict[str, str]:
    return {f"{o['kind']}/{o['metadata']['labels']['app.kubernetes.io/component']}":
            o["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for o in objs if o["kind"] in ("Deployment", "StatefulSet")}


@pytest.mark.parametrize("key, rolls", [
    ("phpIni", {"Deployment/web", "Deployment/cron", "Deployment/worker"}),
    ("configPhp", {"Deployment/web", "Deployment/cron", "Deployment/worker"}),
    ("fpmPool", {"Deployment/web"}),
    ("nginx", {"Deployment/web"}),
    ("redis", {"StatefulSet/redis"}),
])
def test_a_config_change_rolls_exactly_the_pods_that_read_it(key, rolls):
    values = values_for("external-db")
    before = _checksums(render(values))
    values["config"][key] += "\n; changed\n" if key != "configPhp" else "\n// changed\n"
    after = _checksums(render(values))
    assert {k for k in before if before[k] != after[k]} == rolls


def test_moodledata_must_be_readwritemany():
    values = values_for("cloudnativepg-keda")
    pvc = next(o for o in rendered("cloudnativepg-keda") if o["kind"] == "PersistentVolumeClaim"
               and o["metadata"]["labels"]["app.kubernetes.io/component"] == "moodledata")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    values["moodledata"]["accessMode"] = "ReadWriteOnce"
    assert "must be ReadWriteMany" in render_error(values)


@pytest.mark.parametrize("name", ["cloudnativepg-keda", "large-20000"])
def test_postgresql_parameters_are_kit_plans(name):
    site, tuning = site_and_plan(name)
    cluster = one(rendered(name), "Cluster")
    params = cluster["spec"]["postgresql"]["parameters"]
    assert params == {k: v for k, v in tuning.postgres.items() if k not in CNPG_MANAGED}
    # Only what CloudNativePG manages itself is left out, and nothing else.
    assert set(tuning.postgres) - set(params) == set(CNPG_MANAGED) == {"ssl"}
    # The pod gets the memory shared_buffers was planned as a quarter of.
    from kit.sizing import pg_to_kb
    assert cluster["spec"]["resources"]["limits"]["memory"] == f"{pg_to_kb(params['shared_buffers']) * 4 // 1024}Mi"


def test_external_database_gets_no_cluster_and_its_host_in_config_php():
    objs = rendered("external-db")
    assert not find(objs, "Cluster")
    config = next(o for o in find(objs, "ConfigMap") if o["metadata"]["name"].endswith("-config"))
    assert "$CFG->dbhost    = 'pg.lms.example.internal';" in config["data"]["config.php"]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_config_php_points_at_the_charts_own_services(name):
    objs = rendered(name)
    config = next(o for o in find(objs, "ConfigMap") if o["metadata"]["name"].endswith("-config"))
    php = config["data"]["config.php"]
    db = re.search(r"\$CFG->dbhost\s*=\s*'([^']+)'", php).group(1)
    redis = re.search(r"\$CFG->session_redis_host = '([^']+)'", php).group(1)
    suffix = f".{NAMESPACE}.svc.cluster.local"
    services = {o["metadata"]["name"] for o in find(objs, "Service")}
    assert redis.endswith(suffix) and redis.removesuffix(suffix) in services
    clusters = find(objs, "Cluster")
    poolers = find(objs, "Pooler")
    if poolers:   # CloudNativePG makes a Service named after the Pooler
        assert db == poolers[0]["metadata"]["name"] + suffix
    elif clusters:  # ... and <cluster>-rw for the primary
        assert db == clusters[0]["metadata"]["name"] + "-rw" + suffix
    for _, spec in pod_specs(objs):
        for c in spec["containers"]:
            env = env_of(c)
            if "KIT_DB_HOST" in env:
                assert env["KIT_DB_HOST"]["value"] == db and env["KIT_REDIS_HOST"]["value"] == redis


def test_the_application_cache_store_follows_the_lever_in_every_moodle_pod():
    """configure.php (install Job) maps the cache where KIT_APP_CACHE says: from the plan's lever
    redis_cache, on by default on k8s (pods share no local disk); a site that turns it off gets
    files in every pod, the install Job included."""
    assert yaml.safe_load((CHART / "values.yaml").read_text())["redis"]["applicationCache"] is True
    for cache_on in (True, False):
        seen = {env_of(c)["KIT_APP_CACHE"]["value"]
                for _, spec in pod_specs(render({"redis": {"applicationCache": cache_on}}))
                for c in spec["containers"] if "KIT_DB_HOST" in env_of(c)}
        assert seen == {"redis" if cache_on else "file"}
    site, tuning = site_and_plan("signin")
    off = dataclasses.replace(tuning, levers={**tuning.levers, "redis_cache": False})
    assert chart_values(site, off, IMAGES, MOODLE_VERSION)["redis"]["applicationCache"] is False


# --- the rest of what the issue asks -------------------------------------------------------------

@pytest.mark.parametrize("name", VALUE_SETS)
def test_pods_run_non_root_read_only_without_capabilities(name):
    for where, spec in pod_specs(rendered(name)):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, where
        assert pod["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False, where
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False, (where, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])


@pytest.mark.parametrize("name", list(SITES))
def test_resources_come_from_the_plan(name):
    site, tuning = site_and_plan(name)
    objs = rendered(name)
    expected = resources(site, tuning)
    for where, spec in pod_specs(objs):
        for c in spec["containers"]:
            assert c["resources"]["requests"] and c["resources"]["limits"], (where, c["name"])
    web = {c["name"]: c for c in one(objs, "Deployment", "web")["spec"]["template"]["spec"]["containers"]}
    assert web["php-fpm"]["resources"] == expected["fpm"]
    # php-fpm's CPU request is its children over kit.sizing's children per CPU.
    from kit.sizing import CHILDREN_PER_CPU
    assert int(web["php-fpm"]["resources"]["requests"]["cpu"].rstrip("m")) == \
        -(-tuning.fpm_max_children * 1000 // CHILDREN_PER_CPU)
    config = next(o for o in find(objs, "ConfigMap") if o["metadata"]["name"].endswith("-config"))
    assert f"pm.max_children = {tuning.fpm_max_children}\n" in config["data"]["fpm-pool.conf"]
    assert f"opcache.memory_consumption = {tuning.opcache_memory_mb}\n" in config["data"]["php.ini"]
    redis_conf = one(objs, "ConfigMap", "redis")["data"]["redis.conf"]
    assert f"maxmemory {tuning.redis_maxmemory_mb}mb" in redis_conf
    dep = one(objs, "Deployment", "web")
    if values_for(name)["web"]["autoscaling"]["enabled"]:
        assert "replicas" not in dep["spec"]   # the HPA owns the count
        assert one(objs, "HorizontalPodAutoscaler", "web")["spec"]["minReplicas"] == tuning.web_replicas
    else:
        assert dep["spec"]["replicas"] == tuning.web_replicas


@pytest.mark.parametrize("name", list(SITES))
def test_autoscaling_never_opens_more_connections_than_postgresql_takes(name):
    site, tuning = site_and_plan(name)
    scale = scaling(site, tuning)
    max_conn = int(tuning.postgres["max_connections"])
    if site.kubernetes.pgbouncer:
        pooler = one(rendered(name), "Pooler")
        assert int(pooler["spec"]["pgbouncer"]["parameters"]["default_pool_size"]) < max_conn
        assert int(pooler["spec"]["pgbouncer"]["parameters"]["max_client_conn"]) >= Scaling.connections(
            tuning.fpm_max_children, scale.web_max, scale.workers_max)
    else:
        assert Scaling.connections(tuning.fpm_max_children, scale.web_max, scale.workers_max) <= max_conn


def test_without_pgbouncer_the_kit_refuses_autoscaling_beyond_max_connections():
    from kit.errors import KitError

    data = copy.deepcopy(SITES["cloudnativepg-keda"])
    data["kubernetes"].update(pgbouncer=False, web_max_replicas=50)
    site = parse_site(data, site_dir=Path("."))
    with pytest.raises(KitError, match="max_connections"):
        scaling(site, plan(site))
    data["kubernetes"].pop("web_max_replicas")
    site = parse_site(data, site_dir=Path("."))
    tuning = plan(site)
    scale = scaling(site, tuning)
    assert scale.web_max >= tuning.web_replicas and scale.workers_max >= tuning.workers
    assert Scaling.connections(tuning.fpm_max_children, scale.web_max, scale.workers_max) <= \
        int(tuning.postgres["max_connections"])
    assert Scaling.connections(tuning.fpm_max_children, scale.web_max + 1, scale.workers_max) > \
        int(tuning.postgres["max_connections"])


def test_keda_scales_workers_on_the_adhoc_queue():
    site, tuning = site_and_plan("cloudnativepg-keda")
    objs = rendered("cloudnativepg-keda")
    scaled = one(objs, "ScaledObject")
    assert scaled["spec"]["minReplicaCount"] == tuning.workers
    assert scaled["spec"]["maxReplicaCount"] == scaling(site, tuning).workers_max > tuning.workers
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    assert "mdl_task_adhoc" in query and "nextruntime" in query
    assert "replicas" not in one(objs, "Deployment", "worker")["spec"]
    assert not find(objs, "HorizontalPodAutoscaler", "worker")
    # Without KEDA: a fixed count from the plan.
    fixed = one(rendered("external-db"), "Deployment", "worker")
    assert fixed["spec"]["replicas"] == site_and_plan("external-db")[1].workers


def test_ingress_serves_the_host_with_tls_and_cert_manager():
    ing = one(rendered("cloudnativepg-keda"), "Ingress")
    assert ing["spec"]["rules"][0]["host"] == "lms.example.edu"
    assert ing["spec"]["tls"][0]["hosts"] == ["lms.example.edu"]
    assert ing["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"
    plain = one(rendered("external-db"), "Ingress")
    assert plain["spec"]["ingressClassName"] == "nginx" and plain["spec"]["tls"][0]["secretName"] == "lms-tls"
    assert "cert-manager.io/cluster-issuer" not in plain["metadata"]["annotations"]


def test_install_is_a_plain_job_per_revision_and_upgrade_a_pre_upgrade_hook():
    values = values_for("external-db")
    first = render(values)
    install = one(first, "Job", "install")
    assert "helm.sh/hook" not in install["metadata"].get("annotations", {})
    assert install["metadata"]["name"].endswith("-install-r1") and install["spec"]["backoffLimit"] == 0
    assert install["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "/opt/kit-chart/install.sh"
    later = kchart.objects(kchart.template(values, release=RELEASE, namespace=NAMESPACE, revision=7, upgrade=True))
    assert one(later, "Job", "install")["metadata"]["name"].endswith("-install-r7")
    upgrade = one(later, "Job", "upgrade")
    assert upgrade["metadata"]["annotations"]["helm.sh/hook"] == "pre-upgrade"
    assert upgrade["spec"]["backoffLimit"] == 0
    # The hook reads hook copies of the ConfigMaps, made before it (lower weight).
    volumes = {v["name"]: v for v in upgrade["spec"]["template"]["spec"]["volumes"]}
    hook_maps = {o["metadata"]["name"]: o for o in find(later, "ConfigMap")
                 if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "pre-upgrade"}
    for name in ("config", "scripts"):
        cm = hook_maps[volumes[name]["configMap"]["name"]]
        assert int(cm["metadata"]["annotations"]["helm.sh/hook-weight"]) < \
            int(upgrade["metadata"]["annotations"]["helm.sh/hook-weight"])
    plain_config = next(o for o in find(later, "ConfigMap") if o["metadata"]["name"].endswith("-config"))
    assert hook_maps[volumes["config"]["configMap"]["name"]]["data"] == plain_config["data"]


# --- one home for every setting -------------------------------------------------------------

def test_chart_defaults_are_what_the_kit_renders_for_the_reference_site():
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert defaults == kchart.reference_values()


def test_chart_files_are_the_kits_rendered_templates():
    for name, text in kchart.reference_files().items():
        assert (CHART / "files" / name).read_text() == text, \
            f"charts/moodle/files/{name} is stale: run `python -c 'from kit.k8s.chart import write_reference_files as w; w()'`"


def test_values_schema_is_strict_and_covers_every_value():
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict, values: dict, path: str) -> None:
        if node.get("additionalProperties") is False:
            assert set(node["properties"]) == set(values), path
            for key, value in values.items():
                if isinstance(value, dict):
                    walk(node["properties"][key], value, f"{path}.{key}")
    walk(schema, defaults, "")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**defaults, "replicaCount": 3}, schema)


def test_readme_values_table_is_generated_from_values_yaml():
    values_text = (CHART / "values.yaml").read_text()
    assert chartdoc.undocumented(values_text) == []
    readme = (CHART / "README.md").read_text()
    assert readme == chartdoc.readme_with_table(readme, values_text), \
        "charts/moodle/README.md is stale: run `python -m kit.k8s.chartdoc`"
    values = yaml.safe_load(values_text)
    for _, key, _ in chartdoc.params(values_text):
        chartdoc.lookup(values, key)  # every documented key exists


def test_every_object_carries_the_standard_labels():
    for name in VALUE_SETS:
        for obj in rendered(name):
            labels = obj["metadata"].get("labels", {})
            for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
                        "app.kubernetes.io/managed-by", "helm.sh/chart"):
                assert key in labels, (name, obj["kind"], obj["metadata"]["name"], key)
            assert labels["app.kubernetes.io/instance"] == RELEASE



@pytest.mark.parametrize("name", VALUE_SETS)
def test_workers_may_run_adhoc_tasks_and_nothing_else_does(name):
    """config.php takes task_adhoc_concurrency_limit from the environment; Moodle skips all adhoc
    work at 0, so workers need room for every replica autoscaling may add, and the rest 0."""
    values, objs = values_for(name), rendered(name)
    limits: dict[str, set[int]] = {}
    for _, spec in pod_specs(objs):
        for container in spec.get("containers", []):
            env = env_of(container)
            if "KIT_ROLE" in env:
                limits.setdefault(env["KIT_ROLE"]["value"], set()).add(
                    int(env["KIT_ADHOC_CONCURRENCY_LIMIT"]["value"]))
    workers = {**yaml.safe_load((CHART / "values.yaml").read_text())["workers"], **values.get("workers", {})}
    most = max(workers["replicas"], workers["keda"]["maxReplicas"] if workers["keda"]["enabled"] else 0,
               workers["autoscaling"]["maxReplicas"] if workers["autoscaling"]["enabled"] else 0)
    assert limits.pop("worker") == {workers["adhocConcurrencyLimit"]}
    assert workers["adhocConcurrencyLimit"] >= most + 1 and most >= 1
    assert limits and all(found == {0} for found in limits.values()), limits


# --- sign-in settings ---------------------------------------------------------------------

def test_the_install_job_applies_the_same_signin_text_as_the_docker_targets():
    """Byte for byte: the ConfigMap's signin.json is what `kit up` mounts on local, and the
    Job runs the image's signin.php on it (install.sh), as the Docker targets' configure does."""
    from kit.render import render_files

    local = parse_site({"name": "moodle", "users": 300, "auth": copy.deepcopy(SIGNIN)}, site_dir=Path("."),
                       source="local")
    local_text = render_files(local, plan(local))["signin.json"]
    objs = rendered("signin")
    config = next(o for o in find(objs, "ConfigMap") if "signin.json" in o.get("data", {}))
    assert config["data"]["signin.json"] == local_text
    assert json.loads(local_text)["enabled"] == ["ldap", "oauth2"]
    job = next(o for o in find(objs, "Job", "install"))
    pod = job["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/etc/moodle-kit/signin.json"]["subPath"] == "signin.json"
    secret_items = {i["key"] for v in pod["volumes"] if v["name"] == "secrets" for i in v["secret"]["items"]}
    assert {"ldap_bind_password", "oauth2_microsoft_secret", "admin_totp_secret"} <= secret_items
    scripts = next(o for o in find(objs, "ConfigMap") if "install.sh" in o.get("data", {}))
    assert "php /opt/kit/signin.php" in scripts["data"]["install.sh"]
    entrypoint = (Path(__file__).parents[1] / "images" / "moodle" / "kit" / "entrypoint.sh").read_text()
    assert "php /opt/kit/signin.php" in entrypoint.split("configure)")[1]
    # The defaults sign in with Moodle's own accounts only.
    default_config = next(o for o in find(rendered("defaults"), "ConfigMap") if "signin.json" in o.get("data", {}))
    assert json.loads(default_config["data"]["signin.json"])["enabled"] == []


# --- monitoring (mocked Kubernetes API: the objects are rendered by Helm's engine, not applied) -----

def test_monitoring_renders_the_same_alert_rules_and_exporters_only_when_asked():
    from kit.render import render_files

    site, tuning = site_and_plan("monitoring")
    objs = rendered("monitoring")
    rule = one(objs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(render_files(site, tuning)["alerts.yml"])   # the same rules text
    exprs = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert exprs["LatencyOverSlo"].endswith("> 0.8") and exprs["AdhocQueueOld"].endswith("> 900")
    web = one(objs, "Deployment", "web")["spec"]["template"]["spec"]
    exporter = next(c for c in web["containers"] if c["name"] == "nginx-exporter")
    assert exporter["image"] == "kit/monitor" or exporter["image"].startswith("kit/monitor")
    assert "nginx=9113=http://127.0.0.1:8081/stub_status" in exporter["command"]
    nginx = next(c for c in web["containers"] if c["name"] == "nginx")
    assert {"name": "status", "containerPort": 8081, "protocol": "TCP"} in nginx["ports"]
    cron = one(objs, "Deployment", "cron")["spec"]["template"]["spec"]
    pg = next(c for c in cron["containers"] if c["name"] == "postgres-exporter")
    assert any(m["mountPath"] == "/run/kit/monitor-secrets" for m in pg["volumeMounts"])
    assert not any("env" in c and any("PASSWORD" in e["name"] and "value" in e for e in c["env"])
                   for c in cron["containers"])     # the login is a mounted Secret, never a value
    monitors = {o["metadata"]["name"]: o for o in find(objs, "ServiceMonitor")}
    jobs = {r["replacement"] for m in monitors.values() for e in m["spec"]["endpoints"] for r in e["relabelings"]
            if r.get("targetLabel") == "job"}
    assert jobs == {"nginx", "fpm", "postgres"}     # the job names the rules read
    config = next(o for o in find(objs, "ConfigMap") if o["metadata"]["name"].endswith("-config"))
    assert config["data"]["pg-queries.yaml"] == render_files(site, tuning)["pg-queries.yaml"]
    # Without kubernetes.monitoring: none of it (a cluster without the operator's CRDs installs).
    plain = rendered("signin")
    assert not find(plain, "PrometheusRule") and not find(plain, "ServiceMonitor")
    assert all(c["name"] != "nginx-exporter" for c in one(plain, "Deployment", "web")["spec"]["template"]["spec"]["containers"])
