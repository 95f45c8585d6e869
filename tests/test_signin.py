"""Sign-in settings (site.yaml's auth section rendered for signin.php), the CSV checks made
before Moodle's upload CLIs run, and the refusals of `kit auth` that need no directory."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from kit import bulk, signin
from kit.config import create_secrets, load_secrets, parse_site
from kit.errors import KitError, UsageError
from kit.render import render_files
from kit.sizing import plan

LDAP = {"url": "ldap://dc.example.edu", "base_dns": ["ou=a,dc=example,dc=edu", "ou=b,dc=example,dc=edu"],
        "bind_dn": "cn=moodle,dc=example,dc=edu"}


def site_with(auth: dict, tmp_path: Path | None = None):
    return parse_site({"name": "t", "auth": auth}, site_dir=tmp_path or Path("."), source="test")


def test_ldap_settings_name_moodles_own_config_keys():
    settings = signin.settings(site_with({"ldap": {**LDAP, "removed": "suspend", "map": {"idnumber": "employeeNumber"}}}))
    config = settings["ldap"]["config"]
    assert config["contexts"] == "ou=a,dc=example,dc=edu;ou=b,dc=example,dc=edu"
    assert config["removeuser"] == 1 and config["search_sub"] == 1 and config["user_attribute"] == "uid"
    assert config["field_map_idnumber"] == "employeeNumber" and config["field_lock_email"] == "locked"
    assert "bind_pw" not in config and settings["enabled"] == ["ldap"]
    assert settings["ldap"]["sync_minute"] == "0" and settings["ldap"]["sync_hour"] == "*"


def test_presets_give_their_endpoints_so_rollout_needs_no_network():
    site = site_with({"oauth2": [{"name": "ms", "provider": "microsoft", "client_id": "x", "tenant": "t-1"},
                                 {"name": "google", "provider": "google", "client_id": "y"},
                                 {"name": "idp", "provider": "oidc", "client_id": "z", "issuer": "https://idp.x"}]})
    issuers = {i["name"]: i for i in signin.settings(site)["oauth2"]}
    assert issuers["ms"]["endpoints"]["authorization"] == \
        "https://login.microsoftonline.com/t-1/oauth2/v2.0/authorize"
    assert set(issuers["google"]["endpoints"]) == {"authorization", "token", "userinfo"}
    assert issuers["idp"]["endpoints"] == {} and issuers["idp"]["baseurl"] == "https://idp.x"   # discovery
    assert all("clientsecret" not in i and i["secret_file"] == f"oauth2_{i['name']}_secret" for i in issuers.values())
    assert site.auth.secret_keys() == ("oauth2_ms_secret", "oauth2_google_secret", "oauth2_idp_secret")


@pytest.mark.parametrize("auth, words", [
    ({"oauth2": [{"name": "a", "provider": "oidc", "client_id": "z"}]}, "needs issuer"),
    ({"oauth2": [{"name": "a", "provider": "google", "client_id": "z"}] * 2}, "same name"),
    ({"ldap": {**LDAP, "url": "http://dc"}}, "url"),
    ({"ldap": {**LDAP, "base_dns": []}}, "base_dns"),
])
def test_bad_auth_settings_are_refused(auth, words):
    with pytest.raises(KitError) as info:
        site_with(auth)
    assert words in str(info.value)


def test_the_default_site_signs_in_with_moodle_accounts_only_and_never_relaxes_curl():
    site = parse_site({"name": "t"}, site_dir=Path("."), source="test")
    files = render_files(site, plan(site))
    assert json.loads(files["signin.json"])["enabled"] == []
    assert "curlsecurityblockedhosts" not in files["config.php"]
    assert "TLS_CACERT /etc/ssl/certs/ca-certificates.crt" in files["ldap.conf"] and files["ldap-ca.crt"] == ""
    relaxed = parse_site({"name": "t", "auth": {"allow_private_idp": True}}, site_dir=Path("."), source="test")
    assert "$CFG->curlsecurityblockedhosts = '';" in render_files(relaxed, plan(relaxed))["config.php"]


def test_a_directory_ca_file_is_what_moodles_ldap_client_trusts(tmp_path):
    import trustme

    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    site = site_with({"ldap": {**LDAP, "ca_file": "ca.pem"}}, tmp_path)
    files = render_files(site, plan(site))
    assert "TLS_CACERT /etc/moodle-kit/ldap-ca.crt" in files["ldap.conf"]
    assert files["ldap-ca.crt"] == (tmp_path / "ca.pem").read_text()
    assert "forced_plugin_settings['auth_ldap']['bind_pw'] = kit_secret('ldap_bind_password')" in files["config.php"]


def test_a_sign_in_method_without_its_secret_is_refused_before_anything_runs(tmp_path):
    bare = parse_site({"name": "t"}, site_dir=tmp_path, source="test")
    create_secrets(bare)
    with pytest.raises(UsageError) as info:
        load_secrets(site_with({"ldap": LDAP}, tmp_path))
    assert "ldap_bind_password" in str(info.value) and "kit auth ldap" in str(info.value)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_kit_auth_ldap_refuses_an_unreachable_directory_and_changes_nothing(tmp_path):
    from tests.test_cli import kit, one_error_line

    assert kit("init", "--name", "t", cwd=tmp_path).returncode == 0
    before = (tmp_path / "site.yaml").read_bytes()
    args = ["auth", "ldap", "--url", f"ldap://127.0.0.1:{closed_port()}", "--base-dn", "ou=a,dc=x",
            "--bind-dn", "cn=m,dc=x"]
    no_stdin_flag = kit(*args, cwd=tmp_path)
    assert no_stdin_flag.returncode == 2 and "--password-stdin" in one_error_line(no_stdin_flag)
    result = kit(*args, "--password-stdin", cwd=tmp_path, stdin="pw\n")
    assert result.returncode == 3
    line = one_error_line(result)
    assert "cannot reach the directory" in line and "site.yaml unchanged" in line
    assert (tmp_path / "site.yaml").read_bytes() == before


# --- CSV checks ------------------------------------------------------------------------------

HEADER = "username,password,firstname,lastname,email,course1\n"


def users(text: str, known=frozenset({"C1"})) -> bulk.CsvCheck:
    return bulk.check_users(bulk.read_csv("users", text.encode(), source="u.csv"), auth="manual",
                            known_courses=set(known))


def test_bad_rows_are_named_by_their_line_number():
    check = users(HEADER + "a1,pw,A,B,a1@x.edu,C1\n"        # line 2: good
                  "A1,pw,A,B,a2@x.edu,C1\n"                 # 3: duplicate (usernames are lower case)
                  "a3,pw,A,B,not-an-email,C1\n"             # 4
                  "a4,pw,A,B,a4@x.edu,NOPE\n"               # 5: unknown course
                  "a5,,A,B,a5@x.edu,\n"                     # 6: a manual account without a password
                  "a 6,pw,A,B,a6@x.edu,\n")                 # 7: a space in the username
    assert check.bad_lines == [3, 4, 5, 6, 7]
    assert check.good_keys() == ["a1"]
    assert b"a1,pw" in check.good_csv() and b"NOPE" not in check.good_csv()


def test_files_no_row_report_could_describe_are_refused_in_one_line():
    with pytest.raises(UsageError, match="not UTF-8"):
        bulk.read_csv("users", HEADER.encode() + "é,pw,A,B,e@x.edu,\n".encode("latin-1"), source="u.csv")
    with pytest.raises(UsageError, match="lacks the column"):
        bulk.read_csv("users", b"username,firstname\nx,y\n", source="u.csv")
    with pytest.raises(UsageError, match="separated by ';'"):
        bulk.read_csv("users", b"username;password;firstname;lastname;email\nx;y;z;w;q@x.y\n", source="u.csv")
    with pytest.raises(UsageError, match="no password column"):
        bulk.check_users(bulk.read_csv("users", b"username,firstname,lastname,email\nx,y,z,q@x.edu\n",
                                       source="u.csv"), auth="manual", known_courses=set())
    directory = bulk.check_users(bulk.read_csv("users", b"username,firstname,lastname,email\nx,y,z,q@x.edu\n",
                                               source="u.csv"), auth="ldap", known_courses=set())
    assert directory.errors == [] and b",ldap" in directory.good_csv(fill={"auth": "ldap"})


def test_moodles_upload_report_is_read_back():
    out = ("kit: progress 500/1000 rows (12 s)\nLine 7\n  Error: Invalid email address\n"
           "Users created: 998\nUsers updated: 1\nUsers skipped: 0\nUsers having a weak password: 0\nErrors: 1\n")
    result = bulk.parse_moodle_output(out)
    assert (result.created, result.updated, result.failed) == (998, 1, 1)
    assert result.failed_lines == [(7, "Invalid email address")]
    courses = bulk.parse_moodle_output("Courses total: 20\nCourses created: 19\nCourses updated: 0\n"
                                       "Courses deleted: 0\nCourses errors: 1\n")
    assert (courses.created, courses.failed) == (19, 1)


def test_a_private_identity_providers_ca_is_trusted_beside_the_systems(tmp_path):
    import trustme

    trustme.CA().cert_pem.write_to_path(str(tmp_path / "idp.pem"))
    site = site_with({"idp_ca_file": "idp.pem"}, tmp_path)
    files = render_files(site, plan(site))
    assert "curl.cainfo = /etc/moodle-kit/outbound-ca.crt" in files["php.ini"]
    assert files["outbound-ca.crt"].endswith((tmp_path / "idp.pem").read_text())
    if signin.SYSTEM_CAS.is_file():
        assert files["outbound-ca.crt"].startswith(signin.SYSTEM_CAS.read_text())
    plain = site_with({})
    assert "curl.cainfo" not in render_files(plain, plan(plain))["php.ini"]


def test_doctor_reaches_the_same_verdict_on_a_missing_ca_file(tmp_path):
    from kit.doctor import check_signin

    bad = check_signin(site_with({"ldap": {**LDAP, "ca_file": "gone.pem"}}, tmp_path))
    assert not bad.ok and "auth.ldap.ca_file: cannot read" in bad.message
    with pytest.raises(KitError, match="auth.ldap.ca_file: cannot read"):
        site = site_with({"ldap": {**LDAP, "ca_file": "gone.pem"}}, tmp_path)
        render_files(site, plan(site))
    assert check_signin(site_with({"ldap": LDAP})).message == "Moodle accounts, ldap"


def test_kit_auth_oidc_refuses_a_provider_it_cannot_reach_and_changes_nothing(tmp_path):
    from tests.test_cli import kit, one_error_line

    assert kit("init", "--name", "t", cwd=tmp_path).returncode == 0
    before = (tmp_path / "site.yaml").read_bytes()
    result = kit("auth", "oidc", "--issuer", f"https://127.0.0.1:{closed_port()}", "--client-id", "x",
                 "--client-secret-stdin", cwd=tmp_path, stdin="s3cret\n")
    assert result.returncode == 3
    line = one_error_line(result)
    assert "cannot reach the provider" in line and "site.yaml unchanged" in line and "s3cret" not in line
    assert (tmp_path / "site.yaml").read_bytes() == before
