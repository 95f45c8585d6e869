"""Operations on the real site: backup, destroy, restore; corrupted backups refused; scaling
under load without a dropped request."""
from __future__ import annotations

import json
import shutil
import time

import pytest

from tests.e2e.conftest import SITE, TIMINGS, Load, kit, moodle_php, psql, sh

pytestmark = pytest.mark.e2e

COUNTS = ("select count(*) from mdl_user", "select count(*) from mdl_course", "select count(*) from mdl_forum_posts")


def counts() -> list[str]:
    return [psql(sql) for sql in COUNTS]


def file_hash() -> str:
    return moodle_php("$fs = get_file_storage(); $ctx = context_system::instance(); "
                      "$f = $fs->get_file($ctx->id, 'core', 'kittest', 0, '/', 'proof.txt'); "
                      "echo $f ? $f->get_contenthash() : 'missing';").strip()


@pytest.fixture(scope="module")
def backup_dir(site_dir):
    assert kit("loadtest", "seed", "--size", "S", cwd=site_dir).returncode == 0
    moodle_php("$fs = get_file_storage(); $ctx = context_system::instance(); "
               "if (!$fs->file_exists($ctx->id, 'core', 'kittest', 0, '/', 'proof.txt')) { "
               "$fs->create_file_from_string(['contextid' => $ctx->id, 'component' => 'core', 'filearea' => 'kittest', "
               "'itemid' => 0, 'filepath' => '/', 'filename' => 'proof.txt'], 'uploaded before the backup ' . time()); }")
    started = time.monotonic()
    result = kit("backup", cwd=site_dir)
    TIMINGS["kit backup"] = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    folder = sorted((site_dir / "backups" / SITE).iterdir())[-1]
    return folder, counts(), file_hash()


def test_corrupted_backup_is_refused_before_any_change(site_dir, backup_dir, tmp_path):
    folder, before, _ = backup_dir
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    data = bytearray((broken / "db.dump").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "db.dump").write_bytes(bytes(data))
    result = kit("restore", str(broken), "--yes", cwd=site_dir)
    assert result.returncode != 0
    assert "db.dump: checksum does not match the manifest" in result.stderr
    assert counts() == before
    assert kit("status", cwd=site_dir).returncode == 0


def test_backup_destroy_restore_gives_back_the_same_data(site_dir, backup_dir):
    folder, before, proof = backup_dir
    assert proof != "missing"
    assert kit("down", "--destroy-data", "--yes", cwd=site_dir).returncode == 0
    assert kit("up", cwd=site_dir).returncode == 0  # a fresh, empty Moodle
    assert counts() != before
    started = time.monotonic()
    result = kit("restore", str(folder), "--yes", cwd=site_dir)
    TIMINGS["kit restore"] = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert counts() == before
    assert file_hash() == proof
    assert json.loads(kit("status", "--json", cwd=site_dir).stdout)["ready"] is True


def test_scale_out_and_in_under_load_drops_nothing(site_dir, backup_dir):
    with Load(site_dir, 120) as load:
        up = kit("scale", "web=3", cwd=site_dir)
        down = kit("scale", "web=2", cwd=site_dir)
    assert up.returncode == 0, up.stdout[-3000:]
    assert down.returncode == 0, down.stdout[-3000:]
    summary = load.summary()
    assert summary["total"]["failures"] == 0, summary["failures"]
    assert summary["total"]["requests"] > 100
    replicas = sh("docker", "ps", "--filter", f"label=kit.site={SITE}", "--filter", "label=kit.role=web",
                  "--format", "{{.Names}}").split()
    assert sorted(replicas) == [f"kit-{SITE}-web-1", f"kit-{SITE}-web-2"]
