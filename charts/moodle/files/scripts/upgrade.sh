#!/bin/sh
# pre-upgrade hook: runs with the NEW image before any pod rolls. Same Moodle version:
# nothing to do, the pods roll. New Moodle version: Moodle's own sequence, once, timed:
# cron off, maintenance on, upgrade.php, purge caches, maintenance off, cron on.
set -eu
. /opt/kit-chart/lib.sh
wait_for_database
if [ "$(moodle_installed)" != installed ]; then
    echo "kit: Moodle is not installed yet: the install Job installs it"
    exit 0
fi
set +e
php admin/cli/upgrade.php --is-pending
pending=$?
set -e
case "$pending" in
    0) echo "kit: same Moodle version: no database upgrade; the pods roll"; exit 0 ;;
    2) echo "kit: the new image carries a new Moodle version: upgrading the database once" ;;
    *) echo "kit: upgrade.php --is-pending exited $pending" >&2; exit "$pending" ;;
esac
started=$(date +%s)
php admin/cli/cron.php --disable-wait=600 || echo "kit: could not wait for running tasks; going on" >&2
php admin/cli/maintenance.php --enable
trap 'echo "kit: the upgrade failed: the site stays in maintenance mode; restore the database backup taken before it" >&2' EXIT
php admin/cli/upgrade.php --non-interactive
php admin/cli/purge_caches.php
php admin/cli/maintenance.php --disable
trap - EXIT
php admin/cli/cron.php --enable
echo "kit: maintenance lasted $(( $(date +%s) - started ))s"
