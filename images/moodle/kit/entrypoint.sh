#!/bin/sh
# One image, several roles (KIT_ROLE or the first argument):
#   fpm     php-fpm serving Moodle (web replicas); cron never runs here
#   cron    the scheduled-task runner: admin/cli/cron.php kept alive, restarted in a loop
#   worker  an adhoc-task worker: admin/cli/adhoc_task.php --execute --keep-alive
#   install Moodle's CLI install (first rollout only), then the kit's cluster and sign-in settings
#   *       any other command, run as www-data (e.g. php admin/cli/checks.php)
set -eu
role="${1:-${KIT_ROLE:-fpm}}"
install -d -o www-data -g www-data -m 0750 /var/cache/moodle /run/php
as_www() { setpriv --reuid=www-data --regid=www-data --init-groups "$@"; }

# hosts target: Redis is on another machine and speaks TLS only. Moodle 4.5's session
# handler cannot open TLS to a single Redis, so Moodle talks to 127.0.0.1:6379 and this
# tunnel carries it there, checking the site CA's certificate for that address.
if [ -n "${KIT_REDIS_TUNNEL:-}" ]; then
    setpriv --reuid=nobody --regid=nogroup --clear-groups \
        socat TCP-LISTEN:6379,bind=127.0.0.1,reuseaddr,fork \
        "OPENSSL:${KIT_REDIS_TUNNEL},cafile=/run/kit/tls/ca.crt,verify=1,commonname=${KIT_REDIS_TUNNEL%:*}" &
fi

# Loop a keep-alive Moodle script; on SIGTERM let the current task finish, then exit.
keep_running() {
    child=0
    trap 'stopping=1; [ "$child" -ne 0 ] && kill -TERM "$child" 2>/dev/null; ' TERM INT QUIT
    stopping=0
    while [ "$stopping" -eq 0 ]; do
        as_www "$@" &
        child=$!
        wait "$child" || true
        # wait returns early when a trap fires; wait again for the task to end.
        while kill -0 "$child" 2>/dev/null; do wait "$child" || true; done
        [ "$stopping" -eq 0 ] && sleep "${KIT_LOOP_PAUSE:-5}" &
        [ "$stopping" -eq 0 ] && { child=$!; wait "$child" || true; }
        child=0
    done
    echo "kit: $role stopped gracefully"
}

case "$role" in
    fpm)
        exec php-fpm8.2 --nodaemonize --force-stderr ;;
    cron)
        export KIT_ROLE=cron
        keep_running php admin/cli/cron.php --keep-alive="${KIT_CRON_KEEPALIVE:-900}" ;;
    worker)
        export KIT_ROLE=worker
        # A dead worker's tasks back in the queue (requeue.php): now, then every minute.
        ( while :; do as_www php /opt/kit/requeue.php || true; sleep "${KIT_REQUEUE_EVERY_S:-60}"; done ) &
        keep_running php admin/cli/adhoc_task.php --execute --keep-alive="${KIT_WORKER_KEEPALIVE:-900}" ;;
    install)
        as_www php /opt/kit/install.php
        as_www php /opt/kit/configure.php
        exec setpriv --reuid=www-data --regid=www-data --init-groups php /opt/kit/signin.php ;;
    configure)
        # The cluster settings, then how people sign in (site.yaml's auth section).
        as_www php /opt/kit/configure.php
        exec setpriv --reuid=www-data --regid=www-data --init-groups php /opt/kit/signin.php ;;
    *)
        exec setpriv --reuid=www-data --regid=www-data --init-groups "$@" ;;
esac
