#!/bin/sh
# Redis reads its password set from /etc/kit/redis-users.acl: a `user default` line with
# SHA-256 hashes only, written owner-only by the kit. Two hashes are valid while
# `kit secrets rotate` rolls the clients over; a restart keeps whatever the file says.
set -eu
acl=/etc/kit/redis-users.acl
[ -s "$acl" ] || { echo "kit: $acl is missing: Redis would run without a password" >&2; exit 1; }
grep -q '^user default on #[0-9a-f]\{64\}' "$acl" || { echo "kit: $acl has no password hash" >&2; exit 1; }
umask 077
{ echo "include /etc/kit/redis.conf"; cat "$acl"; } > /run/kit/redis.conf
# The site CA's certificate for this machine (hosts target: TLS only), readable by redis only.
if [ -s /etc/kit/tls/server.key ]; then
    install -d -m 0700 /run/kit/tls
    cp /etc/kit/tls/server.crt /etc/kit/tls/server.key /etc/kit/tls/ca.crt /run/kit/tls/
fi
chown -R redis:redis /run/kit /data
exec setpriv --reuid=redis --regid=redis --init-groups redis-server /run/kit/redis.conf
