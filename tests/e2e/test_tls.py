"""HTTPS at the edge of the shared site, whose certificate came from a real ACME server
(pebble, started by tests/e2e/conftest.py, with dnsmasq as its resolver): redirects and
headers, protocol versions, a forced renewal under load, no secret on any page, process
environment or `docker inspect`, and Moodle's own security checks."""
from __future__ import annotations

import json
import re
import subprocess

import pytest
import requests

from kit import tls
from kit.config import load_secrets
from kit.sizing import plan
from tests.e2e.conftest import MEASURED, SITE, SITE_HOST, Load, kit, sh

pytestmark = pytest.mark.e2e


def ports(site) -> tuple[int, int]:
    return site.http.port, site.tls.port


def test_the_certificate_is_pebbles_and_names_the_site(site, site_dir):
    served = tls.served("127.0.0.1", site.tls.port, SITE_HOST)
    assert SITE_HOST in served.names and "Pebble" in served.issuer, served
    result = kit("certs", cwd=site_dir)
    assert result.returncode == 0, result.stderr
    assert f"names    {SITE_HOST}" in result.stdout and served.serial in result.stdout
    assert "renewed from" in result.stdout


def test_http_redirects_to_https_and_the_headers_are_set(site):
    http_port, tls_port = ports(site)
    plain = requests.get(f"http://127.0.0.1:{http_port}/login/index.php", headers={"Host": SITE_HOST},
                         allow_redirects=False, timeout=30)
    assert plain.status_code == 301
    assert plain.headers["Location"] == f"https://{SITE_HOST}:{tls_port}/login/index.php"
    assert "Strict-Transport-Security" not in plain.headers          # HSTS on HTTPS only
    challenge = requests.get(f"http://127.0.0.1:{http_port}/.well-known/acme-challenge/none",
                             headers={"Host": SITE_HOST}, allow_redirects=False, timeout=30)
    assert challenge.status_code == 404                                # ACME challenges are not redirected
    secure = requests.get(f"{site.url}/login/index.php", timeout=30)  # verified against pebble's root
    assert secure.status_code == 200 and 'name="logintoken"' in secure.text
    assert secure.headers["Strict-Transport-Security"] == f"max-age={site.tls.hsts_max_age}"
    assert secure.headers["X-Content-Type-Options"] == "nosniff"
    assert secure.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    session_cookie = next(c for c in secure.cookies if c.name.startswith("MoodleSession"))
    assert session_cookie.secure and session_cookie.has_nonstandard_attr("HttpOnly")


def s_client(port: int, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", SITE_HOST,
                           *flags], input="", capture_output=True, text=True, errors="replace", timeout=30)


def test_tls_1_0_and_1_1_are_refused_and_1_3_is_accepted(site):
    _, tls_port = ports(site)
    for version in ("-tls1", "-tls1_1"):
        # SECLEVEL=0 lets this client offer the old protocol: the refusal is the edge's.
        old = s_client(tls_port, version, "-cipher", "DEFAULT@SECLEVEL=0")
        assert old.returncode != 0, old.stdout[-1000:]
        assert "Cipher is (NONE)" in old.stdout or "alert protocol version" in old.stderr, old.stderr[-500:]
    new = s_client(tls_port, "-tls1_3")
    assert new.returncode == 0 and re.search(r"New, TLSv1\.3, Cipher is TLS_", new.stdout), new.stdout[-800:]
    two = s_client(tls_port, "-tls1_2", "-alpn", "h2")
    assert two.returncode == 0 and "ALPN protocol: h2" in two.stdout            # HTTP/2


def test_a_forced_renewal_under_load_drops_nothing_and_serves_the_new_certificate(site, site_dir):
    assert kit("loadtest", "seed", "--size", "S", cwd=site_dir).returncode == 0
    before = tls.served("127.0.0.1", site.tls.port, SITE_HOST)
    with Load(site_dir, 300) as load:
        renewed = kit("certs", "--renew", cwd=site_dir)
    assert renewed.returncode == 0, renewed.stdout[-3000:] + renewed.stderr[-2000:]
    summary = load.summary()
    assert summary["total"]["failures"] == 0, summary["failures"]
    assert summary["total"]["requests"] > 100
    after = tls.served("127.0.0.1", site.tls.port, SITE_HOST)
    assert after.serial != before.serial and after.serial in renewed.stdout
    assert requests.get(f"{site.url}/login/index.php", timeout=30).status_code == 200
    MEASURED["forced certificate renewal under 20 users"] = (
        f"{summary['total']['requests']} requests, {summary['total']['failures']} failed; serial "
        f"{before.serial[:8]}... -> {after.serial[:8]}...")


def admin_session(site) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{site.url}/login/index.php", timeout=30)
    token = re.search(r'name="logintoken" value="([^"]+)"', page.text).group(1)
    resp = session.post(f"{site.url}/login/index.php", timeout=30, data={
        "username": site.moodle.admin_user, "password": load_secrets(site)["admin_password"], "logintoken": token})
    assert "You are logged in as" in resp.text or "/my/" in resp.url, resp.url
    return session


def secret_values(site) -> dict[str, str]:
    return {k: v for k, v in load_secrets(site).items() if k.endswith("password") and v}


def test_no_secret_is_visible_on_pages_in_docker_inspect_or_in_php_fpm_environments(site):
    secrets = secret_values(site)
    assert {"db_password", "redis_password", "admin_password", "loadtest_password"} <= set(secrets)
    session = admin_session(site)
    pages = {path: session.get(f"{site.url}{path}", timeout=60) for path in
             ("/admin/phpinfo.php", "/admin/environment.php", "/admin/settings.php?section=systempaths",
              "/cache/admin.php", "/admin/settings.php?section=sessionhandling",
              *(["/cache/admin.php?action=editstore&plugin=kitredis&store=kit_redis"]
                if plan(site).levers["redis_cache"] else []))}
    for path, page in pages.items():
        assert page.status_code == 200 and "logintoken" not in page.text, path
        for key, value in secrets.items():
            assert value not in page.text, f"{key} is shown on {path}"
    assert "PHP Version" in pages["/admin/phpinfo.php"].text    # the page really is PHP's info
    assert "KIT_ROLE" not in pages["/admin/phpinfo.php"].text  # clear_env: PHP sees no container variable
    names = sh("docker", "ps", "-a", "--filter", f"label=kit.site={SITE}", "--format", "{{.Names}}").split()
    inspected = sh("docker", "inspect", *names)
    for key, value in secrets.items():
        assert value not in inspected, f"{key} is in `docker inspect`"
    for replica in (n for n in names if re.fullmatch(rf"kit-{SITE}-web-\d+", n)):
        # /proc/<pid>/environ keeps what the process was started with (php-fpm's master,
        # whose children fork from it); clear_env keeps even that from PHP (checked below).
        environ = sh("docker", "exec", replica, "sh", "-c",
                     "for p in $(pgrep -f 'php-fpm: pool'); do tr '\\0' '\\n' < /proc/$p/environ; echo; done")
        assert "KIT_ROLE=web" in environ    # the children's environment really was read
        for key, value in secrets.items():
            assert value not in environ, f"{key} is in the environment of php-fpm children of {replica}"
        all_environ = sh("docker", "exec", replica, "sh", "-c", "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'")
        for key, value in secrets.items():
            assert value not in all_environ, f"{key} is in a process environment of {replica}"
    files = sh("docker", "exec", f"kit-{SITE}-web-1", "stat", "-c", "%a %U %n", "/run/kit/secrets/db_login")
    assert files.split()[:2] == ["400", "www-data"], files   # the database login: user and password, one file


def test_moodles_security_checks_report_no_error(site_dir):
    """Every security check Moodle has (the public paths ones requested through the edge)."""
    doctor = kit("doctor", cwd=site_dir)
    assert doctor.returncode == 0, doctor.stdout[-3000:] + doctor.stderr[-2000:]
    line = next(line for line in doctor.stdout.splitlines() if " security " in line)
    assert line.lstrip().startswith("ok"), line
    counted = re.search(r"\((\d+) checks\)", line)
    assert counted and int(counted.group(1)) >= 15, line
    MEASURED["Moodle security checks"] = line.split("security", 1)[1].strip()


def test_status_shows_the_certificate(site_dir):
    status = kit("status", cwd=site_dir)
    assert status.returncode == 0 and re.search(r"tls +.*Pebble.*expires \d{4}-\d\d-\d\d", status.stdout)
    data = json.loads(kit("status", "--json", cwd=site_dir).stdout)
    assert data["ready"] is True
