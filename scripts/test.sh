#!/usr/bin/env bash
# One command: set up this host and run the kit's tests (pytest).
# End-to-end tests need MOODLE_SRC (a Moodle 4.5 tree); without it they skip, saying so.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$KIT_ROOT"
exec python -m pytest -ra "$@"
