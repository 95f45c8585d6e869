"""Operations on the real site: backup, destroy, restore; corrupted backups refused; scaling
under load without a dropped request."""
from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import time

import pytest
import yaml

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
    """Out from the plan's two replicas to three, then back in to two, under load."""
    planned = [f"kit-{SITE}-web-1", f"kit-{SITE}-web-2"]
    assert web_replicas() == planned
    try:
        with Load(site_dir, 300) as load:
            up = kit("scale", "web=3", cwd=site_dir)
            up_replicas = web_replicas()
            down = kit("scale", "web=2", cwd=site_dir)
        assert up.returncode == 0, up.stdout[-3000:]
        assert down.returncode == 0, down.stdout[-3000:]
        summary = load.summary()
        assert summary["total"]["failures"] == 0, summary["failures"]
        assert summary["total"]["requests"] > 100
        assert up_replicas == [*planned, f"kit-{SITE}-web-3"]
        assert web_replicas() == planned
        assert yaml.safe_load((site_dir / "site.yaml").read_text())["scale"]["web_replicas"] == 2
    finally:  # the later tests roll two replicas, whatever happened here
        if web_replicas() != planned:
            assert kit("scale", "web=2", cwd=site_dir).returncode == 0


def web_replicas() -> list[str]:
    return sorted(sh("docker", "ps", "--filter", f"label=kit.site={SITE}", "--filter", "label=kit.role=web",
                     "--format", "{{.Names}}").split())


def pg_login_works(user: str, password: str) -> bool:
    """Log in over TCP like Moodle does (password on stdin, never on a command line)."""
    result = subprocess.run(["docker", "exec", "-i", f"kit-{SITE}-db", "sh", "-c",
                             f'PGPASSWORD="$(cat)" psql -h 127.0.0.1 -U {user} -d moodle -tAc "select 1"'],
                            input=password, capture_output=True, text=True, timeout=30)
    return result.returncode == 0 and result.stdout.strip() == "1"


def redis_auth_works(password: str) -> bool:
    result = subprocess.run(["docker", "exec", "-i", f"kit-{SITE}-redis", "redis-cli"],
                            input=f"AUTH {password}\nPING\n", capture_output=True, text=True, timeout=30)
    return "PONG" in result.stdout


def test_secrets_rotate_under_load_drops_nothing_and_retires_the_old_credentials(site_dir, backup_dir):
    secrets_file = site_dir / ".kit" / SITE / "secrets.yaml"
    before = yaml.safe_load(secrets_file.read_text())
    old_user = before.get("db_user", "moodle")
    assert pg_login_works(old_user, before["db_password"]) and redis_auth_works(before["redis_password"])
    started = time.monotonic()
    with Load(site_dir, 300) as load:
        result = kit("secrets", "rotate", "--yes", cwd=site_dir)
    TIMINGS["kit secrets rotate (rolling, under load)"] = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    summary = load.summary()
    assert summary["total"]["failures"] == 0, summary["failures"]
    assert summary["total"]["requests"] > 100
    after = yaml.safe_load(secrets_file.read_text())
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert after["db_user"] != old_user and not any(key.endswith("_previous") for key in after)
    assert after["db_password"] != before["db_password"] and after["redis_password"] != before["redis_password"]
    for secret in (after["db_password"], after["redis_password"], before["db_password"]):
        assert secret not in result.stdout + result.stderr
    assert not pg_login_works(old_user, before["db_password"])
    assert pg_login_works(after["db_user"], after["db_password"])
    assert not redis_auth_works(before["redis_password"])
    assert redis_auth_works(after["redis_password"])
    # Moodle's new login acts as the owner role, so what it creates stays owned by `moodle`.
    assert moodle_php("echo $DB->get_field_sql('select current_user');").strip() == "moodle"
    assert json.loads(kit("status", "--json", cwd=site_dir).stdout)["ready"] is True


PROBE_TASK = "\\core\\task\\refresh_mod_calendar_events_task"


def queue_probe_tasks(count: int) -> None:
    """A real core adhoc task (refresh the calendar events of the seeded course's activities)."""
    moodle_php("$c = $DB->get_field_sql(\"select max(id) from {course} where shortname like 'testcourse_%'\"); "
               f"for ($i = 0; $i < {count}; $i++) {{ $t = new {PROBE_TASK}(); "
               "$t->set_custom_data(['courseid' => $c, 'kitprobe' => $i]); \\core\\task\\manager::queue_adhoc_task($t); }")


def seconds_to_drain(limit_s: float = 900) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if psql("select count(*) from mdl_task_adhoc where classname like '%refresh_mod_calendar_events_task'") == "0":
            return time.monotonic() - started
        time.sleep(1)
    raise AssertionError(f"the queue did not drain in {limit_s}s")


def test_queue_backlog_is_reported_and_more_workers_drain_it_faster(site_dir, backup_dir):
    try:
        assert kit("scale", "workers=1", cwd=site_dir).returncode == 0
        queue_probe_tasks(500)
        doctor = kit("doctor", cwd=site_dir)
        report = re.search(r"queue +(\d+) adhoc tasks queued \((\d+) due\), oldest overdue (\d+)s",
                           doctor.stdout + doctor.stderr)    # a FAIL line goes to stderr
        assert report, doctor.stdout + doctor.stderr
        assert int(report.group(1)) >= 100 and int(report.group(2)) >= 100
        one = seconds_to_drain()
        assert kit("scale", "workers=4", cwd=site_dir).returncode == 0
        assert len(sh("docker", "ps", "--filter", f"label=kit.site={SITE}", "--filter", "label=kit.role=worker",
                      "--format", "{{.Names}}").split()) == 4
        queue_probe_tasks(500)
        four = seconds_to_drain()
        TIMINGS["500 adhoc tasks drained, 1 worker"] = one
        TIMINGS["500 adhoc tasks drained, 4 workers"] = four
        assert four < one
        assert psql("select count(*) from mdl_task_adhoc where faildelay > 0") == "0"
    finally:  # the later tests (worker kill) expect the plan's two workers, whatever happened here
        restored = kit("scale", "workers=2", cwd=site_dir)
    assert restored.returncode == 0
