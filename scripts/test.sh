#!/usr/bin/env bash
# One command: set up this host and run the kit's checks: ruff, mypy, then pytest.
# End-to-end tests need MOODLE_SRC (a Moodle 4.5 tree); without it they skip, saying so.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$KIT_ROOT"
# The tests' own servers: a PostgreSQL 15 (the database module and the external-database
# site are tested against a real one).
if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
    echo "==> apt-get install postgresql-15 (for the tests)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
fi
echo "==> ruff check"
ruff check .
echo "==> mypy"
mypy
exec python -m pytest -ra "$@"
