"""Sign-in on the shared site, against real servers the test starts: Debian's slapd (1,000
users in two OUs, over ldaps with a test CA), Moodle's own upload CLIs (courses, then
users with enrolments), MFA with a code pyotp computes, and the lockout.

Runs first (alphabetical) and leaves the site as later modules need it: MFA off, the
directory's settings saved (Moodle does not reach the directory unless someone signs in).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from benchmarks.bulk_import import write_csv
from tests.e2e.conftest import SITE, TIMINGS, bridge_address, free_port, kit, psql, sh

BASE = "dc=kit,dc=test"
BIND_DN = f"cn=moodle,ou=svc,{BASE}"
BIND_PW = "bind-Secret-42"
OUS = {"students": 700, "staff": 300}
PREFIX = {"students": "s", "staff": "t"}      # usernames: s0001..s0700, t0001..t0300
USER_PW = "Dir-Pass-2026!"
IMPORT_USERS = int(os.environ.get("KIT_E2E_IMPORT_USERS", "1000"))
COURSES = 20
CSV_PW = "Kit-Pass-2026!"


class Slapd:
    """Debian's slapd on this host's bridge address (the site's containers reach it there),
    plain LDAP for seeding and ldaps with a certificate from a test CA."""

    def __init__(self, folder: Path) -> None:
        import trustme

        self.folder, self.address = folder, bridge_address()
        self.port, self.tls_port = free_port(), free_port()
        self.ca = trustme.CA()
        cert = self.ca.issue_cert(self.address)
        (folder / "db").mkdir()
        cert.private_key_pem.write_to_path(str(folder / "server.key"))
        cert.cert_chain_pems[0].write_to_path(str(folder / "server.crt"))
        self.ca_file = folder / "directory-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        schemas = "".join(f"include /etc/ldap/schema/{s}.schema\n" for s in ("core", "cosine", "inetorgperson", "nis"))
        (folder / "slapd.conf").write_text(
            f"{schemas}pidfile {folder}/slapd.pid\nmodulepath /usr/lib/ldap\nmoduleload back_mdb\n"
            f"TLSCertificateFile {folder}/server.crt\nTLSCertificateKeyFile {folder}/server.key\n"
            f"database mdb\nmaxsize 1073741824\nsuffix \"{BASE}\"\nrootdn \"cn=admin,{BASE}\"\nrootpw adminpw\n"
            f"directory {folder}/db\n"
            # What a directory admin gives Moodle's service account: all users, paged (slapd's
            # default caps a search at 500 entries, and Moodle's sync then fails).
            f"limits dn.exact=\"{BIND_DN}\" size=unlimited\n"
            f"access to attrs=userPassword by dn.exact=\"{BIND_DN}\" auth by anonymous auth by * none\n"
            "access to * by * read\n")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"ldaps://{self.address}:{self.tls_port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["slapd", "-f", str(self.folder / "slapd.conf"), "-d", "0",
             "-h", f"ldap://{self.address}:{self.port}/ ldaps://{self.address}:{self.tls_port}/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(50):
            if subprocess.run(["ldapsearch", "-x", "-H", f"ldap://{self.address}:{self.port}", "-b", "",
                               "-s", "base"], capture_output=True).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError("slapd did not start")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None

    def ldap(self, tool: str, ldif: str) -> None:
        sh(tool, "-x", "-H", f"ldap://{self.address}:{self.port}", "-D", f"cn=admin,{BASE}", "-w", "adminpw",
           *(["-c"] if tool == "ldapadd" else []), stdin=ldif, timeout=300)

    def seed(self) -> None:
        entries = [f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: kit\ndc: kit\n",
                   f"dn: ou=svc,{BASE}\nobjectClass: organizationalUnit\nou: svc\n",
                   f"dn: {BIND_DN}\nobjectClass: person\ncn: moodle\nsn: moodle\nuserPassword: {BIND_PW}\n"]
        for ou, count in OUS.items():
            entries.append(f"dn: ou={ou},{BASE}\nobjectClass: organizationalUnit\nou: {ou}\n")
            for n in range(1, count + 1):
                uid = f"{PREFIX[ou]}{n:04d}"
                entries.append(f"dn: uid={uid},ou={ou},{BASE}\nobjectClass: inetOrgPerson\nuid: {uid}\n"
                               f"cn: Given{uid} Family{uid}\ngivenName: Given{uid}\nsn: Family{uid}\n"
                               f"mail: {uid}@dir.kit.test\nemployeeNumber: E{uid}\nuserPassword: {USER_PW}\n")
        self.ldap("ldapadd", "\n".join(entries))


# Session-scoped, like the shared site they are configured on: once this module applied the
# directory and the issuer, Moodle keeps using them (the LDAP sync task, the adhoc updates
# a directory sign-in queues), and a later test's `kit doctor` would see those tasks fail.
@pytest.fixture(scope="session")
def directory(tmp_path_factory):
    server = Slapd(tmp_path_factory.mktemp("slapd"))
    server.start()
    server.seed()
    yield server
    server.stop()


class IdentityProvider:
    """PyPI's oidc-provider-mock (a real OpenID Connect provider: discovery, authorization
    code, tokens, user info) served over HTTPS with a test CA, on the bridge address."""

    USER = {"sub": "oidc-alice", "email": "alice@idp.kit.test", "given_name": "Alice", "family_name": "Idp",
            "preferred_username": "alice.idp"}

    def __init__(self, folder: Path) -> None:
        import ssl
        import threading

        import oidc_provider_mock
        import trustme
        from werkzeug.serving import make_server

        self.address, self.port = bridge_address(), free_port()
        ca = trustme.CA()
        self.ca_file = folder / "idp-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(self.address).configure_cert(context)
        claims = {k: v for k, v in self.USER.items() if k != "sub"}
        app = oidc_provider_mock.app(user_claims=[oidc_provider_mock.User(sub=self.USER["sub"], claims=claims)])
        self.server = make_server(self.address, self.port, app, threaded=True, ssl_context=context)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def issuer(self) -> str:
        return f"https://{self.address}:{self.port}"

    def __enter__(self) -> "IdentityProvider":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()


@pytest.fixture(scope="session")
def idp(tmp_path_factory):
    with IdentityProvider(tmp_path_factory.mktemp("idp")) as server:
        yield server


def site_yaml(site_dir: Path) -> bytes:
    return (site_dir / "site.yaml").read_bytes()


def whois(username: str) -> dict | None:
    out = sh("docker", "exec", "-u", "www-data", f"kit-{SITE}-web-1", "php", "/opt/kit/accounts.php", "whois", username)
    return json.loads(out)


def run_task(task: str) -> float:
    started = time.monotonic()
    sh("docker", "exec", "-u", "www-data", f"kit-{SITE}-cron", "php", "/var/www/moodle/admin/cli/scheduled_task.php",
       f"--execute={task}", timeout=900)
    return time.monotonic() - started


def ldap_auth(*args: str, site_dir: Path, password: str = BIND_PW):
    return kit("auth", "ldap", "--base-dn", f"ou=students,{BASE}", "--base-dn", f"ou=staff,{BASE}",
               "--bind-dn", BIND_DN, "--map-idnumber", "employeeNumber", "--password-stdin", *args,
               cwd=site_dir, stdin=password + "\n")


# --- LDAP ------------------------------------------------------------------------------------

def test_directory_check_refuses_wrong_password_untrusted_certificate_and_a_stopped_server(site_dir, directory):
    before = site_yaml(site_dir)
    secrets_file = site_dir / ".kit" / SITE / "secrets.yaml"
    secrets_before = secrets_file.read_bytes()
    ca = str(directory.ca_file)
    cases = {
        "wrong password": (ldap_auth("--url", directory.url, "--ca-file", ca, site_dir=site_dir, password="nope"),
                           "invalid credentials"),
        "untrusted certificate": (ldap_auth("--url", directory.url, site_dir=site_dir), "not trusted"),
    }
    # A username twice under the base DNs (Moodle's sync would stop at it).
    directory.ldap("ldapadd", f"dn: ou=dup,{BASE}\nobjectClass: organizationalUnit\nou: dup\n\n"
                              f"dn: uid=s0001,ou=dup,{BASE}\nobjectClass: inetOrgPerson\nuid: s0001\ncn: x\nsn: x\n")
    cases["a username twice"] = (
        kit("auth", "ldap", "--url", directory.url, "--ca-file", ca, "--base-dn", f"ou=students,{BASE}",
            "--base-dn", f"ou=dup,{BASE}", "--bind-dn", BIND_DN, "--password-stdin", cwd=site_dir,
            stdin=BIND_PW + "\n"), "two entries have uid=s0001")
    directory.stop()
    try:
        cases["stopped server"] = (ldap_auth("--url", directory.url, "--ca-file", ca, site_dir=site_dir),
                                   "cannot reach the directory")
    finally:
        directory.start()
    for what, (result, words) in cases.items():
        assert result.returncode == 3, (what, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "site.yaml unchanged" in lines[0], (what, lines)
        assert BIND_PW not in result.stderr + result.stdout
    assert site_yaml(site_dir) == before
    assert secrets_file.read_bytes() == secrets_before


def test_kit_up_applies_the_directory_and_an_oidc_issuer_and_a_second_up_changes_nothing(site_dir, directory, idp):
    result = ldap_auth("--url", directory.url, "--ca-file", str(directory.ca_file), site_dir=site_dir)
    assert result.returncode == 0, result.stderr
    assert f"directory ok: bound as {BIND_DN}, {sum(OUS.values())} users" in result.stdout
    saved = yaml.safe_load(site_yaml(site_dir))["auth"]["ldap"]
    assert saved["url"] == directory.url and len(saved["base_dns"]) == 2 and "password" not in json.dumps(saved)
    assert BIND_PW not in site_yaml(site_dir).decode()
    # The test's provider is on a private address with its own CA: relaxed for this test site only.
    shutil.copy(idp.ca_file, site_dir / "idp-ca.pem")
    data = yaml.safe_load(site_yaml(site_dir))
    data["auth"].update({"allow_private_idp": True, "idp_ca_file": "idp-ca.pem"})
    (site_dir / "site.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    oidc = kit("auth", "oidc", "--issuer", idp.issuer, "--client-id", "kit-e2e", "--client-secret-stdin",
               cwd=site_dir, stdin="client-Secret-9\n")
    assert oidc.returncode == 0, oidc.stderr

    started = time.monotonic()
    up = kit("up", cwd=site_dir)
    TIMINGS["kit up applying directory and OIDC sign-in"] = time.monotonic() - started
    assert up.returncode == 0, up.stderr
    again = kit("up", cwd=site_dir)
    assert again.returncode == 0 and "No changes" in again.stdout, again.stdout[-3000:]


def test_a_directory_user_signs_in_with_fields_mapped_and_the_sync_follows_the_directory(site_dir, directory):
    login = kit("auth", "test", "--user", "s0007", "--password-stdin", cwd=site_dir, stdin=USER_PW + "\n")
    assert login.returncode == 0, login.stderr
    assert "signed in: s0007 (auth method: ldap, Givens0007 Familys0007, s0007@dir.kit.test)" in login.stdout
    wrong = kit("auth", "test", "--user", "s0008", "--password-stdin", cwd=site_dir, stdin="wrong\n")
    assert wrong.returncode == 1 and "sign-in refused for s0008" in wrong.stderr

    TIMINGS["directory sync, 1,000 users"] = run_task("\\auth_ldap\\task\\sync_task")
    status = json.loads(kit("auth", "status", "--json", cwd=site_dir).stdout)
    assert status["users"].get("ldap") == sum(OUS.values()), status
    assert "ldap" in status["enabled"] and status["ldap_sync"]["disabled"] is False
    assert whois("t0300")["email"] == "t0300@dir.kit.test"

    directory.ldap("ldapdelete", f"uid=s0700,ou=students,{BASE}\n")
    run_task("\\auth_ldap\\task\\sync_task")
    assert whois("s0700")["suspended"] is True
    assert whois("s0699")["suspended"] is False
    text = kit("auth", "status", cwd=site_dir).stdout
    assert re.search(r"ldap\s+1000 users", text) and "directory sync: on, last run" in text, text


def test_an_oidc_sign_in_with_the_authorization_code_lands_logged_in(site, idp):
    session = requests.Session()
    page = session.get(f"{site.url}/login/index.php", timeout=60)
    link = re.search(r'href="([^"]*/auth/oauth2/login\.php\?[^"]+)"', page.text)
    assert link, "no OpenID Connect button on the login page"
    start = session.get(link.group(1).replace("&amp;", "&"), timeout=60, allow_redirects=False)
    authorize = start.headers["Location"]
    assert authorize.startswith(f"{idp.issuer}/oauth2/authorize?"), authorize
    # The provider's consent form: sign in as its user, which redirects back with a code.
    code = session.post(authorize, data={"sub": idp.USER["sub"]}, timeout=60, allow_redirects=False,
                        verify=str(idp.ca_file))
    callback = code.headers["Location"]
    assert callback.startswith(f"{site.url}/admin/oauth2callback.php?") and "code=" in callback, callback
    landed = session.get(callback, timeout=120)      # Moodle swaps the code for tokens, then asks for user info
    assert "logout.php" in landed.text and "/login/" not in landed.url, (landed.url, landed.text[-1500:])
    who = whois(idp.USER["preferred_username"])
    assert who and who["auth"] == "oauth2" and who["email"] == idp.USER["email"] and who["firstname"] == "Alice"


# --- bulk accounts and courses ----------------------------------------------------------------

def count_users() -> int:
    return int(sh("docker", "exec", "-u", "www-data", f"kit-{SITE}-web-1", "php", "-r",
                  "define('CLI_SCRIPT', 1); require '/var/www/moodle/config.php'; "
                  "echo $DB->count_records('user', ['deleted' => 0]);").strip())


def test_courses_then_users_with_enrolments_import_once_and_bad_rows_are_named(site_dir, tmp_path):
    courses = write_csv(tmp_path / "courses.csv", ["shortname", "fullname", "category"],
                        [[f"T26-{n:02d}", f"Term course {n}", "1"] for n in range(1, COURSES + 1)])
    dry = kit("courses", "import", str(courses), "--dry-run", cwd=site_dir)
    assert dry.returncode == 0 and f"{COURSES} courses would be created" in dry.stdout, dry.stdout
    result = kit("courses", "import", str(courses), cwd=site_dir)
    assert result.returncode == 0, result.stderr
    assert f"created {COURSES}," in result.stdout
    assert "created 0, updated 0" in kit("courses", "import", str(courses), cwd=site_dir).stdout

    header = ["username", "password", "firstname", "lastname", "email", "course1", "role1", "course2"]
    rows = [[f"imp{n:05d}", CSV_PW, f"Imp{n}", "Student", f"imp{n:05d}@kit.test", f"T26-{n % COURSES + 1:02d}",
             "student", f"T26-{(n + 7) % COURSES + 1:02d}"] for n in range(IMPORT_USERS)]
    users = write_csv(tmp_path / "users.csv", header, rows)
    before = count_users()
    dry = kit("users", "import", str(users), "--dry-run", cwd=site_dir)
    assert dry.returncode == 0 and f"{IMPORT_USERS} accounts would be created" in dry.stdout, dry.stdout
    assert count_users() == before
    started = time.monotonic()
    result = kit("users", "import", str(users), cwd=site_dir, timeout=3600)
    TIMINGS[f"users import, {IMPORT_USERS} users with 2 enrolments each"] = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert f"created {IMPORT_USERS}," in result.stdout and "failed 0" in result.stdout, result.stdout[-2000:]
    assert count_users() == before + IMPORT_USERS
    if IMPORT_USERS > 500:
        assert "kit: progress 500/" in result.stdout
    second = kit("users", "import", str(users), cwd=site_dir, timeout=3600)
    assert second.returncode == 0 and "created 0," in second.stdout, second.stdout[-2000:]

    # Five bad rows: a duplicate username, a malformed e-mail, an unknown course, an empty
    # first name, a username Moodle refuses. Lines count the header as line 1.
    fresh = [[f"new{n:03d}", CSV_PW, f"New{n}", "Person", f"new{n:03d}@kit.test", "T26-01", "student", ""]
             for n in range(20)]
    fresh[3][0] = fresh[2][0]
    fresh[6][4] = "not-an-email"
    fresh[9][5] = "NO-SUCH-COURSE"
    fresh[12][2] = ""
    fresh[15][0] = "Bad User!"
    bad = write_csv(tmp_path / "bad.csv", header, fresh)
    before = count_users()
    refused = kit("users", "import", str(bad), cwd=site_dir)
    assert refused.returncode == 2
    assert "lines 5, 8, 11, 14, 17" in refused.stderr.splitlines()[-1], refused.stderr
    assert count_users() == before
    forced = kit("users", "import", str(bad), "--continue-on-errors", cwd=site_dir)
    assert forced.returncode == 0, forced.stderr
    assert "created 15," in forced.stdout and "(lines 5, 8, 11, 14, 17)" in forced.stdout, forced.stdout[-2000:]
    assert count_users() == before + 15


# --- MFA and lockout ---------------------------------------------------------------------------

def form_fields(html: str) -> dict[str, str]:
    """The inputs a browser would send (Moodle's MFA form names its factor in a non-hidden one)."""
    form = next(f for f in re.findall(r"<form.*?</form>", html, flags=re.S) if "verificationcode" in f)
    fields = {}
    for tag in re.findall(r"<input[^>]*>", form, flags=re.S):
        name, value = re.search(r'name="([^"]+)"', tag), re.search(r'value="([^"]*)"', tag)
        if name:
            fields[name.group(1)] = value.group(1) if value else ""
    return fields


def browser_login(site, username: str, password: str) -> tuple[requests.Session, requests.Response]:
    session = requests.Session()
    page = session.get(f"{site.url}/login/index.php", timeout=60)
    token = re.search(r'name="logintoken" value="([^"]+)"', page.text).group(1)
    resp = session.post(f"{site.url}/login/index.php", timeout=60,
                        data={"username": username, "password": password, "logintoken": token})
    return session, resp


def test_admins_need_a_totp_code_and_mfa_off_restores_password_only(site_dir, site):
    import pyotp

    from kit.config import load_secrets, load_site

    data = yaml.safe_load(site_yaml(site_dir))
    data.setdefault("security", {})["lockout_threshold"] = 3
    (site_dir / "site.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    turned = kit("auth", "mfa", "--admins", "totp", "--grace-days", "0", cwd=site_dir)
    assert turned.returncode == 0, turned.stderr
    uri_file = site_dir / ".kit" / SITE / "admin-totp.txt"
    assert uri_file.stat().st_mode & 0o077 == 0
    assert kit("up", cwd=site_dir).returncode == 0
    secrets = load_secrets(site)
    session, resp = browser_login(site, site.moodle.admin_user, secrets["admin_password"])
    assert "/admin/tool/mfa/auth.php" in resp.url, resp.url      # the password alone is not enough
    form = form_fields(resp.text)
    code = pyotp.parse_uri(uri_file.read_text().strip()).now()
    done = session.post(f"{site.url}/admin/tool/mfa/auth.php", timeout=60, data={**form, "verificationcode": code})
    assert "/admin/tool/mfa/" not in done.url and "logout.php" in done.text, done.url

    off = kit("auth", "mfa", "off", cwd=site_dir)
    assert off.returncode == 0, off.stderr
    assert load_site(site_dir / "site.yaml").auth.mfa.admins == "off"
    _, resp = browser_login(site, site.moodle.admin_user, secrets["admin_password"])
    assert "/admin/tool/mfa/" not in resp.url and "logout.php" in resp.text, resp.url


def test_an_account_locks_after_the_configured_wrong_passwords(site_dir, site):
    assert site_yaml(site_dir).decode().count("lockout_threshold: 3") == 1
    user = "imp00042"
    for _ in range(3):
        _, resp = browser_login(site, user, "wrong-password")
        assert "logout.php" not in resp.text
    _, resp = browser_login(site, user, CSV_PW)
    assert "logout.php" not in resp.text, "a locked account signed in with its right password"
    assert whois(user)["locked"] is True
    status = kit("auth", "test", "--user", user, "--password-stdin", cwd=site_dir, stdin=CSV_PW + "\n")
    assert status.returncode == 1 and "locked out" in status.stderr
    _, resp = browser_login(site, "imp00043", CSV_PW)      # another account is not affected
    assert "logout.php" in resp.text


def test_nothing_of_the_directory_password_reaches_moodle_pages_or_the_environment(site_dir, site):
    inspected = sh("docker", "inspect", f"kit-{SITE}-web-1", f"kit-{SITE}-cron")
    assert BIND_PW not in inspected
    mode = sh("docker", "exec", f"kit-{SITE}-web-1", "stat", "-c", "%a %U", "/run/kit/secrets/ldap_bind_password")
    assert mode.split() == ["400", "www-data"]
    # Forced in config.php from the secret file: never stored in Moodle's database (nor its backups).
    assert psql("select count(*) from mdl_config_plugins where plugin = 'auth_ldap' and name = 'bind_pw' "
                "and value <> ''") == "0"
