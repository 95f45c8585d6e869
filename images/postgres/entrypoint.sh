#!/bin/sh
# First start: initdb and create the moodle role and database (passwords from the
# environment, written to private temp files, never to the command line). The superuser
# `postgres` gets its own password: the kit's role management (monitoring role, rotation)
# logs in with it; Moodle never has it.
set -eu
chown postgres:postgres "$PGDATA"
chmod 0700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${KIT_DB_PASSWORD:?KIT_DB_PASSWORD must be set}"
    : "${KIT_DB_ADMIN_PASSWORD:?KIT_DB_ADMIN_PASSWORD must be set}"
    umask 077
    pwfile=$(mktemp)
    adminfile=$(mktemp)
    printf '%s\n' "$KIT_DB_PASSWORD" > "$pwfile"
    printf '%s\n' "$KIT_DB_ADMIN_PASSWORD" > "$adminfile"
    chown postgres "$pwfile" "$adminfile"
    su postgres -s /bin/sh -c "initdb -D '$PGDATA' -U postgres --auth-local=peer --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 --pwfile='$adminfile'" >/dev/null
    rm -f "$adminfile"
    su postgres -s /bin/sh -c "pg_ctl -D '$PGDATA' -o \"-c listen_addresses='' -c config_file=$PGDATA/postgresql.conf\" -w start" >/dev/null
    # The password is read from a file by psql's \set, so it never appears in argv.
    # `moodle` owns the database. After `kit secrets rotate`, Moodle logs in as moodle_a or
    # moodle_b (members of moodle that act as it), so a fresh init creates that login role.
    login="${KIT_DB_USER:-moodle}"
    case "$login" in moodle|moodle_a|moodle_b) ;; *) echo "kit: bad KIT_DB_USER" >&2; exit 1 ;; esac
    if [ "$login" = moodle ]; then
        su postgres -s /bin/sh -c "psql -v ON_ERROR_STOP=1 -q" <<SQL
\set pw \`cat $pwfile\`
CREATE ROLE moodle LOGIN PASSWORD :'pw';
CREATE DATABASE moodle OWNER moodle ENCODING 'UTF8' TEMPLATE template0;
SQL
    else
        su postgres -s /bin/sh -c "psql -v ON_ERROR_STOP=1 -q" <<SQL
\set pw \`cat $pwfile\`
CREATE ROLE moodle LOGIN;
CREATE ROLE $login LOGIN PASSWORD :'pw' IN ROLE moodle;
ALTER ROLE $login SET role = 'moodle';
CREATE DATABASE moodle OWNER moodle ENCODING 'UTF8' TEMPLATE template0;
SQL
    fi
    rm -f "$pwfile"
    su postgres -s /bin/sh -c "pg_ctl -D '$PGDATA' -m fast -w stop" >/dev/null
    echo "kit: database initialised"
fi
# A certificate of this server's own, made once (used when postgresql.conf turns ssl on).
if [ ! -s "$PGDATA/server.key" ]; then
    (umask 077 && openssl req -new -x509 -days 3650 -nodes -subj "/CN=$(hostname)" \
        -newkey rsa:2048 -keyout "$PGDATA/server.key" -out "$PGDATA/server.crt" 2>/dev/null)
    chown postgres:postgres "$PGDATA/server.key" "$PGDATA/server.crt"
fi
unset KIT_DB_PASSWORD KIT_DB_USER KIT_DB_ADMIN_PASSWORD
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" -c config_file=/etc/kit/postgresql.conf
