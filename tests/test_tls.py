"""TLS settings and certificate checks: `files` mode is refused before any change, in one
line, for a key that does not match, an expired certificate, a missing chain, or another
name; the edge's config ends TLS the way the issue asks. Certificates come from trustme
(a test CA, with an intermediate like a real CA's)."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
import yaml

from kit import tls
from kit.config import parse_site
from kit.errors import KitError
from kit.render import render_files
from kit.sizing import plan
from tests.conftest import HOST_2x24

KIT = [sys.executable, "-m", "kit.cli"]
HOST = "lms.example.edu"


def kit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*KIT, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=os.environ)


@pytest.fixture(scope="module")
def ca():
    root = trustme.CA()
    return root, root.create_child_ca()


def write_chain(folder: Path, leaf: trustme.LeafCert, root: trustme.CA, *, with_chain: bool = True
                ) -> tuple[Path, Path]:
    """The site's certificate, its intermediate, and the test CA's root (a private CA's root is
    in no system store, so the chain ends with it; a public CA's would not be needed)."""
    cert, key = folder / "fullchain.pem", folder / "privkey.pem"
    pems = leaf.cert_chain_pems if with_chain else leaf.cert_chain_pems[:1]
    cert.write_bytes(b"".join(p.bytes() for p in pems) + root.cert_pem.bytes())
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def test_a_good_chain_passes_and_says_what_it_is(ca, tmp_path):
    root, intermediate = ca
    cert, key = write_chain(tmp_path, intermediate.issue_cert(HOST), root)
    found = tls.check_files(cert, key, HOST)
    assert found.names == (HOST,) and "Testing CA" in found.issuer


@pytest.mark.parametrize("fault, message", [
    ("the key of another certificate", "does not match the certificate"),
    ("an expired certificate", "expired on"),
    ("the intermediate left out", "the chain is incomplete"),
    ("a certificate for another name", "is for www.other.edu, not for lms.example.edu"),
    ("not a certificate at all", "is not a PEM certificate chain"),
])
def test_files_mode_faults_are_refused_in_one_line(ca, tmp_path, fault, message):
    root, intermediate = ca
    if fault == "the key of another certificate":
        cert, _ = write_chain(tmp_path, intermediate.issue_cert(HOST), root)
        other = intermediate.issue_cert(HOST)
        key = tmp_path / "other-key.pem"
        other.private_key_pem.write_to_path(str(key))
    elif fault == "an expired certificate":
        leaf = intermediate.issue_cert(HOST, not_after=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
        cert, key = write_chain(tmp_path, leaf, root)
    elif fault == "the intermediate left out":
        cert, key = write_chain(tmp_path, intermediate.issue_cert(HOST), root, with_chain=False)
    elif fault == "a certificate for another name":
        cert, key = write_chain(tmp_path, intermediate.issue_cert("www.other.edu"), root)
    else:
        cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
        cert.write_text("hello\n")
        intermediate.issue_cert(HOST).private_key_pem.write_to_path(str(key))
    with pytest.raises(KitError, match=message) as exc:
        tls.check_files(cert, key, HOST)
    assert "\n" not in str(exc.value)


def test_a_self_signed_certificate_in_files_mode_is_refused(tmp_path):
    cert_pem, key_pem = tls.self_signed(HOST)
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    with pytest.raises(KitError, match="is self-signed"):
        tls.check_files(cert, key, HOST)


def test_certificates_that_issued_each_other_end_the_walk(tmp_path):
    """Two CAs cross-signed both ways (the same keys): the check ends instead of looping."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def make(subject, issuer, public, signer, *, ca, san=None):
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                   .public_key(public).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    a_key, b_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    a_by_b = make("CA A", "CA B", a_key.public_key(), b_key, ca=True)
    b_by_a = make("CA B", "CA A", b_key.public_key(), a_key, ca=True)
    leaf = make(HOST, "CA A", leaf_key.public_key(), a_key, ca=False, san=HOST)
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    cert.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, a_by_b, b_by_a)))
    key.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    assert tls.check_files(cert, key, HOST).names == (HOST,)
    not_a_ca = make("CA A", "CA B", a_key.public_key(), b_key, ca=False)
    cert.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, not_a_ca)))
    with pytest.raises(KitError, match="is not a CA certificate"):
        tls.check_files(cert, key, HOST)


def test_files_mode_faults_refuse_up_before_anything_changes(ca, tmp_path, fake_moodle):
    root, intermediate = ca
    cert, key = write_chain(tmp_path, intermediate.issue_cert("www.other.edu"), root)
    result = kit("init", "--name", "tf1", "--url", f"https://{HOST}:18443", "--tls", "files", "--cert", str(cert),
                 "--key", str(key), "--https-port", "18443", "--bind", "127.0.0.1", "--port", "18442",
                 "--moodle-source", str(fake_moodle), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    up = kit("up", cwd=tmp_path)
    assert up.returncode == 3
    lines = [line for line in up.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is for www.other.edu, not for lms.example.edu" in lines[0], up.stderr
    assert not (tmp_path / "build").exists() and not (tmp_path / ".kit" / "tf1" / "tls").exists()
    doctor = kit("doctor", cwd=tmp_path)
    assert doctor.returncode == 3 and "FAIL tls" in doctor.stderr


def test_an_https_url_needs_a_tls_choice_and_ports_must_agree(tmp_path):
    with pytest.raises(KitError, match="choose tls.mode: acme"):
        parse_site({"url": f"https://{HOST}"}, site_dir=tmp_path)
    with pytest.raises(KitError, match="edge publishes tls.port 443"):
        parse_site({"url": f"https://{HOST}:8443", "tls": {"mode": "self-signed"}}, site_dir=tmp_path)
    with pytest.raises(KitError, match="needs an https:// url"):
        parse_site({"url": "http://lms.example.edu:8080", "tls": {"mode": "self-signed"}}, site_dir=tmp_path)
    with pytest.raises(KitError, match="Let's Encrypt checks the site on port 80"):
        parse_site({"url": f"https://{HOST}", "tls": {"mode": "acme", "acme_email": "ops@example.edu"}},
                   site_dir=tmp_path)
    ok = parse_site({"url": f"https://{HOST}", "http": {"port": 80},
                     "tls": {"mode": "acme", "acme_email": "ops@example.edu"}}, site_dir=tmp_path)
    assert ok.tls.at_edge and not ok.tls_at_proxy


def files_for(tmp_path: Path, tls_settings: dict, url: str = f"https://{HOST}") -> dict[str, str]:
    site = parse_site({"name": "tr", "url": url, "http": {"port": 80}, "tls": tls_settings}, site_dir=tmp_path)
    return render_files(site, plan(site, HOST_2x24))


def test_the_edge_ends_tls_with_mozillas_intermediate_profile_and_redirects_http(tmp_path):
    files = files_for(tmp_path, {"mode": "self-signed", "hsts_max_age": 600})
    edge = files["edge.conf"]
    assert "listen 443 ssl http2 default_server;" in edge
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in edge and "TLSv1.1" not in edge
    assert 'add_header Strict-Transport-Security "max-age=600" always;' in edge
    https_server = edge.split("listen 443")[1]
    http_server = edge.split("listen 443")[0]
    assert "Strict-Transport-Security" not in http_server            # HSTS on HTTPS only
    assert f"return 301 https://{HOST}$request_uri;" in http_server
    assert "location /.well-known/acme-challenge/" in http_server
    assert "X-Content-Type-Options nosniff" in https_server and "Referrer-Policy" in https_server
    assert "proxy_set_header X-Forwarded-Proto https;" in https_server
    php = files["config.php"]
    assert "$CFG->sslproxy  = false;" in php and "$CFG->cookiesecure = true;" in php
    assert "fastcgi_param HTTPS on;" in files["nginx.conf"]


def test_proxy_mode_keeps_moodles_sslproxy_and_serves_plain_http(tmp_path):
    files = files_for(tmp_path, {"mode": "proxy"})
    assert "listen 443" not in files["edge.conf"] and "$CFG->sslproxy  = true;" in files["config.php"]
    plain = files_for(tmp_path, {}, url="http://lms.example.edu")
    assert "$CFG->sslproxy  = false;" in plain["config.php"] and "$CFG->cookiesecure = false;" in plain["config.php"]


def test_security_settings_are_forced_in_config_php(tmp_path):
    site = parse_site({"name": "sec", "security": {"lockout_threshold": 5, "password_min_length": 12}},
                      site_dir=tmp_path)
    php = render_files(site, plan(site, HOST_2x24))["config.php"]
    for needle in ("$CFG->lockoutthreshold = 5;", "$CFG->lockoutwindow = 1800;", "$CFG->minpasswordlength = 12;",
                   "$CFG->registerauth = '';", "$CFG->allowframembedding = 0;", "$CFG->cookiehttponly = true;"):
        assert needle in php, needle


def test_init_writes_the_tls_settings(tmp_path, fake_moodle):
    result = kit("init", "--name", "ti1", "--url", f"https://{HOST}", "--tls", "acme", "--acme-email",
                 "ops@example.edu", "--port", "80", "--moodle-source", str(fake_moodle), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load((tmp_path / "site.yaml").read_text())
    assert data["tls"] == {"mode": "acme", "acme_email": "ops@example.edu"}
    refused = kit("init", "--force", "--name", "ti2", "--url", f"https://{HOST}", cwd=tmp_path)
    assert refused.returncode == 3 and "choose tls.mode" in refused.stderr


def test_the_self_signed_trial_certificate_names_the_host(tmp_path):
    cert, key = tls.self_signed(HOST)
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    found = tls.describe_pem(cert)
    assert found.names == (HOST,) and 85 < found.days_left() < 91
    assert "self-signed" in found.issuer


def test_the_site_ca_issues_certificates_for_machine_addresses():
    ca_cert, ca_key = tls.make_ca("hs")
    cert, _ = tls.issue(ca_cert, ca_key, ["10.0.0.10", "kit-hs-db"])
    assert tls.describe_pem(cert).names == ("kit-hs-db", "10.0.0.10")


def test_doctor_fails_on_moodle_security_errors_and_names_warnings():
    from kit import security

    out = ("PHP Notice: something\n" + json.dumps([
        {"ref": "core_cookiesecure", "name": "Secure cookies", "status": "ok", "summary": "Secure cookies enabled."},
        {"ref": "core_riskbackup", "name": "Backup of user data", "status": "warning", "summary": "Found 1 roles"},
    ]))
    rows = security.findings(load_site_for_checks(), "http://127.0.0.1:9", out)
    check = security.verdict(rows)
    assert check.ok and "warning: core_riskbackup (Found 1 roles)" in check.message and "2 checks" in check.message
    check = security.verdict([*rows, security.Finding("core_dataroot", "Dataroot", "critical", "public")])
    assert not check.ok and "critical: core_dataroot (public)" in check.message
    with pytest.raises(ValueError, match="no JSON"):
        security.findings(load_site_for_checks(), "http://127.0.0.1:9", "Exception - Class curl not found")


def load_site_for_checks():
    from kit.config import Site

    return Site(url="http://lms.example.edu:8080", http={"port": 8080})


def test_public_paths_are_requested_through_the_edge_as_the_public_would(tmp_path):
    """A real HTTP server standing in for the edge: it serves one path that must not be public."""
    import http.server
    import threading

    from kit import security

    seen_hosts = []

    class Edge(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - http.server API
            seen_hosts.append(self.headers["Host"])
            self.send_response({"/composer.json": 200, "/lib/classes/": 403}.get(self.path, 404))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Edge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        sets = [{"pattern": "composer.json", "404": ["composer.json"]}, {"pattern": "", "404": ["lib/classes/"]},
                {"pattern": "", "404": ["doesnotexist"]}]
        found = security.probe_public_paths(load_site_for_checks(), base, sets)
        assert found.status == "error" and "/composer.json answered 200 (expected 404)" in found.summary
        assert "lib/classes" not in found.summary       # 403 is as good as 404
        assert set(seen_hosts) == {"lms.example.edu:8080"}
        assert security.probe_public_paths(load_site_for_checks(), base, sets[1:]).status == "ok"
    finally:
        server.shutdown()
        server.server_close()
    gone = security.probe_public_paths(load_site_for_checks(), base, sets)
    assert gone.status == "unknown" and "unreachable" in gone.summary


@pytest.mark.parametrize(("names", "host", "matches"), [
    (("lms.example.edu",), "lms.example.edu", True),
    (("*.example.edu",), "lms.example.edu", True),
    (("*.example.edu",), "a.lms.example.edu", False),
    (("*.example.edu",), "example.edu", False),
    (("LMS.Example.edu.",), "lms.example.edu", True),
])
def test_served_names_match_the_host_as_browsers_match(names, host, matches):
    assert tls.names_match(names, host) is matches
