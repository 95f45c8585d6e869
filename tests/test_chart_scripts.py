"""The chart's Job and runner scripts (charts/moodle/files/scripts), run here with stand-ins
for php and pg_isready on PATH instead of a Moodle pod on a cluster: they check the order of
Moodle CLI calls the scripts make, not Moodle itself.
"""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from kit.k8s.values import chart_dir

SCRIPTS = chart_dir() / "files" / "scripts"

FAKE_PHP = """#!/bin/sh
case "$*" in
  *install_state.php*) echo "${FAKE_INSTALLED:-installed}"; exit 0 ;;
esac
echo "php $*" >> "$FAKE_LOG"
case "$*" in
  -r*) exit 0 ;;
  *"upgrade.php --is-pending"*) exit "${FAKE_PENDING:-0}" ;;
  *"upgrade.php --non-interactive"*) exit "${FAKE_UPGRADE_RC:-0}" ;;
esac
exit 0
"""
FAKE_PG_ISREADY = """#!/bin/sh
echo "pg_isready $*" >> "$FAKE_LOG"
exit 0
"""


@pytest.fixture
def pod(tmp_path: Path) -> Path:
    """A folder standing in for a Moodle pod: the scripts (their /opt/kit-chart path pointed
    here), fake php and pg_isready first on PATH, and the Secret's files."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "db_user").write_text("moodle_a")
    for name, text in (("php", FAKE_PHP), ("pg_isready", FAKE_PG_ISREADY)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    for script in SCRIPTS.glob("*.sh"):
        target = tmp_path / script.name
        target.write_text(script.read_text().replace("/opt/kit-chart/", f"{tmp_path}/"))
        target.chmod(target.stat().st_mode | stat.S_IXUSR)
    return tmp_path


def run_script(pod: Path, name: str, **env: str) -> tuple[int, list[str], str]:
    log = pod / "calls.log"
    log.write_text("")
    full_env = {**os.environ, "PATH": f"{pod / 'bin'}:{os.environ['PATH']}", "FAKE_LOG": str(log),
                "KIT_DB_HOST": "db.example", "KIT_REDIS_HOST": "redis.example",
                "KIT_SECRETS_DIR": str(pod / "secrets"), **env}
    proc = subprocess.run(["sh", str(pod / name)], env=full_env, capture_output=True, text=True, timeout=30)
    calls = [line.replace("php ", "", 1) for line in log.read_text().splitlines() if line.startswith("php ")
             and not line.startswith("php -r")]
    return proc.returncode, calls, proc.stdout + proc.stderr


def test_upgrade_hook_with_fake_moodle_cli_same_version_makes_no_maintenance(pod):
    code, calls, out = run_script(pod, "upgrade.sh", FAKE_PENDING="0")
    assert code == 0
    assert calls == ["admin/cli/upgrade.php --is-pending"]
    assert "same Moodle version" in out


def test_upgrade_hook_with_fake_moodle_cli_new_version_runs_moodles_sequence_once(pod):
    code, calls, out = run_script(pod, "upgrade.sh", FAKE_PENDING="2")
    assert code == 0
    assert calls == [
        "admin/cli/upgrade.php --is-pending",
        "admin/cli/cron.php --disable-wait=600",
        "admin/cli/maintenance.php --enable",
        "admin/cli/upgrade.php --non-interactive",
        "admin/cli/purge_caches.php",
        "admin/cli/maintenance.php --disable",
        "admin/cli/cron.php --enable",
    ]
    assert "maintenance lasted" in out


def test_upgrade_hook_with_fake_moodle_cli_failure_leaves_maintenance_on(pod):
    code, calls, out = run_script(pod, "upgrade.sh", FAKE_PENDING="2", FAKE_UPGRADE_RC="1")
    assert code != 0
    assert "admin/cli/maintenance.php --enable" in calls
    assert "admin/cli/maintenance.php --disable" not in calls
    assert "stays in maintenance mode" in out


def test_upgrade_hook_with_fake_moodle_cli_skips_an_empty_database(pod):
    code, calls, _ = run_script(pod, "upgrade.sh", FAKE_INSTALLED="empty", FAKE_PENDING="2")
    assert code == 0 and calls == []


def test_install_job_with_fake_moodle_cli_installs_only_an_empty_database(pod):
    code, calls, _ = run_script(pod, "install.sh", FAKE_INSTALLED="empty")
    assert code == 0
    assert calls == ["/opt/kit/install.php", "/opt/kit/configure.php", "/opt/kit/signin.php"]
    log = (pod / "calls.log").read_text()
    assert "pg_isready -q -h db.example -p 5432 -d moodle -U moodle_a" in log   # the user from the Secret's file
    code, calls, _ = run_script(pod, "install.sh", FAKE_INSTALLED="installed")
    assert code == 0
    assert calls == ["/opt/kit/configure.php", "/opt/kit/signin.php"]
    code, calls, out = run_script(pod, "install.sh", FAKE_INSTALLED="Database connection failed")
    assert code != 0 and calls == [] and "cannot tell" in out


def test_keep_running_finishes_the_running_task_on_sigterm(pod):
    task = pod / "task.sh"
    log = pod / "task.log"
    task.write_text(f"""#!/bin/sh
trap 'echo term >> {log}; sleep 0.5; echo finished >> {log}; exit 0' TERM
echo start >> {log}
while true; do sleep 0.1; done
""")
    task.chmod(0o755)
    proc = subprocess.Popen(["sh", str(pod / "keep-running.sh"), str(task)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "KIT_ROLE": "cron"})
    deadline = time.monotonic() + 5
    while not (log.exists() and "start" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert log.read_text().split() == ["start", "term", "finished"]
    assert "cron stopped gracefully" in out


def test_keep_running_starts_the_task_again_when_it_ends(pod):
    task = pod / "once.sh"
    log = pod / "once.log"
    task.write_text(f"#!/bin/sh\necho run >> {log}\n")
    task.chmod(0o755)
    proc = subprocess.Popen(["sh", str(pod / "keep-running.sh"), str(task)], stdout=subprocess.DEVNULL,
                            env={**os.environ, "KIT_LOOP_PAUSE": "0.1"})
    deadline = time.monotonic() + 5
    while (not log.exists() or log.read_text().count("run") < 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    assert log.read_text().count("run") >= 3
