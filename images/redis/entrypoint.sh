#!/bin/sh
# The password goes into a private runtime config (printf is a shell builtin: no argv).
set -eu
: "${KIT_REDIS_PASSWORD:?KIT_REDIS_PASSWORD must be set}"
umask 077
{ echo "include /etc/kit/redis.conf"; printf 'requirepass %s\n' "$KIT_REDIS_PASSWORD"; } > /run/kit/redis.conf
chown -R redis:redis /run/kit /data
unset KIT_REDIS_PASSWORD
exec setpriv --reuid=redis --regid=redis --init-groups redis-server /run/kit/redis.conf
