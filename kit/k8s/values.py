"""Site + Tuning -> the chart's values: every number the chart uses is decided here or in
kit.sizing, never in a template. The Moodle, PHP, nginx and Redis settings are the texts
kit.render renders for every target.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from kit import ROOT
from kit.config import Site
from kit.errors import KitError
from kit.images import ImageSet
from kit.render import SECRETS_DIR, Names, _env, database_vars, names_for, render_files, topology_for
from kit.sizing import CHILDREN_PER_CPU, DB_RAM_SHARE, PHP_WORKER_MB, Tuning, pg_to_kb

#: PostgreSQL parameters CloudNativePG sets itself and refuses in a Cluster spec, with why.
CNPG_MANAGED = {"ssl": "CloudNativePG always serves TLS with its own certificates"}

# Planning constants for pods, each a stated assumption (see resources()).
FPM_MASTER_MB = 64            # php-fpm master, shared libraries, a little headroom
MOODLE_EXTRA_MEMORY_MB = 512  # Moodle's extramemorylimit: backups, restores, reports raise PHP to it
CLI_OVERHEAD_MB = 128         # a PHP CLI process beside its memory_limit
JOB_MEMORY_MB = 2048          # install/upgrade may raise PHP to MEMORY_HUGE (2 GB)
REDIS_OVERHEAD_MB = 64
ADMIN_HEADROOM = 10           # kit plan's max_connections keeps 10 for admins; a pooler never uses them
ONE_OFF_CONNECTIONS = 3       # the cron runner, one Job (install/upgrade), KEDA's queue query
TASKS_PER_WORKER = 20         # KEDA adds a worker per 20 due adhoc tasks
SECRET_KEYS = ("username", "password", "redis-password", "redis-users.acl", "admin-password",
               "loadtest-password")

DB_HOST_PLACEHOLDER = '{{ include "moodle.database.host" . }}'
REDIS_HOST_PLACEHOLDER = '{{ include "moodle.redis.host" . }}'


def chart_dir() -> Path:
    """The chart ships beside the package, like playbooks/ (kit.render.playbooks_dir)."""
    return ROOT / "charts" / "moodle"


def secret_name(site: Site) -> str:
    return f"kit-{site.name}-secrets"


def monitor_secret_name(site: Site) -> str:
    """The basic-auth Secret of the read-only monitoring role (CloudNativePG manages the role)."""
    return f"kit-{site.name}-monitor"


def host_of(site: Site) -> str:
    """The public host: kubernetes.host, which must agree with url (Moodle's wwwroot)."""
    url_host = urlparse(site.url or "").hostname or ""
    host = site.kubernetes.host or url_host
    if site.kubernetes.host and url_host != site.kubernetes.host:
        raise KitError(f"site.yaml: kubernetes.host is {site.kubernetes.host} but url is {site.url}: "
                       f"set url: https://{site.kubernetes.host} (Moodle's wwwroot must be the Ingress host)")
    if urlparse(site.url or "").port not in (None, 80, 443):
        raise KitError(f"site.yaml: url {site.url} has a port: on Kubernetes the Ingress serves 80/443; "
                       f"set url: https://{host}")
    return host


class _ChartNames(Names):
    """Docker names, except the database and Redis hosts, which the chart fills in (tpl)."""

    @property
    def db(self) -> str:
        return DB_HOST_PLACEHOLDER

    @property
    def redis(self) -> str:
        return REDIS_HOST_PLACEHOLDER


def config_texts(site: Site, tuning: Tuning) -> dict[str, str]:
    """The kit's rendered files for the chart: the same templates as every other target."""
    files = render_files(site, tuning)
    base = names_for(site, tuning)
    names = _ChartNames(prefix=base.prefix, replicas=base.replicas, workers=base.workers)
    # The same template and context as render_files, with the chart's hosts for PostgreSQL and Redis.
    topology = dataclasses.replace(topology_for(site, tuning), db_endpoint=DB_HOST_PLACEHOLDER,
                                   redis_endpoint=REDIS_HOST_PLACEHOLDER)
    database = {**database_vars(site, tuning), "host": DB_HOST_PLACEHOLDER}
    config_php = _env().get_template("config.php.j2").render(site=site, tuning=tuning, names=names,
                                                             topology=topology, database=database,
                                                             secrets_dir=SECRETS_DIR)
    return {
        "configPhp": config_php,
        "phpIni": files["php.ini"],
        "fpmPool": files["fpm-pool.conf"],
        "nginx": files["nginx.conf"],
        "redis": files["redis.conf"],
        "signin": files["signin.json"],
        "ldapConf": files["ldap.conf"],
        "ldapCa": files["ldap-ca.crt"],
        "outboundCa": files["outbound-ca.crt"],
        "postgresql.conf": files["postgresql.conf"],
        "alertRules": files["alerts.yml"],
        "pgQueries": files["pg-queries.yaml"],
    }


@dataclass
class Scaling:
    """Replica bounds, kept within what PostgreSQL was sized for (max_connections)."""

    web_min: int
    web_max: int
    workers_min: int
    workers_max: int
    max_connections: int
    pool_size: int = 0
    max_client_conn: int = 0
    reasons: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def connections(per_replica: int, web: int, workers: int) -> int:
        """Connections Moodle may open: every php-fpm child of web replicas plus the one a
        rolling update adds, every worker plus the one being replaced, and the one-offs."""
        return (web + 1) * per_replica + (workers + 1) + ONE_OFF_CONNECTIONS


def scaling(site: Site, tuning: Tuning) -> Scaling:
    k8s = site.kubernetes
    per, web_min, workers_min = tuning.fpm_max_children, tuning.web_replicas, tuning.workers
    max_conn = int(tuning.postgres["max_connections"])
    need = Scaling.connections
    why: dict[str, str] = {}
    if k8s.pgbouncer:
        web_max = k8s.web_max_replicas or 2 * web_min
        workers_max = k8s.workers_max if k8s.workers_max is not None else (2 * workers_min if k8s.keda
                                                                              else workers_min)
        web_max, workers_max = max(web_max, web_min), max(workers_max, workers_min)
        pool = max_conn - ADMIN_HEADROOM
        why["web_max"] = "pgbouncer queues what PostgreSQL's max_connections cannot take"
        return Scaling(web_min, web_max, workers_min, workers_max, max_conn, pool,
                       need(per, web_max, workers_max), why)
    fits_web = web_min
    while need(per, fits_web + 1, workers_min) <= max_conn:
        fits_web += 1
    if k8s.web_max_replicas is not None and k8s.web_max_replicas > fits_web:
        raise KitError(f"site.yaml: kubernetes.web_max_replicas {k8s.web_max_replicas} would open "
                       f"{need(per, k8s.web_max_replicas, workers_min)} database connections, more than "
                       f"max_connections {max_conn} from `kit plan`: set kubernetes.pgbouncer: true, "
                       f"or at most {fits_web}")
    web_max = max(web_min, k8s.web_max_replicas or fits_web)
    fits_workers = workers_min
    while need(per, web_max, fits_workers + 1) <= max_conn:
        fits_workers += 1
    if k8s.workers_max is not None and k8s.workers_max > fits_workers:
        raise KitError(f"site.yaml: kubernetes.workers_max {k8s.workers_max} would exceed PostgreSQL's "
                       f"max_connections {max_conn} from `kit plan`: set kubernetes.pgbouncer: true, "
                       f"or at most {fits_workers}")
    if k8s.workers_max is not None:
        workers_max = max(workers_min, k8s.workers_max)
    else:
        workers_max = fits_workers if k8s.keda else workers_min
    why["web_max"] = f"the most web replicas whose php-fpm children fit max_connections {max_conn}"
    return Scaling(web_min, web_max, workers_min, workers_max, max_conn, reasons=why)


def _mi(mb: int | float) -> str:
    return f"{int(math.ceil(mb))}Mi"


def resources(site: Site, tuning: Tuning) -> dict[str, dict]:
    """Requests and limits of each container, from the plan's numbers."""
    fpm_cpu = math.ceil(tuning.fpm_max_children * 1000 / CHILDREN_PER_CPU)
    fpm_mem = tuning.fpm_max_children * PHP_WORKER_MB + tuning.opcache_memory_mb + FPM_MASTER_MB
    cli_mem = tuning.php_memory_limit_mb + CLI_OVERHEAD_MB
    cli_limit = max(tuning.php_memory_limit_mb, MOODLE_EXTRA_MEMORY_MB) + CLI_OVERHEAD_MB

    def task() -> dict:
        return {"requests": {"cpu": "250m", "memory": _mi(cli_mem)},
                "limits": {"cpu": "1000m", "memory": _mi(cli_limit)}}

    db_mb = pg_to_kb(tuning.postgres["shared_buffers"]) * 4 // 1024
    db_cpu = str(max(1, math.ceil(tuning.host.cpus * DB_RAM_SHARE)))
    redis = tuning.redis_maxmemory_mb
    return {
        # CPU: max_children / children per CPU; memory: a busy child each, opcache, the master.
        # Limits leave room for two requests at PHP's memory_limit above the average.
        "fpm": {"requests": {"cpu": f"{fpm_cpu}m", "memory": _mi(fpm_mem)},
                "limits": {"cpu": f"{2 * fpm_cpu}m", "memory": _mi(fpm_mem + 2 * tuning.php_memory_limit_mb)}},
        "nginx": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1000m", "memory": "256Mi"}},
        # A CLI task at PHP's memory_limit; its limit: Moodle's extramemorylimit for heavy tasks.
        "cron": task(),
        "workers": task(),
        "jobs": {"requests": {"cpu": "500m", "memory": "512Mi"},
                 "limits": {"cpu": "2000m", "memory": _mi(JOB_MEMORY_MB)}},
        # shared_buffers is a quarter of PostgreSQL's memory (PGTune): the pod gets all of it,
        # and a share of the CPUs like kit plan's share of RAM. Requests = limits (Guaranteed).
        "database": {"requests": {"cpu": db_cpu, "memory": _mi(db_mb)},
                     "limits": {"cpu": db_cpu, "memory": _mi(db_mb)}},
        # maxmemory plus overhead; the limit leaves room for the append-only file rewrite (fork).
        "redis": {"requests": {"cpu": "100m", "memory": _mi(redis + REDIS_OVERHEAD_MB)},
                  "limits": {"cpu": "1000m", "memory": _mi(2 * redis + REDIS_OVERHEAD_MB)}},
    }


def split_image(ref: str) -> dict[str, str]:
    """registry:5000/kit/moodle:tag -> repository + tag (a port is not a tag)."""
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return {"repository": ref[:colon], "tag": ref[colon + 1:]}
    return {"repository": ref, "tag": ""}


def cnpg_parameters(tuning: Tuning) -> dict[str, str]:
    return {k: v for k, v in tuning.postgres.items() if k not in CNPG_MANAGED}


def chart_values(site: Site, tuning: Tuning, images: ImageSet, moodle_version: str = "") -> dict:
    """The complete values file `kit up` passes to Helm. No secret is ever in it."""
    k8s = site.kubernetes
    texts = config_texts(site, tuning)
    scale = scaling(site, tuning)
    res = resources(site, tuning)
    tls = (site.url or "").startswith("https://")
    return {
        "nameOverride": "",
        "fullnameOverride": "",
        "clusterDomain": "cluster.local",
        "commonLabels": {},
        "commonAnnotations": {},
        "images": {
            "pullPolicy": "IfNotPresent",
            "pullSecrets": [],
            "moodle": split_image(images.moodle),
            "web": split_image(images.web),
            "redis": split_image(images.redis),
        },
        "moodle": {
            "host": host_of(site),
            "version": moodle_version,
            "adminUser": site.moodle.admin_user,
            "adminEmail": site.moodle.admin_email,
            "fullname": site.moodle.fullname,
            "shortname": site.moodle.shortname,
            "uploadMaxMb": site.moodle.upload_max_mb,
        },
        "config": {key: texts[key] for key in ("configPhp", "phpIni", "fpmPool", "nginx", "redis", "signin",
                                                      "ldapConf", "ldapCa", "outboundCa")},
        "auth": {"existingSecret": secret_name(site), "create": False, "dbUser": "moodle", "dbPassword": "",
                 "redisPassword": "", "adminPassword": "", "loadtestPassword": "",
                 "signinSecrets": site.auth.secret_files()},
        "web": {
            "replicas": scale.web_min,
            "autoscaling": {"enabled": scale.web_max > scale.web_min, "maxReplicas": scale.web_max,
                            "targetCPUUtilizationPercentage": 70},
            "pdb": {"enabled": True, "maxUnavailable": 1},
            "terminationGracePeriodSeconds": 90,
            "drainSeconds": 10,
            "resources": {"fpm": res["fpm"], "nginx": res["nginx"]},
            "podAnnotations": {}, "nodeSelector": {}, "tolerations": [], "affinity": {},
        },
        "cron": {"keepAliveSeconds": 900, "terminationGracePeriodSeconds": 120, "resources": res["cron"]},
        "workers": {
            "replicas": scale.workers_min,
            "keepAliveSeconds": 900,
            # Moodle skips adhoc work beyond this many runners: room for every worker autoscaling may add.
            "adhocConcurrencyLimit": max(tuning.adhoc_concurrency_limit, scale.workers_max + 1),
            "terminationGracePeriodSeconds": 120,
            "resources": res["workers"],
            "autoscaling": {"enabled": not k8s.keda and scale.workers_max > scale.workers_min,
                            "maxReplicas": scale.workers_max, "targetCPUUtilizationPercentage": 70},
            "keda": {"enabled": k8s.keda, "maxReplicas": scale.workers_max, "tasksPerWorker": TASKS_PER_WORKER,
                     "pollingInterval": 30, "cooldownPeriod": 300, "sslmode": "require"},
        },
        "jobs": {"activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 86400, "upgrade": {"enabled": True},
                 "resources": res["jobs"]},
        "moodledata": {"existingClaim": "", "storageClass": k8s.storage_class or "", "accessMode": "ReadWriteMany",
                       "size": f"{k8s.moodledata_size_gb}Gi"},
        "database": {
            "type": k8s.database,
            "external": {"host": k8s.database_host or ""},
            "cloudnativepg": {
                "instances": k8s.database_instances,
                "imageName": "ghcr.io/cloudnative-pg/postgresql:15",
                "storage": {"size": f"{k8s.database_storage_gb}Gi", "storageClass": k8s.database_storage_class or ""},
                "parameters": cnpg_parameters(tuning),
                "resources": res["database"],
                "monitorRole": {"name": site.database.monitor_user, "secret": monitor_secret_name(site)},
                "pgbouncer": {"enabled": k8s.pgbouncer, "instances": 2,
                              "defaultPoolSize": scale.pool_size or scale.max_connections - ADMIN_HEADROOM,
                              "maxClientConn": scale.max_client_conn or Scaling.connections(
                                  tuning.fpm_max_children, scale.web_max, scale.workers_max)},
            },
        },
        "redis": {"applicationCache": tuning.levers["redis_cache"],
                  "persistence": {"size": "2Gi", "storageClass": ""}, "resources": res["redis"]},
        "ingress": {"enabled": True, "className": k8s.ingress_class or "", "tls": tls,
                    "tlsSecret": k8s.tls_secret or "", "clusterIssuer": k8s.cert_manager_issuer or "",
                    "readTimeoutS": tuning.edge_read_timeout_s, "annotations": {}},
        "serviceAccount": {"create": True, "name": ""},
        "metrics": {
            "enabled": k8s.monitoring,
            "image": split_image(images.monitor if images.monitor != "-" else "kit/monitor"),
            "interval": f"{site.monitoring.scrape_interval_s}s",
            "labels": {},
            # The same rules text `kit up` gives Prometheus on local and hosts (alerts.yml).
            "alertRules": texts["alertRules"],
            "pgQueries": texts["pgQueries"],
            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "200m", "memory": "96Mi"}},
        },
    }


def secret_data(site: Site, secrets: dict[str, str]) -> dict[str, str]:
    """The Secret the pods read (created by the driver, never a Helm value)."""
    import hashlib

    user = site.kubernetes.database_user if site.kubernetes.database == "external" else "moodle"
    redis_hash = hashlib.sha256(secrets["redis_password"].encode()).hexdigest()
    return {
        "username": user,
        "password": secrets["db_password"],
        "redis-password": secrets["redis_password"],
        "redis-users.acl": f"user default on #{redis_hash} ~* &* +@all\n",
        "admin-password": secrets["admin_password"],
        "loadtest-password": secrets["loadtest_password"],
        **{key: secrets.get(key, "") for key in site.auth.secret_files()},   # keys are the file names
    }


def init_settings(data: dict, *, namespace: str | None, host: str | None) -> dict:
    """`kit init --namespace --host`: the kubernetes: block, and https://HOST as Moodle's wwwroot."""
    k8s = dict(data.get("kubernetes") or {})
    if namespace:
        k8s["namespace"] = namespace
    if host:
        k8s["host"] = host
        data.setdefault("url", f"https://{host}")
    if data.get("target") != "k8s":
        raise KitError("--namespace and --host are for --target k8s")
    if not host and not data.get("url"):
        raise KitError("--target k8s needs --host (the Ingress host name, e.g. lms.example.edu)")
    return {**data, "kubernetes": k8s} if k8s else data
