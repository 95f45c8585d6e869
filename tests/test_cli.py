"""The CLI as a user meets it: init, plan, render, and bad input refused before any change.

These run the real `kit` console script in a subprocess (exit codes and stderr as a shell sees them).
"""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_site

KIT = [sys.executable, "-m", "kit.cli"]


def kit(*args: str, cwd: Path, env: dict | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*KIT, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, input=stdin)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def docker_containers() -> set[str]:
    out = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True)
    return set(out.stdout.split())


def test_help_answers(tmp_path):
    result = kit("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("init", "plan", "render", "up", "down", "status", "doctor", "images"):
        assert command in result.stdout


def test_init_writes_site_and_private_secrets(tmp_path, fake_moodle):
    result = kit("init", "--users", "120", "--moodle-source", str(fake_moodle), "--port", "18099",
                 "--bind", "127.0.0.1", "--name", "c1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load((tmp_path / "site.yaml").read_text())
    assert data["users"] == 120 and data["http"] == {"bind": "127.0.0.1", "port": 18099}
    secrets = tmp_path / ".kit" / "c1" / "secrets.yaml"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    for value in yaml.safe_load(secrets.read_text()).values():
        assert value not in result.stdout + result.stderr
    again = kit("init", cwd=tmp_path)
    assert "already exists" in one_error_line(again)


def test_plan_prints_reasons_and_json(tmp_path):
    write_site(tmp_path, {"users": 500, "host": {"cpus": 4, "memory_gb": 16}})
    text = kit("plan", cwd=tmp_path)
    assert text.returncode == 0
    assert "postgres.shared_buffers" in text.stdout and "1GB" in text.stdout
    as_json = yaml.safe_load(kit("plan", "--json", cwd=tmp_path).stdout)
    assert as_json["postgres"]["shared_buffers"] == "1GB"
    assert as_json["host"] == {"cpus": 4, "memory_mb": 16384}


def test_render_writes_build_dir(tmp_path, fake_moodle):
    write_site(tmp_path, {"name": "r2", "moodle": {"source": str(fake_moodle)}})
    result = kit("render", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "build" / "r2" / "postgresql.conf").is_file()


@pytest.mark.parametrize("content, needle", [
    ("users: [1\n", "malformed YAML"),
    ("users: 10\nfavourite_colour: blue\n", "favourite_colour: unknown key"),
    ("users: -3\n", "users: Input should be greater than 0"),
])
def test_bad_site_yaml_is_refused_with_one_line(tmp_path, content, needle):
    (tmp_path / "site.yaml").write_text(content)
    for command in ("up", "plan", "render", "doctor"):
        assert needle in one_error_line(kit(command, cwd=tmp_path))
    assert not (tmp_path / "build").exists()


def test_moodle_source_missing_or_not_moodle(tmp_path):
    missing = tmp_path / "nowhere"
    write_site(tmp_path, {"name": "m1", "http": {"bind": "127.0.0.1", "port": 18097},
                          "moodle": {"source": str(missing)}})
    before = docker_containers()
    result = kit("up", cwd=tmp_path)
    assert result.returncode != 0
    assert f"moodle.source: {missing} does not exist" in result.stdout + result.stderr
    not_moodle = tmp_path / "empty"
    not_moodle.mkdir()
    write_site(tmp_path, {"name": "m1", "http": {"bind": "127.0.0.1", "port": 18097},
                          "moodle": {"source": str(not_moodle)}})
    result = kit("up", cwd=tmp_path)
    assert "is not a Moodle tree" in result.stdout + result.stderr and result.returncode != 0
    assert docker_containers() == before
    assert not (tmp_path / "build").exists()


def test_port_in_use_is_refused_before_any_change(tmp_path, fake_moodle):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        write_site(tmp_path, {"name": "p1", "http": {"bind": "127.0.0.1", "port": port},
                              "moodle": {"source": str(fake_moodle)}})
        before = docker_containers()
        result = kit("up", cwd=tmp_path)
    assert result.returncode != 0
    assert f"port 127.0.0.1:{port} is already in use" in result.stdout
    assert "preflight failed" in one_error_line(result)
    assert docker_containers() == before
    assert not (tmp_path / "build").exists()


def test_docker_unreachable_is_refused_before_any_change(tmp_path, fake_moodle):
    no_docker = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    assert kit("init", "--name", "d1", "--bind", "127.0.0.1", "--port", "18096", "--moodle-source", str(fake_moodle),
               cwd=tmp_path, env=no_docker).returncode == 0
    result = kit("up", cwd=tmp_path, env=no_docker, stdin="")
    line = one_error_line(result)
    assert "Docker is not reachable" in line and "nothing was changed" in line
    assert not (tmp_path / "build").exists()


def test_destroy_data_asks_first(tmp_path, fake_moodle):
    write_site(tmp_path, {"name": "x1", "moodle": {"source": str(fake_moodle)}})
    result = kit("down", "--destroy-data", cwd=tmp_path, stdin="n\n")
    assert result.returncode != 0
    assert "Delete ALL data" in result.stdout
    assert not (tmp_path / "build").exists()


@pytest.mark.parametrize("preflight_ok", [True, False])
def test_doctor_tells_running_site_failures_from_preflight_ones_with_a_fake_target(monkeypatch, preflight_ok):
    """The verdict's wording, on a fake target (no site runs in a unit test; the e2e tests
    run doctor on the real one): a preflight FAIL is one `kit up` refuses for too, a FAIL
    of the running site (a failing task) is not. Both exit 3, FAIL lines on stderr."""
    from click.testing import CliRunner

    from kit import cli as kit_cli
    from kit import doctor
    from kit.db import Queue

    queue = Queue(queued=3, due=3, oldest_age_s=5, failing=1,
                  failing_classes=(("\\auth_ldap\\task\\asynchronous_sync_task", 1),))

    class FakeTarget:
        def runtime_checks(self) -> list:
            return [doctor.Check("queue", False, f"3 adhoc tasks queued, {queue.failing_text()}")]

    monkeypatch.setattr(kit_cli, "_target", lambda *args, **kwargs: FakeTarget())
    monkeypatch.setattr(doctor, "preflight", lambda target: [doctor.Check("owner", True, "this folder manages it"),
                                                             doctor.Check("disk", preflight_ok, "disk")])
    result = CliRunner().invoke(kit_cli.cli, ["doctor"], standalone_mode=False)
    assert result.exception is not None and result.exception.exit_code == 3
    message = str(result.exception)
    assert "FAIL queue" in result.stderr and "asynchronous_sync_task x1" in result.stderr
    if preflight_ok:
        assert "on the running site" in message and "`kit up` does not refuse" in message
    else:
        assert "`kit up` refuses for 1 of them" in message and "running site" not in message
