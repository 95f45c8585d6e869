#!/bin/sh
# Keep a keep-alive Moodle script running (cron.php or adhoc_task.php): start it again when
# its keep-alive ends; on SIGTERM let the current task finish, then stop. The image's
# entrypoint does the same as root before switching to www-data; pods start as www-data.
set -u
child=0
stopping=0
trap 'stopping=1; [ "$child" -ne 0 ] && kill -TERM "$child" 2>/dev/null' TERM INT QUIT
while [ "$stopping" -eq 0 ]; do
    "$@" &
    child=$!
    wait "$child" || true
    # wait returns early when a trap fires; wait again for the task to end.
    while kill -0 "$child" 2>/dev/null; do wait "$child" || true; done
    child=0
    [ "$stopping" -eq 0 ] || break
    sleep "${KIT_LOOP_PAUSE:-5}" &
    child=$!
    wait "$child" || true
    child=0
done
echo "kit: ${KIT_ROLE:-task runner} stopped gracefully"
