"""The site model: site.yaml validated into one `Site`, plus its generated secrets.

Every setting of a deployment lives here (or in `kit.sizing`'s result); templates and
playbooks only read it.
"""
from __future__ import annotations

import os
import re
import secrets as pysecrets
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kit.errors import KitError, UsageError

DEFAULT_SITE_FILE = "site.yaml"
DEFAULT_MOODLE_GIT = "https://github.com/moodle/moodle.git"
DEFAULT_MOODLE_REF = "v4.5.6"
OFFICIAL_BASE_IMAGE = "debian:bookworm-slim"
SECRET_KEYS = ("db_password", "db_admin_password", "monitor_password", "redis_password", "admin_password",
               "loadtest_password")


class _Strict(BaseModel):
    """Unknown keys are an error: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _ip_address(value: str) -> str:
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError as exc:
        raise ValueError(f"must be an IP address such as 0.0.0.0 or 10.0.0.5 (got {value!r})") from exc
    return value


IPAddress = Annotated[str, AfterValidator(_ip_address)]


class HttpSettings(_Strict):
    bind: IPAddress = Field("0.0.0.0", description="address nginx publishes on (127.0.0.1 for tests)")
    port: int = Field(8080, ge=1, le=65535)


class HostSettings(_Strict):
    """Overrides for the resources sizing plans against (default: this host's)."""

    cpus: int | None = Field(None, gt=0)
    memory_gb: float | None = Field(None, gt=0)


class MoodleSettings(_Strict):
    source: str = Field(DEFAULT_MOODLE_GIT, description="git URL, local Moodle folder, or .tar.gz/.tgz")
    ref: str = Field(DEFAULT_MOODLE_REF, description="git ref when source is a git URL")
    admin_user: str = Field("admin", pattern=r"^[a-z0-9_.@-]+$")
    admin_email: str = Field("admin@example.com", pattern=r"^[^@\s]+@[^@\s]+$")
    fullname: str = "Moodle"
    shortname: str = "moodle"
    upload_max_mb: int = Field(100, gt=0, le=10240)

    def source_kind(self) -> Literal["git", "folder", "tarball"]:
        src = self.source
        if re.match(r"^(https?|ssh|git|file)://", src) or src.startswith("git@") or src.endswith(".git"):
            return "git"
        if re.search(r"\.(tar\.gz|tgz|tar)$", src):
            return "tarball"
        return "folder"


class ImageSettings(_Strict):
    base: str = Field(OFFICIAL_BASE_IMAGE,
                      description="Debian 12 base image: official, or kit/debian:bookworm from `kit images base`")
    prefix: str = Field("kit", pattern=r"^[a-z0-9][a-z0-9._/-]*$")
    tag: str | None = Field(None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$",
                            description="Moodle image tag; default: derived from the code and Dockerfiles")


class ScaleSettings(_Strict):
    web_replicas: int | None = Field(None, ge=1, le=64)
    workers: int | None = Field(None, ge=0, le=64)


_K8S_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


HOST_ROLES = ("edge", "db", "redis", "cron", "web", "worker")


class Machine(_Strict):
    """One host of a `hosts` site, reached over SSH; it runs the containers of its roles."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    address: IPAddress = Field(description="IP address the other hosts and the edge reach it at")
    roles: list[Literal["edge", "db", "redis", "cron", "web", "worker"]] = Field(min_length=1)


class HostsSettings(_Strict):
    """target: hosts. Each machine runs Docker; the kit drives them with Ansible over SSH."""

    ssh_user: str = Field("root", pattern=r"^[a-z_][a-z0-9_-]*$")
    ssh_config: str | None = Field(None, description="ssh_config file to use (keys, jump hosts)")
    moodledata: str = Field("/srv/moodledata", pattern=r"^/",
                            description="shared filesystem (NFS, CephFS) mounted here on every web, cron "
                                        "and worker host")
    web_port: int = Field(8081, ge=1, le=65535, description="port each web host publishes for the edge")
    machines: list[Machine] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_of_each(self) -> "HostsSettings":
        if not self.machines:
            return self
        names = [m.name for m in self.machines]
        if len(set(names)) != len(names):
            raise ValueError("machine names must be unique")
        for role in ("edge", "db", "redis", "cron"):
            count = sum(role in m.roles for m in self.machines)
            if count != 1:
                raise ValueError(f"exactly one machine must have role {role!r} (found {count})")
        if not any("web" in m.roles for m in self.machines):
            raise ValueError("at least one machine must have role 'web'")
        return self

    def with_role(self, role: str) -> list[Machine]:
        return [m for m in self.machines if role in m.roles]


class KubernetesSettings(_Strict):
    """Where and how the site runs on a cluster (target: k8s). Sizing still comes from kit.sizing."""

    namespace: str = Field("moodle", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    release: str = Field("moodle", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=53,
                         description="Helm release name")
    context: str | None = Field(None, description="kubeconfig context (default: the current one)")
    host: str | None = Field(None, description="Ingress host name, e.g. lms.example.edu")
    # Storage: moodledata is shared by web, cron and workers on many nodes, so it needs RWX.
    storage_class: str | None = Field(None, pattern=_K8S_NAME,
                                      description="ReadWriteMany storage class for moodledata (default: the cluster's)")
    moodledata_size_gb: int = Field(50, gt=0, le=100_000)
    # Ingress and TLS.
    ingress_class: str | None = Field(None, pattern=_K8S_NAME)
    tls_secret: str | None = Field(None, pattern=_K8S_NAME,
                                   description="TLS Secret for the host (default: <release>-tls, made by cert-manager)")
    cert_manager_issuer: str | None = Field(None, pattern=_K8S_NAME, description="cert-manager ClusterIssuer")
    # Database: a CloudNativePG cluster made by the chart, or a managed PostgreSQL.
    database: Literal["cloudnativepg", "external"] = "cloudnativepg"
    database_host: str | None = Field(None, pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$",
                                      description="external PostgreSQL host (database: external)")
    database_user: str = Field("moodle", pattern=r"^[a-z_][a-z0-9_]{0,62}$",
                               description="login role on an external PostgreSQL")
    database_instances: int = Field(2, ge=1, le=9, description="CloudNativePG instances (1 primary + replicas)")
    database_storage_gb: int = Field(20, gt=0, le=100_000)
    database_storage_class: str | None = Field(None, pattern=_K8S_NAME)
    pgbouncer: bool = Field(False, description="CloudNativePG Pooler (session mode) in front of PostgreSQL")
    # Autoscaling bounds; the minimums are kit plan's web_replicas and workers.
    keda: bool = Field(False, description="scale workers on Moodle's adhoc queue with KEDA")
    monitoring: bool = Field(False, description="the cluster runs the Prometheus operator: the chart renders "
                                                "exporter sidecars, ServiceMonitors and a PrometheusRule with "
                                                "the site's alert rules")
    web_max_replicas: int | None = Field(None, ge=1, le=500)
    workers_max: int | None = Field(None, ge=0, le=500)

    @field_validator("host")
    @classmethod
    def _host_is_dns(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$",
                                              value):
            raise ValueError("must be a lower-case DNS name such as lms.example.edu")
        return value

    @model_validator(mode="after")
    def _database_consistent(self) -> "KubernetesSettings":
        if self.database == "external" and not self.database_host:
            raise ValueError("database: external needs database_host (the managed PostgreSQL's host name)")
        if self.database == "cloudnativepg" and self.database_host:
            raise ValueError("database_host is only for database: external (CloudNativePG's host is the chart's)")
        if self.pgbouncer and self.database != "cloudnativepg":
            raise ValueError("pgbouncer: true needs database: cloudnativepg (use your provider's pooler otherwise)")
        return self


LEVERS: dict[str, str] = {
    "db_persistent_connections": "each php-fpm child keeps its PostgreSQL connection (Moodle's dbpersist) "
                                 "instead of a new connection, TLS handshake and SCRAM login per request",
    "db_tls_local_off": "no TLS on a database link that never leaves the host; TLS (required) where it does",
    "redis_sessions": "sessions in Redis instead of files on shared moodledata",
    "redis_cache": "Moodle's application cache (MUC) in Redis instead of files on shared moodledata",
    "opcache_sized": "opcache sized for Moodle's ~17,600 files and its interned strings, timestamps "
                     "checked every 60 s instead of 2 s",
    "realpath_cache": "PHP's realpath cache kept 600 s instead of 120 s",
    "fpm_sized": "php-fpm children and web replicas from CPU count and measured worker memory "
                 "instead of Debian's 5 children",
    "postgres_sized": "PostgreSQL memory, planner and WAL settings from `kit plan` instead of its defaults",
}
#: Levers the tuned profile leaves off on one target, each with the measurement that decided it
#: (docs/performance.md, "Levers per target"). site.yaml's performance.levers still wins.
TUNED_OFF_ON_TARGET: dict[str, dict[str, str]] = {
    "local": {
        "redis_sessions": "one host: the web replicas share moodledata's volume, so Moodle's file sessions "
                          "need no network hop; with sessions and cache in files the tuned site cost 126-129 ms "
                          "of CPU per request against 131-161 ms with Redis (S data, 20 users, docs/performance.md)",
        "redis_cache": "one host: Moodle's file store on the replicas' shared volume; measured with "
                       "redis_sessions (126-129 ms of CPU per request in files, 131-161 ms in Redis)",
    },
}
Lever = Literal[tuple(LEVERS)]  # type: ignore[valid-type]  # built from LEVERS, so it cannot drift


class PerformanceSettings(_Strict):
    """The kit's tuning levers. `profile: stock` reproduces an untuned Debian 12 stack
    (every lever off) so `benchmarks/stock_vs_tuned.py` can measure what the tuning is
    worth; it is never meant for a real site. `levers` turns single levers on or off."""

    profile: Literal["tuned", "stock"] = "tuned"
    levers: dict[Lever, bool] = Field(default_factory=dict)  # type: ignore[valid-type]


def normalise_url(value: str) -> str:
    """Moodle's wwwroot: http(s)://host[:port], nothing else. An internationalised host is
    converted to its ASCII (IDNA) form, because Moodle compares wwwroot byte for byte."""
    import idna

    if value != value.strip() or any(ch.isspace() for ch in value):
        raise ValueError(f"must not contain spaces (got {value!r})")
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"must be http(s)://host[:port] (got {value!r})")
    if "@" in parsed.netloc:
        raise ValueError("must not contain a user name or password (user:pw@): Moodle's wwwroot is public")
    if parsed.query or value.rstrip("/").endswith("?") or parsed.fragment or "#" in value:
        raise ValueError(f"must not have a ?query or #fragment (got {value!r})")
    if parsed.path not in ("", "/"):
        raise ValueError(f"must be http(s)://host[:port] without a path (got {value!r})")
    try:
        port = parsed.port
    except ValueError:
        raise ValueError(f"port must be a number from 1 to 65535 (got {value!r})") from None
    if port == 0:
        raise ValueError(f"port must be a number from 1 to 65535 (got {value!r})")
    host = parsed.hostname or ""
    if host.startswith("[") or ":" in host:
        ascii_host = host
    else:
        import ipaddress

        try:
            ascii_host = str(ipaddress.ip_address(host))
        except ValueError:
            try:
                ascii_host = idna.encode(host, uts46=True).decode("ascii")
            except idna.IDNAError as exc:
                raise ValueError(f"host {host!r} is not a valid DNS name ({exc})") from None
    netloc = f"[{ascii_host}]" if ":" in ascii_host else ascii_host
    if port is not None:
        netloc += f":{port}"
    return f"{parsed.scheme}://{netloc}"


class DatabaseSettings(_Strict):
    """Where Moodle's PostgreSQL is: run by the kit (default), or external (managed, yours)."""

    external: str | None = Field(None, description="DSN of an external PostgreSQL, e.g. "
                                 "postgresql://moodle@db.example.edu:5432/moodle?sslmode=require "
                                 "(no password: it is kept in the secrets file)")
    monitor_user: str = Field("kit_monitor", pattern=r"^[a-z_][a-z0-9_]{0,62}$",
                              description="read-only role (pg_monitor) for status, doctor and cost figures")

    @field_validator("external")
    @classmethod
    def _dsn(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parsed = urlparse(value)
        if parsed.scheme not in ("postgresql", "postgres") or not parsed.hostname or not parsed.username:
            raise ValueError(f"must be postgresql://USER@HOST[:PORT]/DBNAME (got {value!r})")
        if parsed.password is not None:
            raise ValueError("must not contain the password: `kit init --db-password-stdin` keeps it in the "
                             "secrets file")
        try:
            _ = parsed.port
        except ValueError:
            raise ValueError(f"port must be a number from 1 to 65535 (got {value!r})") from None
        return value

    def external_parts(self) -> dict[str, str | int]:
        """host, port, dbname, user and sslmode of the external DSN."""
        from urllib.parse import parse_qs

        assert self.external is not None
        parsed = urlparse(self.external)
        query = parse_qs(parsed.query)
        return {"host": parsed.hostname or "", "port": parsed.port or 5432,
                "dbname": parsed.path.lstrip("/") or "moodle", "user": parsed.username or "moodle",
                "sslmode": query.get("sslmode", ["prefer"])[0]}


class SecuritySettings(_Strict):
    """Moodle's security settings the kit owns: forced in config.php, so the admin UI shows
    them as set by the site's config (change them here, then `kit up`)."""

    lockout_threshold: int = Field(10, ge=0, le=1000, description="failed logins before an account locks (0: never)")
    lockout_window_min: int = Field(30, ge=1, le=1440, description="minutes the failed logins are counted over")
    lockout_duration_min: int = Field(30, ge=1, le=10080, description="minutes an account stays locked")
    password_policy: bool = Field(True, description="Moodle's password policy (length, digits, cases, symbols)")
    password_min_length: int = Field(10, ge=8, le=128)
    self_registration: bool = Field(False, description="email-based self-registration on the login page")
    frame_embedding: bool = Field(False, description="allow other sites to embed Moodle in frames")


class LdapFieldMap(_Strict):
    """Directory attribute for each Moodle profile field ("" leaves the field to Moodle)."""

    email: str = "mail"
    firstname: str = "givenName"
    lastname: str = "sn"
    idnumber: str = ""


class LdapSettings(_Strict):
    """Moodle's auth_ldap: who may sign in with the directory's password, and how its
    accounts are kept in step (the sync task)."""

    url: str = Field(pattern=r"^ldaps?://[^\s;]+$", description="ldap:// or ldaps:// URL of the directory")
    base_dns: list[Annotated[str, Field(min_length=3)]] = Field(
        min_length=1, description="where users are searched (Moodle's contexts)")
    bind_dn: str = Field(min_length=3, description="the read-only account Moodle binds with "
                                                   "(its password: `kit auth ldap --password-stdin`)")
    user_type: Literal["rfc2307", "rfc2307bis", "ad", "samba", "edir", "default"] = Field(
        "rfc2307", description="directory schema: rfc2307 (OpenLDAP), ad (Active Directory)")
    user_attribute: str = Field("uid", description="attribute holding the username (AD: sAMAccountName)")
    object_class: str = Field("person", description="objectClass every user entry has")
    subcontexts: bool = Field(True, description="also search below the base DNs")
    start_tls: bool = Field(False, description="STARTTLS on an ldap:// URL")
    ca_file: str | None = Field(None, description="CA that signs the directory's certificate (ldaps/STARTTLS)")
    map: LdapFieldMap = LdapFieldMap()
    removed: Literal["keep", "suspend", "delete"] = Field(
        "suspend", description="what the sync does to an account gone from the directory")
    sync_every_min: int = Field(60, ge=5, le=1440, description="minutes between directory syncs")


class OAuth2Endpoints(_Strict):
    """An issuer's endpoints, given so that creating it needs no network at rollout."""

    authorization: str = Field(pattern=r"^https://")
    token: str = Field(pattern=r"^https://")
    userinfo: str = Field(pattern=r"^https://")


class OAuth2Issuer(_Strict):
    """One sign-in button: Microsoft 365, Google Workspace, or any OpenID Connect provider."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,30}$", description="the issuer's key (names its secret)")
    provider: Literal["microsoft", "google", "oidc"]
    client_id: str = Field(min_length=1)
    tenant: str = Field("common", pattern=r"^[A-Za-z0-9.-]+$", description="microsoft: the tenant (directory) ID")
    issuer: str | None = Field(None, pattern=r"^https://[^\s]+$",
                               description="oidc: the issuer URL (its /.well-known/openid-configuration)")
    endpoints: OAuth2Endpoints | None = Field(None, description="the endpoints, when they are not the preset's")
    domains: list[str] = Field(default_factory=list, description="e-mail domains allowed to sign in (empty: any)")
    show_on_login: bool = Field(True, description="a button on the login page")

    @model_validator(mode="after")
    def _issuer_for_oidc(self) -> "OAuth2Issuer":
        if self.provider == "oidc" and not self.issuer:
            raise ValueError("an oidc issuer needs issuer: its https:// URL")
        return self

    @property
    def secret_key(self) -> str:
        return f"oauth2_{self.name}_secret"


class MfaSettings(_Strict):
    admins: Literal["off", "totp"] = Field("off", description="totp: site admins need an authenticator code")
    grace_days: int = Field(7, ge=0, le=90, description="days an admin without an authenticator may still sign in")


class AuthSettings(_Strict):
    """How people sign in. Applied by `kit up` through Moodle's own APIs, on every target."""

    ldap: LdapSettings | None = None
    oauth2: list[OAuth2Issuer] = Field(default_factory=list)
    mfa: MfaSettings = MfaSettings()
    idp_ca_file: str | None = Field(None, description="CA of a private identity provider's HTTPS (PEM): "
                                                      "Moodle's outbound requests trust it besides the system's")
    allow_private_idp: bool = Field(False, description="TESTS ONLY: let Moodle's curl reach private and "
                                                       "loopback addresses (a local identity provider)")

    @model_validator(mode="after")
    def _unique_names(self) -> "AuthSettings":
        names = [issuer.name for issuer in self.oauth2]
        if len(set(names)) != len(names):
            raise ValueError("two oauth2 issuers have the same name")
        return self

    def secret_keys(self) -> tuple[str, ...]:
        """Secrets the sign-in settings need, given by the user (never generated)."""
        return (("ldap_bind_password",) if self.ldap else ()) + tuple(i.secret_key for i in self.oauth2)

    def secret_files(self) -> list[str]:
        """Secret files Moodle reads for sign-in: those, and the kit admin's authenticator secret."""
        return [*self.secret_keys(), *(["admin_totp_secret"] if self.mfa.admins == "totp" else [])]


class SloSettings(_Strict):
    """The service level of the site: `kit loadtest` gates on it and the latency and error
    alerts fire on it (one home for both)."""

    p95_ms: int = Field(1000, ge=10, le=60000, description="95th-percentile response time limit (ms)")
    errors_percent: float = Field(1.0, ge=0, le=100, description="share of failed (5xx) requests allowed (%)")


class AlertEmail(_Strict):
    """Alert mail through an SMTP relay (its password, if any, in the secrets file)."""

    to: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", description="who gets the alerts")
    sender: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", description="the From: address")
    smarthost: str = Field(pattern=r"^[A-Za-z0-9.-]+:[0-9]{1,5}$", description="SMTP relay HOST:PORT")
    username: str | None = Field(None, description="SMTP login (its password: `kit alerts email --password-stdin`)")
    require_tls: bool = Field(True, description="STARTTLS required (false only for a relay on a trusted network)")


class MonitoringSettings(_Strict):
    """Prometheus, Alertmanager and Debian's exporters beside the site (127.0.0.1 only).
    Alert thresholds live here; latency and errors come from `slo`."""

    enabled: bool = Field(True, description="run the monitoring stack with the site")
    prometheus_port: int = Field(9090, ge=1, le=65535, description="Prometheus on 127.0.0.1 (and the dashboard)")
    alertmanager_port: int = Field(9093, ge=1, le=65535, description="Alertmanager on 127.0.0.1")
    scrape_interval_s: int = Field(15, ge=1, le=300, description="how often every exporter is read")
    retention_days: int = Field(15, ge=1, le=3650, description="metrics kept at most this long")
    retention_mb: int = Field(2048, ge=64, le=1_000_000, description="metrics kept at most this much disk")
    queue_age_minutes: int = Field(10, ge=1, le=1440, description="alert: the oldest overdue adhoc task")
    cron_stale_minutes: int = Field(5, ge=1, le=1440, description="alert: scheduled tasks not started for")
    db_connections_percent: int = Field(80, ge=1, le=100, description="alert: PostgreSQL connections in use")
    disk_percent: int = Field(85, ge=1, le=100, description="alert: moodledata, pgdata or log disk use")
    cert_days: int = Field(14, ge=1, le=90, description="alert: the edge certificate expires within")
    alert_for_s: int | None = Field(None, ge=0, le=86400,
                                    description="TESTS ONLY: one `for` for every alert instead of each one's own")
    email: AlertEmail | None = None
    webhook: bool = Field(False, description="post alerts to a webhook (its URL, a secret: "
                                             "`kit alerts webhook --url-stdin`)")

    @model_validator(mode="after")
    def _ports_differ(self) -> "MonitoringSettings":
        if self.prometheus_port == self.alertmanager_port:
            raise ValueError("monitoring.prometheus_port and alertmanager_port must differ")
        return self

    def secret_keys(self) -> tuple[str, ...]:
        """Secrets alert delivery needs, given by the user (never generated)."""
        if not self.enabled:
            return ()
        return ((("smtp_password",) if self.email and self.email.username else ())
                + (("alert_webhook_url",) if self.webhook else ()))


LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
TLS_MODES = ("acme", "files", "self-signed", "proxy")


class TlsSettings(_Strict):
    """Where HTTPS ends. acme, files and self-signed: at the kit's edge (it publishes
    tls.port, and http.port redirects to it); proxy: at a proxy of yours, in front of the
    edge's plain http.port. An http:// url has no TLS."""

    mode: Literal["acme", "files", "self-signed", "proxy"] | None = Field(
        None, description="acme (Let's Encrypt or any ACME directory), files (your certificate), self-signed "
                          "(a trial), proxy (TLS ends at your proxy)")
    port: int = Field(443, ge=1, le=65535, description="HTTPS port the edge publishes (not in proxy mode)")
    cert: str | None = Field(None, description="files: the certificate chain (PEM: the site's first, then "
                                               "intermediates)")
    key: str | None = Field(None, description="files: its private key (PEM)")
    acme_email: str | None = Field(None, pattern=r"^[^@\s]+@[^@\s]+$", description="acme: the account's e-mail")
    acme_directory: str = Field(LETS_ENCRYPT, description="acme: the ACME directory URL")
    acme_ca_bundle: str | None = Field(None, description="acme: CA file that signs a private ACME directory's "
                                                         "own HTTPS (a test CA such as pebble's)")
    hsts_max_age: int = Field(31536000, ge=0, le=63072000, description="Strict-Transport-Security max-age (s)")

    @property
    def at_edge(self) -> bool:
        return self.mode in ("acme", "files", "self-signed")


class Site(_Strict):
    name: str = Field("moodle", pattern=r"^[a-z][a-z0-9-]{0,30}$")
    target: Literal["local", "hosts", "k8s"] = "local"
    url: str | None = Field(None, description="public URL (Moodle wwwroot); default from http.bind/port")
    users: int = Field(300, gt=0, le=1_000_000, description="expected concurrent users at peak")
    http: HttpSettings = HttpSettings()
    host: HostSettings = HostSettings()
    moodle: MoodleSettings = MoodleSettings()
    images: ImageSettings = ImageSettings()
    scale: ScaleSettings = ScaleSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()
    hosts: HostsSettings = HostsSettings()
    performance: PerformanceSettings = PerformanceSettings()
    database: DatabaseSettings = DatabaseSettings()
    tls: TlsSettings = TlsSettings()
    security: SecuritySettings = SecuritySettings()
    auth: AuthSettings = AuthSettings()
    slo: SloSettings = SloSettings()
    monitoring: MonitoringSettings = MonitoringSettings()

    # Where the site lives on disk; not part of site.yaml.
    site_dir: Path = Field(Path("."), exclude=True)

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, value: str | None) -> str | None:
        return None if value is None else normalise_url(value)

    @model_validator(mode="after")
    def _default_url(self) -> "Site":
        if self.target == "hosts" and not self.hosts.machines:
            raise ValueError("target hosts needs hosts.machines (each with name, address, roles)")
        if self.target == "k8s" and self.performance != PerformanceSettings():
            raise ValueError("performance: the Kubernetes chart always runs the tuned profile; "
                             "remove the performance section for target k8s")
        if self.database.external and self.target == "k8s":
            raise ValueError("database.external is for targets local and hosts; on k8s set kubernetes.database: "
                             "external and kubernetes.database_host")
        self._check_tls()
        if self.url is not None and self.target != "k8s" and self.url.startswith("http://"):
            url_port = urlparse(self.url).port or 80
            if url_port != self.http.port:
                raise ValueError(f"url {self.url} is served on port {url_port}, but the edge publishes http.port "
                                 f"{self.http.port}: make them the same (or use the https:// URL of your proxy)")
        if self.url is None and self.target == "hosts":
            edge = self.hosts.with_role("edge")[0]
            port = "" if self.http.port == 80 else f":{self.http.port}"
            object.__setattr__(self, "url", f"http://{edge.address}{port}")
        if self.url is None:
            host = "127.0.0.1" if self.http.bind in ("0.0.0.0", "::") else self.http.bind
            if self.http.bind in ("0.0.0.0", "::"):
                import socket

                host = socket.getfqdn() or "127.0.0.1"
            port = "" if self.http.port == 80 else f":{self.http.port}"
            object.__setattr__(self, "url", f"http://{host}{port}")
        return self

    def _check_tls(self) -> None:
        tls = self.tls
        https = (self.url or "").startswith("https://")
        if self.target == "k8s":
            if tls.mode is not None:
                raise ValueError("tls: on target k8s the Ingress serves TLS: remove the tls section and set "
                                 "kubernetes.cert_manager_issuer or kubernetes.tls_secret")
            return
        if tls.mode is None and https:
            raise ValueError(f"url {self.url} is https: choose tls.mode: acme (Let's Encrypt), files (your "
                             "certificate), self-signed (a trial) or proxy (TLS ends at your proxy: what a site.yaml "
                             "without a tls section meant before the kit ended TLS itself)")
        if tls.mode is not None and not https:
            raise ValueError(f"tls.mode {tls.mode} needs an https:// url (got {self.url or 'none'})")
        if tls.mode == "files" and not (tls.cert and tls.key):
            raise ValueError("tls.mode files needs tls.cert and tls.key (PEM files)")
        if tls.mode != "files" and (tls.cert or tls.key):
            raise ValueError("tls.cert and tls.key are for tls.mode files")
        if tls.mode == "acme" and not tls.acme_email:
            raise ValueError("tls.mode acme needs tls.acme_email (the ACME account's e-mail)")
        if tls.mode == "acme" and tls.acme_directory == LETS_ENCRYPT and self.http.port != 80:
            raise ValueError(f"Let's Encrypt checks the site on port 80 (HTTP-01): set http.port: 80 (got "
                             f"{self.http.port})")
        if tls.at_edge:
            url_port = urlparse(self.url or "").port or 443
            if url_port != tls.port:
                raise ValueError(f"url {self.url} is served on port {url_port}, but the edge publishes tls.port "
                                 f"{tls.port}: make them the same")
            if tls.port == self.http.port:
                raise ValueError(f"tls.port and http.port are both {tls.port}: the edge needs one of each")

    # --- paths -----------------------------------------------------------------
    @property
    def build_dir(self) -> Path:
        return self.site_dir / "build" / self.name

    @property
    def state_dir(self) -> Path:
        return self.site_dir / ".kit" / self.name

    @property
    def secrets_file(self) -> Path:
        return self.state_dir / "secrets.yaml"

    @property
    def moodle_source_path(self) -> Path:
        return (self.site_dir / os.path.expanduser(self.moodle.source)).resolve()

    @property
    def tls_at_proxy(self) -> bool:
        """TLS ends at a proxy of the university's (or the Ingress on k8s): Moodle's sslproxy."""
        return (self.url or "").startswith("https://") and not self.tls.at_edge

    @property
    def https(self) -> bool:
        """Users reach Moodle over HTTPS (wherever TLS ends): secure cookies, HTTPS=on for PHP."""
        return (self.url or "").startswith("https://")

    @property
    def public_port(self) -> int:
        """The port users reach (Moodle compares it with wwwroot's and redirects on mismatch)."""
        parsed = urlparse(self.url or "")
        return parsed.port or (443 if parsed.scheme == "https" else 80)

    @property
    def prefix(self) -> str:
        """Container, network and volume name prefix."""
        return f"kit-{self.name}"


def _one_line(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check its spelling; `kit init --help` lists the settings)"
    elif ("input" in first and first["type"] not in ("missing",) and not isinstance(first["input"], dict)
          and "(got " not in msg):
        msg = f"{msg} (got {first['input']!r})"
    more = len(err.errors()) - 1
    tail = f" (+{more} more)" if more else ""
    return f"{source}: {loc}: {msg}{tail}" if loc else f"{source}: {msg}{tail}"


def parse_site(data: object, *, site_dir: Path, source: str = DEFAULT_SITE_FILE) -> Site:
    """Validate raw YAML data into a Site, raising KitError with one line on bad input."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise KitError(f"{source}: must be a mapping of settings (got {type(data).__name__})")
    try:
        site = Site.model_validate(data)
    except ValidationError as err:
        raise KitError(_one_line(err, source)) from None
    object.__setattr__(site, "site_dir", site_dir.resolve())
    return site


def _decode(site_file: Path, raw: bytes) -> str:
    """site.yaml's text: UTF-8 only (YAML's own rule), refused in one line otherwise."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise KitError(f"{site_file}: saved as UTF-16: save it as UTF-8 (e.g. `iconv -f UTF-16 -t UTF-8`)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise KitError(f"{site_file}: line {line}: not UTF-8 (byte 0x{raw[exc.start]:02x}): save it as UTF-8 "
                       "(e.g. `iconv -f latin1 -t UTF-8`)") from None


def load_site(path: str | os.PathLike = DEFAULT_SITE_FILE) -> Site:
    site_file = Path(path)
    if not site_file.exists():
        raise KitError(f"{site_file}: not found (run `kit init` first, or pass --site PATH)")
    if not site_file.is_file():
        raise KitError(f"{site_file}: not a file (pass --site PATH to a site.yaml)")
    try:
        text = _decode(site_file, site_file.read_bytes())
    except OSError as exc:
        raise KitError(f"{site_file}: cannot be read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise KitError(f"{site_file}:{where}: malformed YAML: {problem}") from None
    if data is None:
        raise KitError(f"{site_file}: has no settings (empty, or only comments): run `kit init --force` to write "
                       "one, or add at least `name:`")
    return parse_site(data, site_dir=site_file.resolve().parent, source=str(site_file))


def dump_site(site: Site) -> str:
    """site.yaml text: only what differs from the defaults, so it stays short and readable."""
    data = site.model_dump(exclude_defaults=True, exclude={"site_dir"}, mode="json")
    header = "# The kit's site config. `kit plan` shows what it derives; `kit render` writes it out.\n"
    return header + yaml.safe_dump(data, sort_keys=False)


# --- secrets ---------------------------------------------------------------------------

def write_private(path: Path, text: str) -> None:
    """Owner-only, written whole (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def secret_keys(site: Site) -> tuple[str, ...]:
    """The secrets this site needs (an external database has no admin login of ours)."""
    if site.database.external or site.target == "k8s":
        return tuple(k for k in SECRET_KEYS if k != "db_admin_password")
    return SECRET_KEYS


def _restore_hint(site: Site) -> str:
    from kit import backup

    newest = backup.latest(site)
    if newest is not None and (newest[0] / "secrets.yaml").is_file():
        return f"restore it from the newest backup: cp {newest[0] / 'secrets.yaml'} {site.secrets_file}"
    return (f"restore {site.secrets_file} from a copy of this folder; if the site was never rolled out, "
            "`kit init --force` makes new ones")


def _read_secrets(site: Site) -> dict[str, str]:
    path = site.secrets_file
    if not path.exists():
        raise KitError(f"{path}: missing: the kit never makes new passwords for an existing site; "
                       f"{_restore_hint(site)}")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KitError(f"{path}: permissions {oct(mode)} let others read secrets; run `chmod 600 {path}`")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise KitError(f"{path}: corrupt (not valid YAML); {_restore_hint(site)}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise KitError(f"{path}: corrupt (expected key: value lines of text); {_restore_hint(site)}")
    return data


def load_secrets(site: Site) -> dict[str, str]:
    """The site's secrets, as `kit init` (or `kit secrets rotate`) wrote them. Never generates
    one: a container given a new password that PostgreSQL or Redis does not know breaks the site."""
    current = _read_secrets(site)
    missing = [k for k in secret_keys(site) if not current.get(k)]
    if missing:
        raise KitError(f"{site.secrets_file}: has no {', '.join(missing)}; {_restore_hint(site)}")
    alerting = [k for k in site.monitoring.secret_keys() if not current.get(k)]
    if alerting:
        raise UsageError("site.yaml's monitoring section needs secrets that the secrets file lacks: " + ", ".join(
            f"{k} (`kit alerts {'email ... --password-stdin' if k == 'smtp_password' else 'webhook --url-stdin'}`)"
            for k in alerting))
    signin = [k for k in site.auth.secret_keys() if not current.get(k)]
    if signin:
        how = {"ldap_bind_password": "kit auth ldap ... --password-stdin"}
        raise UsageError("site.yaml's auth section needs secrets that the secrets file lacks: " + ", ".join(
            f"{k} (`{how.get(k, 'kit auth oauth2/oidc ... --client-secret-stdin')}`)" for k in signin))
    return current


def create_secrets(site: Site, given: dict[str, str] | None = None) -> dict[str, str]:
    """`kit init` only: new passwords for a new site. Keeps a secrets file that already exists
    (re-running init must not change the passwords of a site with data)."""
    if site.secrets_file.exists():
        current = _read_secrets(site)
        missing = [k for k in secret_keys(site) if not current.get(k)]
        if missing:
            raise KitError(f"{site.secrets_file}: exists without {', '.join(missing)}; {_restore_hint(site)}")
        return current
    current = {key: pysecrets.token_urlsafe(24) for key in secret_keys(site)}
    current.update(given or {})
    write_private(site.secrets_file, yaml.safe_dump(current, sort_keys=True))
    return current


def save_secrets(site: Site, values: dict[str, str]) -> None:
    """Replace the secrets file (rotation and password resets only)."""
    write_private(site.secrets_file, yaml.safe_dump(values, sort_keys=True))


def update_secret(site: Site, key: str, value: str) -> None:
    current = load_secrets(site)
    current[key] = value
    save_secrets(site, current)
