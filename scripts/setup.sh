#!/usr/bin/env bash
# Sets up everything the kit needs on a fresh Debian/Ubuntu host (as root):
# Python venv with the kit, Debian's docker.io and debootstrap, a running dockerd.
# Sourced by rollout.sh and test.sh; safe to run again.
set -euo pipefail
KIT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${KIT_VENV:-$KIT_ROOT/.venv}"

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    echo "==> apt-get install ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    echo "==> starting dockerd"
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl start docker
    else
        nohup dockerd >/var/log/dockerd.log 2>&1 &
    fi
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "dockerd did not start: see /var/log/dockerd.log" >&2; exit 1; }
fi

if [ ! -x "$VENV/bin/kit" ] || [ "$KIT_ROOT/pyproject.toml" -nt "$VENV/.kit-installed" ]; then
    echo "==> installing the kit into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null
    "$VENV/bin/pip" install -q -e "$KIT_ROOT[test]"
    touch "$VENV/.kit-installed"
fi
export PATH="$VENV/bin:$PATH"
