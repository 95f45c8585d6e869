#!/bin/sh
# certbot's deploy hook: a new certificate exists; point nginx at it and reload gracefully
# (old workers finish their requests; none is dropped).
set -eu
/opt/kit/tls-link.sh
nginx -t -q -c /etc/nginx/kit/nginx.conf
nginx -s reload -c /etc/nginx/kit/nginx.conf
echo "kit: edge reloaded with the new certificate"
