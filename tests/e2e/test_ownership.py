"""Two site folders, one Docker engine: a folder that does not own the running site is
refused before it changes anything, and `kit doctor` is not fooled into reporting another
folder's site as its own. Runs against the shared e2e site (tests/e2e/conftest.py)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import SITE, kit, sh

pytestmark = pytest.mark.e2e


def containers() -> dict[str, tuple[str, str]]:
    """name -> (id, started at) of the shared site's containers: a recreated one differs."""
    out = sh("docker", "ps", "-a", "--filter", f"label=kit.site={SITE}", "--format", "{{.Names}} {{.ID}}")
    rows = {}
    for line in out.splitlines():
        name, cid = line.split()
        started = sh("docker", "inspect", "--format", "{{.State.StartedAt}}", cid).strip()
        rows[name] = (cid, started)
    return rows


def one_line(result: subprocess.CompletedProcess, code: int = 3) -> str:
    assert result.returncode == code, (result.returncode, result.stdout[-3000:], result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def intruder(site_dir, tmp_path) -> Path:
    """A second folder that says it is site `e2e` on the same port: made by `kit init` under
    another name (its own secrets and identity), then edited to the running site's name."""
    running = yaml.safe_load((site_dir / "site.yaml").read_text())
    folder = tmp_path / "second-admin"
    folder.mkdir()
    result = kit("init", "--name", "intruder", "--moodle-source", running["moodle"]["source"], "--bind",
                 "127.0.0.1", "--port", "18999", cwd=folder)
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load((folder / "site.yaml").read_text())
    data.update(name=SITE, http=running["http"], url=running["url"], tls=running.get("tls", {}))
    bundle = data["tls"].get("acme_ca_bundle")
    if bundle and not Path(bundle).is_absolute():   # the private ACME directory's CA file, in the folder
        shutil.copy(site_dir / bundle, folder / bundle)
    (folder / "site.yaml").write_text(yaml.safe_dump(data))
    shutil.move(folder / ".kit" / "intruder", folder / ".kit" / SITE)
    return folder


def test_init_refuses_a_name_already_in_use_on_this_host(site_dir, tmp_path):
    result = kit("init", "--name", SITE, "--bind", "127.0.0.1", "--port", "18998", cwd=tmp_path)
    line = one_line(result)
    assert f"site name '{SITE}' is already in use on this host (managed from" in line
    assert str(site_dir) in line and "choose another with --name" in line
    assert not (tmp_path / "site.yaml").exists() and not (tmp_path / ".kit").exists()


def test_init_refuses_a_port_another_site_publishes(site_dir, tmp_path):
    port = str(yaml.safe_load((site_dir / "site.yaml").read_text())["http"]["port"])
    line = one_line(kit("init", "--name", "e2e-other", "--bind", "127.0.0.1", "--port", port, cwd=tmp_path))
    assert f"127.0.0.1:{port} is already in use" in line and "--port" in line


def test_doctor_in_another_folder_is_not_fooled(site_dir, intruder):
    result = kit("doctor", cwd=intruder)
    assert result.returncode == 3
    assert "FAIL owner" in result.stderr and "belongs to another folder" in result.stderr
    assert str(site_dir) in result.stderr
    assert "served by this site's own containers" not in result.stdout + result.stderr
    # The running site's figures are not reported as this folder's.
    assert "connections in use" not in result.stdout + result.stderr
    assert "adhoc tasks queued" not in result.stdout + result.stderr
    mine = kit("doctor", cwd=site_dir)
    assert mine.returncode == 0, mine.stdout + mine.stderr
    assert "served by this site's own containers" in mine.stdout and "connections in use" in mine.stdout


def test_commands_from_the_wrong_folder_change_nothing(site_dir, intruder):
    before = containers()
    acl = Path(f"/etc/kit/{SITE}/redis-users.acl")
    acl_before = acl.read_text()
    owner_before = Path(f"/etc/kit/{SITE}/owner.json").read_text()
    for args in (("down", "--yes"), ("down", "--destroy-data", "--yes"), ("up",), ("scale", "workers=3"),
                 ("maintenance", "on"), ("secrets", "rotate", "--yes"), ("restore", str(intruder), "--yes"),
                 ("status",)):
        line = one_line(kit(*args, cwd=intruder))
        assert "belongs to another folder" in line and str(site_dir) in line, (args, line)
    assert containers() == before
    assert acl.read_text() == acl_before
    assert Path(f"/etc/kit/{SITE}/owner.json").read_text() == owner_before
    status = kit("status", "--json", cwd=site_dir)
    assert status.returncode == 0 and json.loads(status.stdout)["ready"] is True


def test_adopt_moves_the_site_to_a_new_folder_without_restarting_anything(site_dir, tmp_path):
    """The folder copied to a new place (a new admin machine): refused until `kit adopt`, which
    takes over without restarting a container; then the old folder is the one refused."""
    moved = tmp_path / "moved"
    shutil.copytree(site_dir, moved, ignore=shutil.ignore_patterns("reports", "backups"))
    before = containers()
    line = one_line(kit("status", cwd=moved))
    assert "is managed from" in line and str(site_dir) in line and "kit adopt" in line
    result = kit("adopt", cwd=moved)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert containers() == before
    assert kit("status", cwd=moved).returncode == 0
    assert "is managed from" in one_line(kit("status", cwd=site_dir))
    back = kit("adopt", cwd=site_dir)          # the shared site goes back to its own folder
    assert back.returncode == 0, back.stderr
    assert kit("status", cwd=site_dir).returncode == 0 and containers() == before
