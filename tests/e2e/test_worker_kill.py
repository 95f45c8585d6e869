"""A worker killed with SIGKILL mid-task: Moodle leaves the task marked started and would
retry it only after an hour; the kit's workers requeue it (its lock is free) and it runs
again within 2 minutes, and completes exactly once. Checked through the task's own side
effect: the kit's canary task counts its starts and completions in Moodle's config."""
from __future__ import annotations

import time
import uuid

import pytest

from tests.e2e.conftest import SITE, TIMINGS, moodle_php, psql, sh

pytestmark = pytest.mark.e2e

HOLD_S = 20


def counts(token: str) -> tuple[int, int]:
    rows = dict(line.split("|") for line in psql(
        "select name, value from mdl_config_plugins where plugin = 'local_kit' "
        f"and name in ('canary_{token}_started', 'canary_{token}_done')").splitlines() if line)
    return int(rows.get(f"canary_{token}_started", 0)), int(rows.get(f"canary_{token}_done", 0))


def wait_for(what: str, check, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if check():
            return time.monotonic() - started
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout_s:.0f}s")


def test_a_task_killed_mid_run_runs_again_within_two_minutes_and_completes_once(site):
    token = uuid.uuid4().hex[:12]
    moodle_php("$t = new \\local_kit\\task\\canary(); "
               f"$t->set_custom_data(['token' => '{token}', 'hold' => {HOLD_S}]); "
               "\\core\\task\\manager::queue_adhoc_task($t);")
    wait_for("the canary starts on a worker", lambda: counts(token)[0] == 1, 90)
    mine = f"classname like '%local_kit%canary' and customdata like '%{token}%'"
    worker = psql(f"select hostname from mdl_task_adhoc where {mine} and timestarted is not null")
    assert worker.startswith(f"kit-{SITE}-worker-"), worker
    sh("docker", "exec", worker, "pkill", "-KILL", "-f", "adhoc_task.php")
    # Moodle's own state after the kill: still marked started, by a process that is gone.
    assert psql(f"select count(*) from mdl_task_adhoc where {mine} and timestarted is not null") == "1"
    assert counts(token) == (1, 0)
    rerun = wait_for("the killed task starts again", lambda: counts(token)[0] == 2, 150)
    assert rerun < 120, f"the killed task started again only after {rerun:.0f}s"
    wait_for("the rerun completes", lambda: counts(token)[1] >= 1, HOLD_S + 60)
    TIMINGS["worker SIGKILL mid-task: the task ran again after"] = rerun
    time.sleep(5)
    assert counts(token) == (2, 1), counts(token)
    # This canary left the queue (others, e.g. another module's tasks due later, may stay).
    assert psql("select count(*) from mdl_task_adhoc where classname like '%local_kit%canary' "
                f"and customdata like '%{token}%'") == "0"
    logs = sh("docker", "logs", "--since", "5m", worker) + "".join(
        sh("docker", "logs", "--since", "5m", f"kit-{SITE}-worker-{n}") for n in (1, 2))
    assert "kit: requeued adhoc task" in logs
