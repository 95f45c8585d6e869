#!/bin/bash
# kit-testhost entrypoint: sshd (key auth only) + an inner dockerd, in the foreground.
# SIGTERM (docker stop) stops dockerd first (it stops its containers), then sshd, exit 0.
#
# Environment (set by tests/hosts/testhosts.py):
#   AUTHORIZED_KEYS        public key(s) allowed to log in as root (required)
#   DOCKER_BIP             inner docker0 address, default 10.213.16.1/24 (not the outer
#                          engine's 172.17.0.0/16, so inner containers reach outer addresses)
#   DOCKER_ADDRESS_POOL    inner user-defined networks, default base=10.213.24.0/21,size=24
#   DOCKER_STORAGE_DRIVER  auto (overlay2, else vfs), overlay2 or vfs
#   DOCKERD_LOG_LEVEL      default info
set -uo pipefail

log() { echo "[kit-testhost $(date +%H:%M:%S)] $*"; }

DOCKER_BIP=${DOCKER_BIP:-10.213.16.1/24}
DOCKER_ADDRESS_POOL=${DOCKER_ADDRESS_POOL:-base=10.213.24.0/21,size=24}
DOCKER_STORAGE_DRIVER=${DOCKER_STORAGE_DRIVER:-auto}
DOCKERD_LOG_LEVEL=${DOCKERD_LOG_LEVEL:-info}
dockerd_pid=
sshd_pid=

stop_all() {
    log "SIGTERM: stopping dockerd (and its containers), then sshd"
    if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
        kill -TERM "$dockerd_pid"
        wait "$dockerd_pid" 2>/dev/null
    fi
    if [ -n "$sshd_pid" ] && kill -0 "$sshd_pid" 2>/dev/null; then
        kill -TERM "$sshd_pid"
        wait "$sshd_pid" 2>/dev/null
    fi
    log "stopped cleanly"
    exit 0
}
trap stop_all TERM INT

# --- sshd ------------------------------------------------------------------------------
if [ -z "${AUTHORIZED_KEYS:-}" ]; then
    log "AUTHORIZED_KEYS is empty: nobody could log in; refusing to start"
    exit 2
fi
install -d -m 700 /root/.ssh
printf '%s\n' "$AUTHORIZED_KEYS" > /root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys
ssh-keygen -A >/dev/null          # this host's own host keys
mkdir -p /run/sshd
/usr/sbin/sshd -D -e &
sshd_pid=$!
log "sshd started (pid $sshd_pid, key auth only)"

# --- dockerd ---------------------------------------------------------------------------
overlay_works() {
    # overlay2 needs /var/lib/docker on a real filesystem (the bind mount), not on the
    # container's own overlay root: try one mount before telling dockerd to use it.
    local probe=/var/lib/docker/.kit-overlay-probe
    rm -rf "$probe"
    mkdir -p "$probe"/{lower,upper,work,merged} || return 1
    if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
            "$probe/merged" 2>/dev/null; then
        umount "$probe/merged"
        rm -rf "$probe"
        return 0
    fi
    rm -rf "$probe"
    return 1
}

start_dockerd() {  # $1 = storage driver
    rm -f /var/run/docker.pid /var/run/docker.sock
    dockerd --storage-driver "$1" --bip "$DOCKER_BIP" \
        --default-address-pool "$DOCKER_ADDRESS_POOL" \
        --shutdown-timeout 10 --log-level "$DOCKERD_LOG_LEVEL" \
        > >(tee -a /var/log/dockerd.log | sed -u 's/^/[dockerd] /') 2>&1 &
    dockerd_pid=$!
    log "dockerd started (pid $dockerd_pid, storage driver $1, bip $DOCKER_BIP, pool $DOCKER_ADDRESS_POOL)"
}

wait_dockerd() {  # 0 when the engine answers, 1 when dockerd died, within 60 s
    local i
    for i in $(seq 1 120); do
        if ! kill -0 "$dockerd_pid" 2>/dev/null; then
            return 1
        fi
        if docker info >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    return 1
}

make_writable() {
    # With --privileged, /sys and the cgroup hierarchies are already read-write. Where the
    # outer engine cannot grant --privileged (testhosts.py then uses every capability it can,
    # no seccomp/AppArmor, unmasked /proc), Docker mounts them read-only: the inner dockerd
    # must create cgroups, so remount them read-write. The cgroup namespace is private, so
    # this is this host's own subtree.
    local target
    while read -r _ target fstype options _; do
        case "$fstype" in sysfs|cgroup|cgroup2) ;; *) continue ;; esac
        case ",$options," in *,ro,*) ;; *) continue ;; esac
        if mount -o remount,bind,rw "$target" 2>/dev/null || mount -o remount,rw "$target" 2>/dev/null; then
            log "remounted $target read-write"
        else
            log "warning: cannot remount $target read-write; the inner dockerd may fail"
        fi
    done < /proc/self/mounts
}
make_writable

mkdir -p /var/lib/docker
driver=$DOCKER_STORAGE_DRIVER
if [ "$driver" = auto ]; then
    if overlay_works; then
        driver=overlay2
    else
        driver=vfs
        log "storage driver: overlay mount failed on /var/lib/docker (is it a bind mount from the outer host?): falling back to vfs (slow, space-hungry)"
    fi
fi
start_dockerd "$driver"
if ! wait_dockerd; then
    if [ "$driver" = overlay2 ] && [ "$DOCKER_STORAGE_DRIVER" = auto ]; then
        log "storage driver: dockerd did not come up with overlay2; falling back to vfs"
        kill -TERM "$dockerd_pid" 2>/dev/null
        wait "$dockerd_pid" 2>/dev/null
        driver=vfs
        start_dockerd vfs
        wait_dockerd || { log "dockerd did not come up with vfs either; see the [dockerd] lines above"; exit 1; }
    else
        log "dockerd did not come up with $driver; see the [dockerd] lines above"
        exit 1
    fi
fi
log "ready: storage driver $(docker info --format '{{.Driver}}' 2>/dev/null)"

# --- foreground ------------------------------------------------------------------------
while true; do
    wait -n "$dockerd_pid" "$sshd_pid"
    # wait returns early when a signal arrives (the trap exits); otherwise a daemon died.
    if ! kill -0 "$dockerd_pid" 2>/dev/null; then
        log "dockerd exited unexpectedly; stopping the host"
        kill -TERM "$sshd_pid" 2>/dev/null
        exit 1
    fi
    if ! kill -0 "$sshd_pid" 2>/dev/null; then
        log "sshd exited unexpectedly; stopping the host"
        kill -TERM "$dockerd_pid" 2>/dev/null
        wait "$dockerd_pid" 2>/dev/null
        exit 1
    fi
done
