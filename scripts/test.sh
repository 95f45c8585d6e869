#!/usr/bin/env bash
# One command: set up this host and run the kit's checks: ruff, mypy, then pytest.
# End-to-end tests need MOODLE_SRC (a Moodle 4.5 tree); without it they skip, saying so.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$KIT_ROOT"
# The tests' own servers: a PostgreSQL 15 (the database module and the external-database
# site are tested against a real one), pebble (an ACME server) with dnsmasq (its resolver)
# for the end-to-end site's HTTPS, and openssl's client for the TLS checks.
test_pkgs=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || test_pkgs+=(postgresql-15)
command -v pebble >/dev/null 2>&1 || test_pkgs+=(pebble)
command -v dnsmasq >/dev/null 2>&1 || test_pkgs+=(dnsmasq-base)
command -v openssl >/dev/null 2>&1 || test_pkgs+=(openssl)
if [ "${#test_pkgs[@]}" -gt 0 ]; then
    echo "==> apt-get install ${test_pkgs[*]} (for the tests)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${test_pkgs[@]}" >/dev/null
fi
echo "==> ruff check"
ruff check .
echo "==> mypy"
mypy
exec python -m pytest -ra "$@"
