# Shared by the chart's scripts (sourced). The database password reaches psql through
# PGPASSWORD, set from the Secret in the pod spec: never on a command line.

# Wait until PostgreSQL accepts connections (a new CloudNativePG cluster takes minutes).
wait_for_database() {
    tries=0
    until pg_isready -q -h "$KIT_DB_HOST" -p 5432 -d moodle -U "$KIT_DB_USER"; do
        tries=$((tries + 1))
        if [ "$tries" -ge 180 ]; then
            echo "kit: the database at $KIT_DB_HOST did not accept connections for 15 minutes" >&2
            exit 1
        fi
        echo "kit: waiting for the database at $KIT_DB_HOST"
        sleep 5
    done
}

# Redis holds sessions and the application cache: configure.php needs it.
wait_for_redis() {
    tries=0
    until php -r '$s = @fsockopen(getenv("KIT_REDIS_HOST"), 6379, $no, $msg, 3); exit($s ? 0 : 1);'; do
        tries=$((tries + 1))
        if [ "$tries" -ge 60 ]; then
            echo "kit: Redis at $KIT_REDIS_HOST did not answer for 5 minutes" >&2
            exit 1
        fi
        echo "kit: waiting for Redis at $KIT_REDIS_HOST"
        sleep 5
    done
}

# Prints t when Moodle's tables exist, f when the database is empty.
moodle_installed() {
    psql -h "$KIT_DB_HOST" -U "$KIT_DB_USER" -d moodle -tAc "select to_regclass('public.mdl_config') is not null"
}
