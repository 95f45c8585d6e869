<?php
// Requeues the adhoc tasks of a dead worker at once. A task whose worker was killed (OOM,
// SIGKILL, a lost machine) stays marked as started, and Moodle's own cleanup
// (\core\task\manager::cleanup_metadata) retries it only after an hour. Here, a task
// marked started whose lock (adhoc_<id>, the cron lock factory) can be taken is run by
// nobody: the lock is the proof. Such a task is released for the next worker at once; its
// attempts are not used up (a dead worker is not the task's failure), but a task that
// kills its worker every time backs off: 0 s the first time, then Moodle's doubling fail
// delay. Workers run this when they start and every minute (entrypoint.sh); several at
// once are safe, the lock decides.
define('CLI_SCRIPT', true);
require '/var/www/moodle/config.php';

$factory = \core\lock\lock_config::get_lock_factory('cron');
$started = $DB->get_records_select('task_adhoc', 'timestarted IS NOT NULL', null, 'id', 'id, classname');
$requeued = 0;
foreach ($started as $row) {
    $lock = $factory->get_lock('adhoc_' . $row->id, 0);
    if (!$lock) {
        continue;   // a live worker holds it: the task is running
    }
    try {
        // Read again under the lock: the task may have finished (deleted) meanwhile.
        $task = $DB->get_record('task_adhoc', ['id' => $row->id]);
        if (!$task || $task->timestarted === null) {
            continue;
        }
        $delay = (int) $task->faildelay;
        $update = (object) [
            'id' => $task->id,
            'timestarted' => null,
            'hostname' => null,
            'pid' => null,
            'faildelay' => $delay ? min(86400, $delay * 2) : 60,
            'nextruntime' => time() + $delay,
        ];
        $DB->update_record('task_adhoc', $update);
        $requeued++;
        mtrace("kit: requeued adhoc task {$task->id} ({$task->classname}) left started by "
            . ($task->hostname ?: 'an unknown host') . " pid " . ($task->pid ?: '?'));
    } finally {
        $lock->release();
    }
}
if ($requeued) {
    mtrace("kit: requeued {$requeued} adhoc task(s) of dead workers");
}
