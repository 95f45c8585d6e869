#!/usr/bin/env bash
# One command: set up this host and run the kit's checks: ruff, mypy, then pytest.
# End-to-end tests need MOODLE_SRC (a Moodle 4.5 tree); without it they skip, saying so.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$KIT_ROOT"
# The tests' own servers: a PostgreSQL 15 (the database module and the external-database
# site are tested against a real one), pebble (an ACME server) with dnsmasq (its resolver)
# for the end-to-end site's HTTPS, openssl's client for the TLS checks, and slapd (a real
# directory) for the sign-in checks.
test_pkgs=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || test_pkgs+=(postgresql-15)
command -v pebble >/dev/null 2>&1 || test_pkgs+=(pebble)
command -v dnsmasq >/dev/null 2>&1 || test_pkgs+=(dnsmasq-base)
command -v openssl >/dev/null 2>&1 || test_pkgs+=(openssl)
# The sign-in test's directory: Debian's OpenLDAP server and its client tools.
command -v slapd >/dev/null 2>&1 || [ -x /usr/sbin/slapd ] || test_pkgs+=(slapd)
command -v ldapadd >/dev/null 2>&1 || test_pkgs+=(ldap-utils)
# The alert rules' checks (promtool, in Debian's prometheus package) and the incident page's
# (a headless Chromium).
command -v promtool >/dev/null 2>&1 || test_pkgs+=(prometheus)
command -v chromium >/dev/null 2>&1 || test_pkgs+=(chromium)
if [ "${#test_pkgs[@]}" -gt 0 ]; then
    echo "==> apt-get install ${test_pkgs[*]} (for the tests)"
    apt-get update -qq
    # Packages must not start their own daemons here (a system Prometheus on :9090, slapd):
    # the tests run their own.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${test_pkgs[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
    # The package starts a system slapd; the tests run their own, on their own ports.
    if [[ " ${test_pkgs[*]} " == *" slapd "* ]]; then service slapd stop >/dev/null 2>&1 || true; fi
fi
echo "==> ruff check"
ruff check .
echo "==> mypy"
mypy
if [ "$#" -gt 0 ]; then            # a selection: as asked, in one run
    exec python -m pytest -ra --durations=30 "$@"
fi
# The unit tests on every core (pytest-xdist; one file per worker, so a file's fixtures stay
# in one process): 158 s instead of 290 s on 2 cores. Then the end-to-end tests one at a time:
# they share one real site, and their load and rollout figures need this host's CPUs.
unit=0
python -m pytest -ra --durations=15 -n auto --dist loadfile --ignore=tests/e2e tests || unit=$?
e2e=0
python -m pytest -ra --durations=30 tests/e2e || e2e=$?
echo "==> unit tests: exit $unit; end-to-end tests: exit $e2e"
[ "$unit" -eq 0 ] && [ "$e2e" -eq 0 ]
