#!/bin/sh
# First start: initdb and create the moodle role and database. The passwords are files the
# kit mounts read-only at /run/kit/secrets (never the environment, never a command line).
# The superuser `postgres` gets its own password: the kit's role management (monitoring
# role, rotation) logs in with it; Moodle never has it.
set -eu
secrets=/run/kit/secrets
chown postgres:postgres "$PGDATA"
chmod 0700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    for name in db_user db_password db_admin_password; do
        [ -s "$secrets/$name" ] || { echo "kit: $secrets/$name is missing" >&2; exit 1; }
    done
    umask 077
    pwfile=$(mktemp)
    adminfile=$(mktemp)
    cat "$secrets/db_password" > "$pwfile"
    cat "$secrets/db_admin_password" > "$adminfile"
    chown postgres "$pwfile" "$adminfile"
    su postgres -s /bin/sh -c "initdb -D '$PGDATA' -U postgres --auth-local=peer --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 --pwfile='$adminfile'" >/dev/null
    rm -f "$adminfile"
    su postgres -s /bin/sh -c "pg_ctl -D '$PGDATA' -o \"-c listen_addresses='' -c config_file=$PGDATA/postgresql.conf\" -w start" >/dev/null
    # The password is read from a file by psql's \set, so it never appears in argv.
    # `moodle` owns the database. After `kit secrets rotate`, Moodle logs in as moodle_a or
    # moodle_b (members of moodle that act as it), so a fresh init creates that login role.
    login=$(cat "$secrets/db_user")
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
# The site CA's certificate for this machine (hosts target), readable by postgres only.
if [ -s /etc/kit/tls/server.key ]; then
    install -d -o postgres -g postgres -m 0700 /run/kit/tls
    install -o postgres -g postgres -m 0644 /etc/kit/tls/server.crt /run/kit/tls/server.crt
    install -o postgres -g postgres -m 0600 /etc/kit/tls/server.key /run/kit/tls/server.key
fi
# A certificate of this server's own, made once (used when postgresql.conf turns ssl on).
if [ ! -s "$PGDATA/server.key" ]; then
    (umask 077 && openssl req -new -x509 -days 3650 -nodes -subj "/CN=$(hostname)" \
        -newkey rsa:2048 -keyout "$PGDATA/server.key" -out "$PGDATA/server.crt" 2>/dev/null)
    chown postgres:postgres "$PGDATA/server.key" "$PGDATA/server.crt"
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" -c config_file=/etc/kit/postgresql.conf
