#!/bin/sh
# The edge: nginx in the foreground. With tls mode acme (KIT_TLS_MODE), the certificate
# is certbot's (/etc/letsencrypt, a volume); until the first one exists nginx serves a
# throw-away one, and a loop renews it (HTTP-01 through this nginx's webroot), reloading
# nginx gracefully when a new certificate is deployed.
set -eu
if [ "${KIT_TLS_MODE:-off}" = acme ]; then
    mkdir -p /run/kit-tls /var/www/acme
    /opt/kit/tls-link.sh
    # First a minute after start (nginx is serving by then): an edge that was down for
    # weeks renews now, not 12 hours later. certbot renews only what is due.
    (
        sleep 60
        while :; do
            certbot renew --quiet --no-random-sleep-on-renew --deploy-hook /opt/kit/tls-deployed.sh || true
            sleep "${KIT_RENEW_EVERY_S:-43200}"
        done
    ) &
fi
# The metrics log mtail reads (monitoring): kept under 2 x 20 MB. mtail follows the rename.
if [ -d /var/log/kit ]; then
    (
        while :; do
            sleep 60
            log=/var/log/kit/edge-metrics.log
            if [ -f "$log" ] && [ "$(stat -c %s "$log")" -gt 20971520 ]; then
                mv -f "$log" "$log.1" && nginx -c /etc/nginx/kit/nginx.conf -s reopen || true
            fi
        done
    ) &
fi
exec nginx -c /etc/nginx/kit/nginx.conf -g 'daemon off;'
