# Shared by the chart's scripts (sourced). No secret is in the pod's environment: Moodle
# reads them as files of the Secret volume, and these scripts need none.
KIT_SECRETS_DIR=${KIT_SECRETS_DIR:-/run/kit/secrets}

# Run a check every 5 s until it passes; give up after LIMIT tries, naming WHAT.
wait_until() {
    limit=$1 what=$2
    shift 2
    tries=0
    until "$@"; do
        tries=$((tries + 1))
        if [ "$tries" -ge "$limit" ]; then
            echo "kit: $what did not answer for $((limit * 5 / 60)) minutes" >&2
            exit 1
        fi
        echo "kit: waiting for $what"
        sleep 5
    done
}

# Wait until PostgreSQL accepts connections (a new CloudNativePG cluster takes minutes).
wait_for_database() {
    wait_until 180 "the database at $KIT_DB_HOST" pg_isready -q -h "$KIT_DB_HOST" -p 5432 -d moodle \
        -U "$(cat "$KIT_SECRETS_DIR/db_user")"
}

# Redis holds sessions and the application cache: configure.php needs it.
wait_for_redis() {
    wait_until 60 "Redis at $KIT_REDIS_HOST" \
        php -r '$s = @fsockopen(getenv("KIT_REDIS_HOST"), 6379, $no, $msg, 3); exit($s ? 0 : 1);'
}

# Prints "installed" when Moodle's tables exist, "empty" when the database is empty: asked
# of Moodle itself, as the kit's Docker targets do.
moodle_installed() {
    php /opt/kit/install_state.php
}
