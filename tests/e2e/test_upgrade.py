"""Rolling updates and automatic rollback on the real site, each under a 20-user locust load.

Runs after test_rollout and test_loadtest (file order): it needs the seeded site.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import KIT, SITE, SRC, TIMINGS, Load, kit, psql, sh

pytestmark = pytest.mark.e2e


def replica_images() -> set[str]:
    out = sh("docker", "ps", "--filter", f"label=kit.site={SITE}", "--filter", "label=kit.role=web",
             "--format", "{{.Image}}")
    return set(out.split())


def releases(site_dir: Path) -> list[dict]:
    return json.loads(kit("releases", "--json", cwd=site_dir).stdout)


@pytest.fixture(scope="module")
def seeded(site_dir):
    assert kit("loadtest", "seed", "--size", "S", cwd=site_dir).returncode == 0
    if psql("select count(*) from mdl_course where shortname = 'kept-upgrade'") == "0":
        from tests.e2e.conftest import moodle_php

        moodle_php("require_once($CFG->dirroot . '/course/lib.php'); "
                   "create_course((object)['fullname' => 'Kept', 'shortname' => 'kept-upgrade', 'category' => 1]);")
    return site_dir


def test_upgrade_to_a_new_image_tag_drops_no_request(seeded):
    site_dir = seeded
    before = replica_images()
    started = time.monotonic()
    with Load(site_dir, 300) as load:
        result = kit("upgrade", "--image-tag", "e2e-2", cwd=site_dir)
        upgrade_s = time.monotonic() - started - Load.LEAD_S
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = load.summary()
    assert summary["total"]["failures"] == 0, summary["failures"]
    assert summary["total"]["requests"] > 200
    assert replica_images() == {"kit/moodle:e2e-2"} != before
    assert psql("select count(*) from mdl_course where shortname = 'kept-upgrade'") == "1"
    replicas = len(sh("docker", "ps", "--filter", f"label=kit.site={SITE}", "--filter", "label=kit.role=web",
                      "--format", "{{.Names}}").split())
    TIMINGS["rolling upgrade (whole run incl. image build)"] = upgrade_s
    history = releases(site_dir)
    assert history[-1]["outcome"] == "ok" and history[-1]["images"]["moodle"] == "kit/moodle:e2e-2"
    TIMINGS["rolling upgrade: playbook time per replica"] = history[-1]["duration_s"] / replicas


def test_broken_release_rolls_back_by_itself(seeded):
    site_dir = seeded
    good = replica_images()
    base = sh("docker", "inspect", "--format", "{{.Config.Image}}", f"kit-{SITE}-web-1").strip()
    web = base.replace("/moodle:", "/moodle-web:")
    broken_dir = site_dir / "broken-image"
    broken_dir.mkdir(exist_ok=True)
    (broken_dir / "Dockerfile").write_text(
        f"FROM {base}\n# php-fpm refuses to start: an invalid pool setting\n"
        "RUN echo 'pm.max_children = not-a-number' >> /etc/php/8.2/fpm/php-fpm.conf\n")
    sh("docker", "build", "-q", "-t", "kit/moodle:e2e-broken", str(broken_dir), timeout=600)
    sh("docker", "tag", web, "kit/moodle-web:e2e-broken")
    with Load(site_dir, 300) as load:
        result = kit("upgrade", "--image-tag", "e2e-broken", cwd=site_dir)
    assert result.returncode != 0
    assert "did not become healthy" in result.stderr and "rolled back to release" in result.stderr
    summary = load.summary()
    assert summary["total"]["failures"] == 0, summary["failures"]
    assert replica_images() == good
    assert releases(site_dir)[-1]["outcome"] == "rolled back"
    assert kit("status", cwd=site_dir).returncode == 0


def test_killed_rollout_converges_when_run_again(seeded):
    site_dir = seeded
    with Load(site_dir, 300) as load:
        proc = subprocess.Popen([*KIT, "upgrade", "--image-tag", "e2e-3"], cwd=site_dir, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 240
        seen = ""
        while time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            seen += line
            if "Wait for a Moodle page through the replica" in line:
                break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert "Wait for a Moodle page" in seen, seen[-3000:]
        result = kit("upgrade", "--image-tag", "e2e-3", cwd=site_dir)
    assert result.returncode == 0, result.stdout[-4000:]
    summary = load.summary()
    assert summary["total"]["failures"] == 0, summary["failures"]
    assert replica_images() == {"kit/moodle:e2e-3"}
    outcomes = [r["outcome"] for r in releases(site_dir)]
    assert "interrupted" in outcomes and outcomes[-1] == "ok"


def test_rollback_goes_to_the_previous_release(seeded):
    site_dir = seeded
    with Load(site_dir, 300) as load:
        result = kit("rollback", "--yes", cwd=site_dir)
    assert result.returncode == 0, result.stdout[-3000:]
    assert load.summary()["total"]["failures"] == 0
    assert replica_images() == {"kit/moodle:e2e-2"}


def test_moodle_version_upgrade_in_maintenance(seeded, tmp_path_factory):
    """A second Moodle version: the same tree with version.php bumped (hard-linked copy)."""
    site_dir = seeded
    newer = tmp_path_factory.mktemp("moodle-next") / "moodle"
    subprocess.run(["cp", "-al", str(SRC), str(newer)], check=True)
    text = (SRC / "version.php").read_text()
    current = float(psql("select value from mdl_config where name = 'version'"))
    (newer / "version.php").unlink()
    (newer / "version.php").write_text(text.replace(f"{current:.2f}", f"{current + 0.01:.2f}")
                                       .replace("$release  = '4.5.6", "$release  = '4.5.6+kit"))
    site_yaml = site_dir / "site.yaml"
    original = site_yaml.read_text()
    site_yaml.write_text(original.replace(str(SRC), str(newer)))
    try:
        # Earlier tests may have left a fresh backup; hide it to see the refusal.
        backups = site_dir / "backups"
        hidden = site_dir / "backups.hidden"
        if backups.exists():
            backups.rename(hidden)
        try:
            refused = kit("upgrade", cwd=site_dir)
        finally:
            if hidden.exists():
                hidden.rename(backups)
        assert refused.returncode != 0 and "needs a backup" in refused.stderr
        result = kit("upgrade", "--backup-now", cwd=site_dir)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        assert "users saw the maintenance page for" in result.stdout
        assert float(psql("select value from mdl_config where name = 'version'")) == pytest.approx(current + 0.01)
        assert psql("select count(*) from mdl_course where shortname = 'kept-upgrade'") == "1"
        history = releases(site_dir)
        TIMINGS["version upgrade: maintenance time"] = history[-1]["maintenance_s"]
        assert kit("status", cwd=site_dir).returncode == 0
        back = kit("rollback", "--yes", cwd=site_dir)
        assert back.returncode != 0 and "kit restore" in back.stderr
    finally:
        site_yaml.write_text(original)
