"""What an operator at 2 a.m. meets: bad input refused in one line with the documented exit
code, nothing half-applied, and `kit doctor` reaching the same verdict as `kit up`.
Each test reproduces one finding of the "no command that can harm a site" issue.

The CLI runs as a shell sees it (a subprocess). Docker is this host's real engine; no site
is rolled out here (tests/e2e does that).
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from kit import identity
from kit.config import load_site, normalise_url, parse_site
from kit.errors import KitError

KIT = [sys.executable, "-m", "kit.cli"]


def kit(*args: str, cwd: Path, env: dict | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*KIT, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, input=stdin)


def refusal(result: subprocess.CompletedProcess, code: int = 3) -> str:
    """The one line on stderr of a refused command, checked for its exit code."""
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def init(folder: Path, fake_moodle: Path, *extra: str, name: str = "sf1", port: str = "18321") -> None:
    result = kit("init", "--name", name, "--bind", "127.0.0.1", "--port", port, "--moodle-source",
                 str(fake_moodle), *extra, cwd=folder)
    assert result.returncode == 0, result.stderr


# --- secrets are never made up -----------------------------------------------------------------

@pytest.mark.parametrize("damage", ["delete the file", "delete one key", "corrupt it"])
def test_lost_secrets_are_never_regenerated(tmp_path, fake_moodle, damage):
    init(tmp_path, fake_moodle)
    secrets = tmp_path / ".kit" / "sf1" / "secrets.yaml"
    before = yaml.safe_load(secrets.read_text())
    if damage == "delete the file":
        secrets.unlink()
    elif damage == "delete one key":
        secrets.write_text(yaml.safe_dump({k: v for k, v in before.items() if k != "redis_password"}))
    else:
        secrets.write_text("db_password: [unclosed\n")
    secrets.chmod(0o600) if secrets.exists() else None
    after_damage = secrets.read_bytes() if secrets.exists() else None
    for command in (("up", "--dry-run"), ("up",)):
        line = refusal(kit(*command, cwd=tmp_path))
        assert "preflight failed" in line and "secrets.yaml" in line and "restore" in line, line
    doctor = kit("doctor", cwd=tmp_path)
    assert doctor.returncode == 3 and "FAIL secrets" in doctor.stderr
    assert kit("render", cwd=tmp_path).returncode == 0     # rendering needs no secret, and makes none
    assert kit("down", cwd=tmp_path).returncode == 0       # nothing runs; nothing needs a password
    assert (secrets.read_bytes() if secrets.exists() else None) == after_damage
    assert not (tmp_path / "build" / "sf1" / "secrets.yaml").exists()


def test_missing_secrets_name_the_backup_that_has_them(tmp_path):
    site = parse_site({"name": "sf2"}, site_dir=tmp_path)
    backup = tmp_path / "backups" / "sf2" / "20261201-010203"
    backup.mkdir(parents=True)
    (backup / "secrets.yaml").write_text("db_password: x\n")
    (backup / "manifest.json").write_text(json.dumps({"created_epoch": 1780000000}))
    from kit.config import load_secrets

    with pytest.raises(KitError, match=rf"cp {backup / 'secrets.yaml'} {site.secrets_file}"):
        load_secrets(site)


def test_world_readable_secrets_fail_in_doctor_as_in_up(tmp_path, fake_moodle):
    init(tmp_path, fake_moodle)
    (tmp_path / ".kit" / "sf1" / "secrets.yaml").chmod(0o644)
    doctor = kit("doctor", cwd=tmp_path)
    assert doctor.returncode == 3 and "FAIL secrets" in doctor.stderr and "chmod 600" in doctor.stderr
    assert "preflight failed" in refusal(kit("up", cwd=tmp_path)) and "chmod 600" in kit("up", cwd=tmp_path).stderr


# --- URLs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, message", [
    ("https://lms.example.edu:99999", "port must be a number from 1 to 65535"),
    ("https://lms.example.edu:abc", "port must be a number from 1 to 65535"),
    ("https://lms.example.edu:0", "port must be a number from 1 to 65535"),
    ("https://ops:secret@lms.example.edu", "must not contain a user name or password"),
    ("https://lms.example.edu/?next=1", "must not have a ?query or #fragment"),
    ("https://lms.example.edu#top", "must not have a ?query or #fragment"),
    ("https://lms example.edu", "must not contain spaces"),
    ("https://lms.example.edu/moodle", "without a path"),
    ("https://-bad-.example.edu", "is not a valid DNS name"),
])
def test_bad_urls_are_refused_by_init_plan_and_doctor_alike(tmp_path, url, message):
    with pytest.raises(KitError, match="url: .*" + message.replace("?", r"\?")):
        parse_site({"url": url}, site_dir=tmp_path)
    assert message in refusal(kit("init", "--url", url, "--name", "u1", cwd=tmp_path))
    assert not (tmp_path / "site.yaml").exists()
    (tmp_path / "site.yaml").write_text(yaml.safe_dump({"name": "u1", "url": url}))
    for command in ("plan", "doctor", "render", "up"):
        assert message in refusal(kit(command, cwd=tmp_path)), command
    assert not (tmp_path / "build").exists()


def test_an_internationalised_host_becomes_its_ascii_form():
    assert normalise_url("https://Lärm.Example.EDU/") == "https://xn--lrm-qla.example.edu"
    assert normalise_url("http://[::1]:8080") == "http://[::1]:8080"
    assert normalise_url("http://10.0.0.5:8080/") == "http://10.0.0.5:8080"


def test_an_http_url_whose_port_is_not_the_published_one_is_refused(tmp_path):
    with pytest.raises(KitError, match=r"served on port 8081, but the edge publishes http.port 8080"):
        parse_site({"url": "http://lms.example.edu:8081"}, site_dir=tmp_path)
    with pytest.raises(KitError, match=r"served on port 80, but the edge publishes http.port 8080"):
        parse_site({"url": "http://lms.example.edu"}, site_dir=tmp_path)
    assert parse_site({"url": "http://lms.example.edu:8080"}, site_dir=tmp_path).public_port == 8080
    # TLS at a proxy of yours: its port is the proxy's.
    assert parse_site({"url": "https://lms.example.edu", "tls": {"mode": "proxy"}},
                      site_dir=tmp_path).public_port == 443


# --- Moodle's code is checked before anything is built -------------------------------------------------

def _tar(path: Path, files: dict[str, str], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


MOODLE_FILES = {"moodle/version.php": "<?php\n$version = 2024100706.00;\n$release = '4.5.6 (Build: 20250811)';\n",
                "moodle/lib/setup.php": "<?php\n", "moodle/admin/cli/install_database.php": "<?php\n"}


@pytest.mark.parametrize("kind, message", [
    ("a text file named .tar.gz", "is not a readable tar archive"),
    ("a truncated tarball", "is not a readable tar archive"),
    ("a tarball of a random folder", "holds no Moodle tree"),
])
def test_a_bad_moodle_tarball_fails_in_doctor_and_dry_run_before_any_build(tmp_path, kind, message):
    tarball = tmp_path / "moodle.tar.gz"
    if kind == "a text file named .tar.gz":
        tarball.write_text("this is not an archive\n")
    elif kind == "a truncated tarball":
        full = _tar(tmp_path / "full.tar.gz", {**MOODLE_FILES, "moodle/big.bin": os.urandom(200_000).hex()})
        tarball.write_bytes(full.read_bytes()[:20_000])
    else:
        _tar(tarball, {"photos/cat.jpg": "meow", "photos/readme.txt": "hi"})
    result = kit("init", "--name", "tb1", "--bind", "127.0.0.1", "--port", "18322", "--moodle-source", str(tarball),
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doctor = kit("doctor", cwd=tmp_path)
    assert doctor.returncode == 3 and "FAIL moodle" in doctor.stderr and message in doctor.stderr
    dry = refusal(kit("up", "--dry-run", cwd=tmp_path))
    assert message in dry and "nothing was changed" in dry
    assert not (tmp_path / "build").exists()


def test_a_good_moodle_tarball_is_ok_in_doctor(tmp_path):
    tarball = _tar(tmp_path / "moodle-4.5.6.tgz", MOODLE_FILES)
    assert kit("init", "--name", "tb2", "--bind", "127.0.0.1", "--port", "18323", "--moodle-source", str(tarball),
               cwd=tmp_path).returncode == 0
    doctor = kit("doctor", cwd=tmp_path)
    assert "ok   moodle   Moodle 4.5.6 (Build: 20250811) from tarball" in doctor.stdout


def test_an_unreachable_git_source_fails_in_doctor(tmp_path):
    assert kit("init", "--name", "gt1", "--bind", "127.0.0.1", "--port", "18324", "--moodle-source",
               f"file://{tmp_path}/no-such-repo.git", cwd=tmp_path).returncode == 0
    doctor = kit("doctor", cwd=tmp_path)
    assert doctor.returncode == 3 and "FAIL moodle" in doctor.stderr and "cannot read ref 'v4.5.6'" in doctor.stderr


# --- scale values ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["web=\u0663", "web=3.0", "web=-1", "web=", "web=99999", "replicas=3"])
def test_scale_takes_ascii_whole_numbers_and_changes_nothing_otherwise(tmp_path, fake_moodle, value):
    init(tmp_path, fake_moodle)
    before = (tmp_path / "site.yaml").read_text()
    result = kit("scale", value, cwd=tmp_path)
    assert result.returncode in (2, 3)
    refusal(result, result.returncode)
    assert (tmp_path / "site.yaml").read_text() == before


def test_scale_beyond_the_models_range_is_a_config_refusal(tmp_path, fake_moodle):
    init(tmp_path, fake_moodle)
    assert "scale.web_replicas" in refusal(kit("scale", "web=65", cwd=tmp_path), 3)


# --- site.yaml itself --------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (b"", "has no settings (empty, or only comments)"),
    (b"# just a comment\n\n# and another\n", "has no settings (empty, or only comments)"),
    ("name: caf\u00e9\n".encode("utf-16"), "saved as UTF-16"),
    ("name: moodle\nmoodle: {fullname: \"Universit\u00e9\"}\n".encode("latin-1"), "line 2: not UTF-8 (byte 0xe9)"),
])
def test_unusable_site_yaml_is_one_line(tmp_path, content, message):
    (tmp_path / "site.yaml").write_bytes(content)
    for command in ("plan", "doctor", "up", "down", "status"):
        assert message in refusal(kit(command, cwd=tmp_path)), command


def test_a_malformed_backup_manifest_is_one_line(tmp_path, fake_moodle):
    from kit.backup import verify

    folder = tmp_path / "b"
    folder.mkdir()
    for text, message in (("{not json", "unreadable manifest"), ('{"files": []}', "malformed manifest"),
                          ('{"files": {"db.dump": {"bytes": "x"}}}', "db.dump is missing")):
        (folder / "manifest.json").write_text(text)
        with pytest.raises(KitError, match=message):
            verify(folder)
    (folder / "db.dump").write_text("x")
    (folder / "moodledata.tar.gz").write_text("y")
    (folder / "manifest.json").write_text('{"files": {"db.dump": {"bytes": "one"}, "moodledata.tar.gz": {}}}')
    with pytest.raises(KitError, match="malformed entry for db.dump"):
        verify(folder)


# --- exit codes and where errors go -----------------------------------------------------------------------

def test_exit_codes_tell_usage_config_and_failure_apart(tmp_path, fake_moodle):
    assert refusal(kit("init", "--users", "many", cwd=tmp_path), 2).startswith("error: Invalid value for '--users'")
    assert refusal(kit("nosuchcommand", cwd=tmp_path), 2).startswith("error: No such command")
    (tmp_path / "site.yaml").write_text("users: -1\n")
    assert "users" in refusal(kit("plan", cwd=tmp_path), 3)
    (tmp_path / "site.yaml").unlink()
    init(tmp_path, fake_moodle, name="ex1", port="18325")
    # The operation itself failing: a load test against a port where nothing listens.
    assert "SLO missed" in refusal(kit("loadtest", "run", "--url", "http://127.0.0.1:9", "--target-file",
                                       str(_target_file(tmp_path)), "--duration", "3s", "--users", "1",
                                       cwd=tmp_path, env={"KIT_LT_PASSWORD": "x"}), 1)


def _target_file(folder: Path) -> Path:
    path = folder / "target.json"
    path.write_text(json.dumps({"course_id": 2, "course_shortname": "c", "page_cmid": 1, "forum_cmid": 2,
                                "discussion_id": 1, "quiz_cmid": 3, "enrolled": 1,
                                "users": {"count": 1, "prefix": "tool_generator_"}}))
    return path


def test_a_bug_is_one_line_with_the_traceback_in_a_private_file(tmp_path, fake_moodle, monkeypatch):
    init(tmp_path, fake_moodle, name="bg1", port="18326")
    probe = tmp_path / "sitecustomize.py"
    probe.write_text("import kit.sizing\n"
                     "def broken(*a, **k):\n    raise ZeroDivisionError('planted for the test')\n"
                     "kit.sizing.plan = broken\n")
    result = kit("plan", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    line = refusal(result, 70)
    assert "the kit hit a bug (ZeroDivisionError: planted for the test)" in line
    log = Path(line.rsplit(" ", 1)[-1])
    assert "Traceback" in log.read_text() and (log.stat().st_mode & 0o077) == 0
    log.unlink()


def test_doctor_prints_fail_lines_on_stderr_and_ok_lines_on_stdout(tmp_path, fake_moodle):
    init(tmp_path, fake_moodle, name="dr1", port="18327")
    (tmp_path / ".kit" / "dr1" / "secrets.yaml").unlink()
    doctor = kit("doctor", cwd=tmp_path)
    assert doctor.returncode == 3
    assert "FAIL secrets" in doctor.stderr and "FAIL" not in doctor.stdout
    assert "ok   disk" in doctor.stdout


# --- ownership rules (the real two-folder runs are in tests/e2e/test_ownership.py) -------------------------

def test_ownership_check_names_the_owning_folder(tmp_path):
    site = load_site(_write(tmp_path / "a", {"name": "ow1"}))
    me = identity.ensure(site)
    theirs = identity.Owner(site_id="f" * 16, folder="/srv/other", host="admin1")
    other = identity.Found(where="this host", objects=["container kit-ow1-db"], site_ids={"f" * 16}, owner=theirs)
    with pytest.raises(KitError, match=r"belongs to another folder \(managed from admin1:/srv/other\): refusing "
                                       r"`kit down`"):
        identity.check(site, [other], command="down")
    unlabelled = identity.Found(where="this host", objects=["container kit-ow1-db"], site_ids={""}, owner=None)
    with pytest.raises(KitError, match="belongs to another folder"):
        identity.check(site, [unlabelled], command="up")
    moved = identity.Owner(site_id=me.id, folder="/old/place", host="admin0")
    with pytest.raises(KitError, match=r"managed from admin0:/old/place, not from .*run `kit adopt` here"):
        identity.check(site, [identity.Found("this host", ["volume kit-ow1-pgdata"], {me.id}, moved)], command="up")
    mine = identity.Owner.of(site, me)
    identity.check(site, [identity.Found("this host", ["volume kit-ow1-pgdata"], {me.id}, mine)], command="up")
    identity.check(site, [identity.Found("this host", [], set(), None)], command="up")


def _write(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "site.yaml").write_text(yaml.safe_dump(data))
    return folder / "site.yaml"


def test_rollback_to_a_release_of_an_older_kit_is_refused_before_anything_runs(tmp_path, monkeypatch):
    """Its snapshot passed secrets through the environment; today's playbooks cannot apply it."""
    import yaml as _yaml

    from kit import releases
    from kit.config import parse_site
    from kit.targets import target_for

    site = parse_site({"name": "old"}, site_dir=tmp_path)
    site.build_dir.mkdir(parents=True)
    (site.build_dir / "vars.yml").write_text(_yaml.safe_dump({"kit_site": "old", "kit_images": {"moodle": "a"}}))
    first = releases.start(site, {"moodle": "kit/moodle:a"}, "2024100706", "4.5.6")
    releases.finish(site, first, "ok")
    (site.build_dir / "vars.yml").write_text(_yaml.safe_dump(
        {"kit_site": "old", "kit_images": {"moodle": "b"}, "kit_secrets_dir": "/run/kit/secrets", "kit_tls": {},
         "kit_network_tls": False, "kit_signin_file": "/etc/moodle-kit/signin.json"}))
    second = releases.start(site, {"moodle": "kit/moodle:b"}, "2024100706", "4.5.6")
    releases.finish(site, second, "ok")
    assert releases.snapshot_problem(site, second.id) is None
    ran = []
    target = target_for(site)
    monkeypatch.setattr(type(target), "ansible", lambda self, *a, **k: ran.append(a))
    with pytest.raises(KitError, match="rolled out by an older kit .* kit_network_tls, kit_signin_file"):
        target.rollback()
    assert ran == [] and [r.id for r in releases.load(site)] == [first.id, second.id]


def test_the_port_check_fails_when_another_program_holds_a_port_the_edge_does_not(tmp_path, monkeypatch):
    """This site's edge publishes :HTTP; another program listens on the HTTPS port."""
    import socket as _socket

    from kit import identity
    from kit.config import parse_site
    from kit.engine import Container
    from kit.targets.local import LocalTarget

    listeners = []
    for _ in range(2):
        sock = _socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        listeners.append(sock)
    http_port, https_port = (s.getsockname()[1] for s in listeners)
    try:
        site = parse_site({"name": "pc", "url": f"https://lms.example.edu:{https_port}",
                           "http": {"bind": "127.0.0.1", "port": http_port},
                           "tls": {"mode": "self-signed", "port": https_port},
                           "monitoring": {"enabled": False}}, site_dir=tmp_path)
        me = identity.Identity.new()
        identity.save(site, me)
        target = LocalTarget(site)

        def edge_with(ports):
            return Container(name=target.names.edge, id="x", role="edge", state="running", health="healthy",
                             image="kit/edge", started="", labels={"kit.site": "pc", "kit.site-id": me.id},
                             ports={f"{c}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(p)}] for c, p in ports})

        class FakeEngine:
            edge = edge_with([(80, http_port)])

            def container(self, name):
                return self.edge

        monkeypatch.setattr(LocalTarget, "engine", FakeEngine(), raising=False)
        check = target.port_check()
        assert not check.ok and f"127.0.0.1:{https_port} is already in use" in check.message
        FakeEngine.edge = edge_with([(80, http_port), (443, https_port)])
        assert target.port_check().ok
    finally:
        for sock in listeners:
            sock.close()
