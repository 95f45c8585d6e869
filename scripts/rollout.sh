#!/usr/bin/env bash
# One command: set up this host and roll out Moodle on it.
#   MOODLE_SRC=~/moodle-src/4.5.6 bash scripts/rollout.sh     # Moodle from a local folder
#   bash scripts/rollout.sh                                    # Moodle from git (v4.5.6)
# Extra arguments go to `kit init` the first time (e.g. --users 500 --port 80).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$KIT_ROOT"

if [ ! -f site.yaml ]; then
    base=debian:bookworm-slim
    if ! docker image inspect "$base" >/dev/null 2>&1 && ! timeout 120 docker pull "$base" >/dev/null 2>&1; then
        echo "==> no registry reachable: building the Debian base image offline (debootstrap)"
        kit images base
        base=kit/debian:bookworm
    fi
    src_args=()
    [ -n "${MOODLE_SRC:-}" ] && src_args=(--moodle-source "$MOODLE_SRC")
    kit init --base-image "$base" "${src_args[@]}" "$@"
fi
kit up --yes
kit status
