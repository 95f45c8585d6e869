"""The site model: defaults, one-line errors naming the key, secrets generated owner-only."""
from __future__ import annotations

import stat

import pytest

from kit.config import SECRET_KEYS, create_secrets, load_secrets, load_site, parse_site, secret_keys
from kit.errors import KitError
from tests.conftest import write_site


def test_defaults_fill_everything(site_dir):
    site = parse_site({}, site_dir=site_dir)
    assert site.name == "moodle" and site.target == "local" and site.users == 300
    assert site.http.port == 8080 and site.images.base == "debian:bookworm-slim"
    assert site.moodle.source_kind() == "git"


def test_url_defaults_to_bind_address_for_loopback(site_dir):
    site = parse_site({"http": {"bind": "127.0.0.1", "port": 18080}}, site_dir=site_dir)
    assert site.url == "http://127.0.0.1:18080"


@pytest.mark.parametrize("data, needle", [
    ({"users": -5}, "users: Input should be greater than 0 (got -5)"),
    ({"userz": 5}, "userz: unknown key"),
    ({"http": {"port": 70000}}, "http.port"),
    ({"http": {"bind": "everywhere"}}, "http.bind"),
    ({"url": "ftp://x"}, "url"),
    ({"target": "mars"}, "target"),
    ({"name": "Bad Name"}, "name"),
    ({"moodle": {"admin_email": "nope"}}, "moodle.admin_email"),
])
def test_bad_values_give_one_line_naming_the_key(site_dir, data, needle):
    with pytest.raises(KitError) as exc:
        parse_site(data, site_dir=site_dir)
    message = str(exc.value)
    assert needle in message
    assert "\n" not in message


def test_malformed_yaml_is_one_line_with_line_number(site_dir):
    path = site_dir / "site.yaml"
    path.write_text("users: 5\nhttp: {port: 80\n")
    with pytest.raises(KitError) as exc:
        load_site(path)
    assert "malformed YAML" in str(exc.value) and "line" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_top_level_must_be_a_mapping(site_dir):
    path = site_dir / "site.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(KitError, match="must be a mapping"):
        load_site(path)


def test_missing_site_file_says_run_init(site_dir):
    with pytest.raises(KitError, match="kit init"):
        load_site(site_dir / "site.yaml")


def test_source_kinds(site_dir):
    kinds = {src: parse_site({"moodle": {"source": src}}, site_dir=site_dir).moodle.source_kind()
             for src in ("https://git.example.org/moodle.git", "/srv/moodle", "moodle-4.5.6.tgz", "git@host:m.git")}
    assert kinds == {"https://git.example.org/moodle.git": "git", "/srv/moodle": "folder",
                     "moodle-4.5.6.tgz": "tarball", "git@host:m.git": "git"}


def test_secrets_are_generated_private_and_stable(site_dir):
    site = load_site(write_site(site_dir, {"name": "s1"}))
    first = create_secrets(site)
    assert set(first) == set(SECRET_KEYS)
    assert all(len(v) >= 24 for v in first.values())
    assert len(set(first.values())) == len(SECRET_KEYS)
    mode = stat.S_IMODE(site.secrets_file.stat().st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(site.secrets_file.parent.stat().st_mode) == 0o700
    assert load_secrets(site) == first
    assert create_secrets(site) == first   # init again: the passwords of a site with data stay


def test_secrets_differ_between_sites(tmp_path):
    generated = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        generated.append(create_secrets(load_site(write_site(tmp_path / name, {})))["db_password"])
    assert generated[0] != generated[1]


def test_world_readable_secrets_are_refused(site_dir):
    site = load_site(write_site(site_dir, {}))
    create_secrets(site)
    site.secrets_file.chmod(0o644)
    with pytest.raises(KitError, match="chmod 600"):
        load_secrets(site)


def test_external_database_sites_have_no_admin_secret(site_dir):
    site = parse_site({"database": {"external": "postgresql://moodle@db.example.edu/moodle"}}, site_dir=site_dir)
    assert "db_admin_password" not in secret_keys(site)
    assert set(create_secrets(site, {"db_password": "given"})) == set(secret_keys(site))
    assert load_secrets(site)["db_password"] == "given"
