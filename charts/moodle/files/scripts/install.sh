#!/bin/sh
# The install Job, created by every release and idempotent: Moodle's CLI install when the
# database is empty (first rollout only), then the kit's cluster and sign-in settings kept in
# Moodle's own store (the application cache where KIT_APP_CACHE says), exactly as `kit up` does.
set -eu
. /opt/kit-chart/lib.sh
wait_for_database
state=$(moodle_installed)
case "$state" in
    empty)
        echo "kit: installing Moodle (install_database.php); web pods become ready when it ends"
        php /opt/kit/install.php ;;
    installed)
        echo "kit: Moodle is installed" ;;
    *)
        echo "kit: cannot tell whether Moodle is installed (Moodle said: $state)" >&2
        exit 1 ;;
esac
wait_for_redis
php /opt/kit/configure.php
# How people sign in (site.yaml's auth section): the same script and settings as `kit up`.
php /opt/kit/signin.php
