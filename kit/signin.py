"""How people sign in: the site model's `auth` section rendered as the settings Moodle's own
APIs apply (images/moodle/kit/signin.php reads them), and the checks made before any of it
is saved (a directory bind and search). One rendered text, the same on every target: the
Docker targets mount it, the chart's install Job reads it from a ConfigMap.
"""
from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit.config import LdapSettings, OAuth2Issuer, Site
from kit.errors import KitError

#: Where every Moodle container finds the rendered settings (a read-only mount or ConfigMap).
SIGNIN_FILE = "/etc/moodle-kit/signin.json"
#: Moodle's auth_ldap removeuser values.
REMOVE_USER = {"keep": 0, "suspend": 1, "delete": 2}
#: Presets whose endpoints are fixed (Microsoft's identity platform v2, Google's OpenID).
MICROSOFT = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0"
GOOGLE = {"authorization": "https://accounts.google.com/o/oauth2/v2/auth",
          "token": "https://oauth2.googleapis.com/token",
          "userinfo": "https://openidconnect.googleapis.com/v1/userinfo"}
#: Moodle user fields filled from OpenID Connect's standard claims.
OIDC_FIELDS = {"given_name": "firstname", "family_name": "lastname", "email": "email",
               "preferred_username": "username", "locale": "lang"}


def ldap_config(ldap: LdapSettings) -> dict[str, Any]:
    """auth_ldap's plugin settings (set_config(name, value, 'auth_ldap')); the bind password
    is not here: config.php forces it from its secret file."""
    out: dict[str, Any] = {
        "host_url": ldap.url, "ldap_version": 3, "ldapencoding": "utf-8", "pagesize": 250,
        "start_tls": int(ldap.start_tls), "bind_dn": ldap.bind_dn, "user_type": ldap.user_type,
        "contexts": ";".join(ldap.base_dns), "search_sub": int(ldap.subcontexts), "opt_deref": 0,
        "user_attribute": ldap.user_attribute.lower(), "objectclass": ldap.object_class,
        "removeuser": REMOVE_USER[ldap.removed], "passtype": "plaintext", "preventpassindb": 1,
        "sync_suspended": 0, "auth_user_create": 0,
    }
    for field, attribute in ldap.map.model_dump().items():
        out[f"field_map_{field}"] = attribute
        out[f"field_updatelocal_{field}"] = "onlogin" if attribute else "oncreate"
        out[f"field_updateremote_{field}"] = 0
        out[f"field_lock_{field}"] = "locked" if attribute else "unlocked"
    return out


def issuer_settings(issuer: OAuth2Issuer) -> dict[str, Any]:
    """One OAuth2 issuer as Moodle's \\core\\oauth2\\api creates it: endpoints given, so that
    rollout needs no network (Google's own preset runs discovery when created)."""
    if issuer.provider == "microsoft":
        base = MICROSOFT.format(tenant=issuer.tenant)
        endpoints = {"authorization": f"{base}/authorize", "token": f"{base}/token",
                     "userinfo": "https://graph.microsoft.com/oidc/userinfo"}
        baseurl, image = "", "https://www.microsoft.com/favicon.ico"
    elif issuer.provider == "google":
        endpoints = dict(GOOGLE)
        baseurl, image = "https://accounts.google.com/", "https://accounts.google.com/favicon.ico"
    else:
        endpoints = {}
        baseurl, image = issuer.issuer or "", ""
    if issuer.endpoints:
        endpoints = issuer.endpoints.model_dump()
    return {
        "name": issuer.name, "provider": issuer.provider, "clientid": issuer.client_id,
        "secret_file": issuer.secret_key, "baseurl": baseurl, "image": image,
        "loginscopes": "openid profile email", "loginscopesoffline": "openid profile email offline_access",
        "showonloginpage": issuer.show_on_login,
        "alloweddomains": ",".join(issuer.domains), "requireconfirmation": 0,
        "endpoints": endpoints,        # empty: discovered from baseurl when the issuer is created
        "fieldmappings": OIDC_FIELDS,
    }


def settings(site: Site) -> dict[str, Any]:
    """The sign-in settings of signin.json (no secret: only the names of secret files)."""
    auth = site.auth
    enabled = (["ldap"] if auth.ldap else []) + (["oauth2"] if auth.oauth2 else [])
    out: dict[str, Any] = {
        "enabled": enabled,
        "ldap": None,
        "oauth2": [issuer_settings(i) for i in auth.oauth2],
        "mfa": {"admins": auth.mfa.admins, "graceperiod": auth.mfa.grace_days * 86400},
    }
    if auth.ldap:
        out["ldap"] = {"config": ldap_config(auth.ldap),
                       "sync_minute": f"*/{auth.ldap.sync_every_min}" if auth.ldap.sync_every_min < 60 else "0",
                       "sync_hour": "*" if auth.ldap.sync_every_min <= 60 else f"*/{auth.ldap.sync_every_min // 60}"}
    return out


def render(site: Site) -> str:
    return json.dumps(settings(site), indent=2, sort_keys=True) + "\n"


SYSTEM_CAS = Path("/etc/ssl/certs/ca-certificates.crt")   # Debian's, as in the kit's images


def _pem(site: Site, name: str, relative: str) -> str:
    path = site.site_dir / relative
    try:
        text = path.read_text()
    except OSError as exc:
        raise KitError(f"{name}: cannot read {path}: {exc.strerror}") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise KitError(f"{name}: {path} is not a PEM certificate")
    return text


def ldap_ca(site: Site) -> str:
    """The directory's CA certificate (PEM) Moodle's LDAP client trusts, or "" (the system's)."""
    ldap = site.auth.ldap
    return _pem(site, "auth.ldap.ca_file", ldap.ca_file) if ldap and ldap.ca_file else ""


def outbound_ca(site: Site) -> str:
    """What Moodle's outbound HTTPS trusts when a private identity provider's CA is given:
    the system's CAs and that one (php.ini points curl at it); else "" (the system's only)."""
    if not site.auth.idp_ca_file:
        return ""
    system = SYSTEM_CAS.read_text() if SYSTEM_CAS.is_file() else ""
    return system + "\n" + _pem(site, "auth.idp_ca_file", site.auth.idp_ca_file)


# --- the directory check -------------------------------------------------------------------

MAX_COUNTED = 500_000      # the check stops counting there (a bound on its time)


@dataclass(frozen=True)
class DirectoryCheck:
    entries: int            # user entries the search found (up to MAX_COUNTED)
    sample: str             # one of their usernames


def check_directory(ldap: LdapSettings, password: str, *, site_dir: Path, timeout: float = 10) -> DirectoryCheck:
    """Bind as Moodle will and search each base DN once; one line naming what failed."""
    import ldap3
    from ldap3.core import exceptions as ldap_errors

    ca_file = str((site_dir / ldap.ca_file).resolve()) if ldap.ca_file else None
    use_tls = ldap.url.startswith("ldaps://") or ldap.start_tls
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=ca_file) if use_tls else None
    server = ldap3.Server(ldap.url, connect_timeout=timeout, tls=tls, get_info=ldap3.NONE)
    where = ldap.url
    try:
        conn = ldap3.Connection(server, user=ldap.bind_dn, password=password, receive_timeout=timeout,
                                raise_exceptions=True, auto_bind=ldap3.AUTO_BIND_NONE)
        conn.open()
        if ldap.start_tls:
            conn.start_tls()
        conn.bind()
    except ldap_errors.LDAPInvalidCredentialsResult:
        raise KitError(f"{where}: the directory refused the bind as {ldap.bind_dn}: invalid credentials "
                       "(wrong password or DN); site.yaml unchanged") from None
    except ldap_errors.LDAPSocketOpenError as exc:
        text = str(exc)
        if "certificate" in text.lower() or "ssl" in text.lower():
            raise KitError(f"{where}: the directory's certificate is not trusted ({_short(text)}); give its CA "
                           "with --ca-file; site.yaml unchanged") from None
        raise KitError(f"{where}: cannot reach the directory ({_short(text)}); site.yaml unchanged") from None
    except ldap_errors.LDAPException as exc:
        raise KitError(f"{where}: {type(exc).__name__}: {_short(str(exc))}; site.yaml unchanged") from None
    try:
        found, sample = 0, ""
        seen: dict[str, str] = {}
        scope = ldap3.SUBTREE if ldap.subcontexts else ldap3.LEVEL
        for base in ldap.base_dns:
            # Page through every user entry, as Moodle's sync does (250 per page): a directory
            # that caps this account below its users makes the sync fail on every run.
            try:
                for entry in conn.extend.standard.paged_search(
                        base, f"(objectClass={ldap.object_class})", search_scope=scope,
                        attributes=[ldap.user_attribute], paged_size=250, generator=True):
                    if entry.get("type") != "searchResEntry":
                        continue
                    found += 1
                    values = entry.get("attributes", {}).get(ldap.user_attribute) or []
                    if isinstance(values, str):
                        values = [values]
                    name = str(values[0]).lower() if values else ""
                    sample = sample or name
                    if name and name in seen:
                        # Moodle's sync stops at the first username it meets twice (a unique key).
                        raise KitError(f"{where}: two entries have {ldap.user_attribute}={name} ({seen[name]} and "
                                       f"{entry.get('dn')}): Moodle's sync would fail; narrow --base-dn or fix the "
                                       "directory; site.yaml unchanged")
                    if name:
                        seen[name] = str(entry.get("dn"))
                    if found >= MAX_COUNTED:
                        break
            except ldap_errors.LDAPNoSuchObjectResult:
                raise KitError(f"{where}: base DN {base!r} does not exist in the directory; site.yaml unchanged") \
                    from None
            except ldap_errors.LDAPSizeLimitExceededResult:
                raise KitError(f"{where}: the directory stops {ldap.bind_dn} after {found} entries (a size "
                               "limit): Moodle's sync would fail; lift it for that account (OpenLDAP: limits "
                               "dn.exact=<bind DN> size=unlimited; AD: MaxPageSize); site.yaml unchanged") from None
        if not found:
            raise KitError(f"{where}: no entry with objectClass={ldap.object_class} under "
                           f"{'; '.join(ldap.base_dns)}; site.yaml unchanged")
        if not sample:
            raise KitError(f"{where}: the users found have no {ldap.user_attribute} attribute "
                           "(--user-attribute; AD: sAMAccountName); site.yaml unchanged")
        return DirectoryCheck(found, sample)
    finally:
        conn.unbind()


def _short(text: str) -> str:
    return " ".join(text.split())[:200]


# --- one real sign-in through Moodle's login page ----------------------------------------------

@dataclass(frozen=True)
class SignIn:
    status: str        # "in", "mfa" (password accepted, a code is asked next) or "refused"
    message: str
    url: str


def sign_in(site: Site, base_url: str, username: str, password: str, *, timeout: float = 30) -> SignIn:
    """Post the login form the way a browser does, following Moodle's redirects through this
    machine's way to the edge (base_url), with the public Host."""
    import requests

    try:
        return _sign_in(site, base_url, username, password, timeout)
    except requests.RequestException as exc:
        raise KitError(f"cannot reach the site's login page at {base_url}: {type(exc).__name__}") from None


def _sign_in(site: Site, base_url: str, username: str, password: str, timeout: float) -> SignIn:
    import re
    import warnings
    from urllib.parse import urljoin, urlparse

    import requests
    import urllib3

    public = (site.url or "").rstrip("/")
    headers = {"Host": urlparse(public).netloc}
    if site.tls_at_proxy:
        headers["X-Forwarded-Proto"] = "https"

    def local(url: str) -> str:
        return base_url + url[len(public):] if url.startswith(public) else url

    with requests.Session() as session, warnings.catch_warnings():
        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
        # This machine's own edge (`kit certs` checks the certificate). verify on each request:
        # a session's own is overridden by REQUESTS_CA_BUNDLE.
        page = session.get(f"{base_url}/login/index.php", headers=headers, timeout=timeout, verify=False)
        token = re.search(r'name="logintoken" value="([^"]+)"', page.text)
        if page.status_code != 200 or not token:
            return SignIn("refused", f"the login page answered HTTP {page.status_code} without a login form",
                          page.url)
        resp = session.post(f"{base_url}/login/index.php", headers=headers, timeout=timeout, allow_redirects=False,
                            verify=False, data={"username": username, "password": password, "logintoken": token.group(1)})
        for _ in range(10):
            if resp.status_code not in (301, 302, 303, 307, 308):
                break
            nxt = urljoin(public + "/", resp.headers.get("Location", ""))
            resp = session.get(local(nxt), headers=headers, timeout=timeout, allow_redirects=False, verify=False)
        path = urlparse(resp.url).path
        if "/admin/tool/mfa/" in path:
            return SignIn("mfa", "password accepted; MFA asks for a code", resp.url)
        if path.endswith("/login/index.php") or 'name="logintoken"' in resp.text:
            error = re.search(r'id="loginerrormessage"[^>]*>([^<]+)<', resp.text)
            return SignIn("refused", error.group(1).strip() if error else "Moodle showed the login page again",
                          resp.url)
        if "logout.php" not in resp.text:
            return SignIn("refused", f"landed on {path} without a session (HTTP {resp.status_code})", resp.url)
        return SignIn("in", f"landed on {path}", resp.url)


def check_discovery(site: Site, issuer_url: str, *, timeout: float = 10) -> dict[str, Any]:
    """An OpenID Connect provider's discovery document, fetched as Moodle will fetch it when
    `kit up` creates the issuer (with auth.idp_ca_file when set); one line naming what failed."""
    import requests

    url = issuer_url.rstrip("/") + "/.well-known/openid-configuration"
    verify: bool | str = str((site.site_dir / site.auth.idp_ca_file).resolve()) if site.auth.idp_ca_file else True
    try:
        resp = requests.get(url, timeout=timeout, verify=verify)
        doc = resp.json() if resp.status_code == 200 else None
    except requests.exceptions.SSLError:
        raise KitError(f"{url}: the provider's certificate is not trusted (a private CA: set auth.idp_ca_file); "
                       "site.yaml unchanged") from None
    except requests.RequestException as exc:
        raise KitError(f"{url}: cannot reach the provider ({type(exc).__name__}); site.yaml unchanged") from None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise KitError(f"{url}: answered HTTP {resp.status_code} without a discovery document; site.yaml unchanged")
    missing = [k for k in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint") if not doc.get(k)]
    if missing:
        raise KitError(f"{url}: the discovery document has no {', '.join(missing)} (Moodle needs them); "
                       "site.yaml unchanged")
    return doc
