#!/bin/sh
# Point nginx's certificate paths (/run/kit-tls) at certbot's live certificate for the
# site's host, or at a throw-away self-signed one while none exists yet.
set -eu
live="/etc/letsencrypt/live/${KIT_TLS_HOST:?KIT_TLS_HOST must be set}"
if [ -s "$live/fullchain.pem" ] && [ -s "$live/privkey.pem" ]; then
    ln -sfn "$live/fullchain.pem" /run/kit-tls/fullchain.pem
    ln -sfn "$live/privkey.pem" /run/kit-tls/privkey.pem
elif [ ! -e /run/kit-tls/fullchain.pem ]; then
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$KIT_TLS_HOST (waiting for ACME)" \
        -keyout /run/kit-tls/bootstrap-key.pem -out /run/kit-tls/bootstrap-cert.pem 2>/dev/null
    ln -sfn /run/kit-tls/bootstrap-cert.pem /run/kit-tls/fullchain.pem
    ln -sfn /run/kit-tls/bootstrap-key.pem /run/kit-tls/privkey.pem
fi
