"""Smoke test of the test hosts the `hosts` target's tests will use (tests/hosts/testhosts.py).

Two hosts, each sshd + its own Docker engine: ssh with the generated key and config, the
inner engines, shipping an image over ssh, a container published on host a's address and
reached from host b (its shell and a container on it) and from this machine, the shared
moodledata folder, and nothing left behind afterwards.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.conftest import MEASURED
from tests.hosts.testhosts import BASE_IMAGE, TestHosts, build_image, docker_available, image_exists

pytestmark = pytest.mark.e2e

NAMES = ["a", "b"]
SERVER_PORT = 5432  # what the hosts target does with PostgreSQL: published on the db host's address
# A one-line HTTP server from what the debootstrapped base has (perl-base, no python).
PERL_HTTP = (
    'perl -MIO::Socket::INET -e \'$s = IO::Socket::INET->new(LocalPort => 80, Listen => 10, ReuseAddr => 1)'
    ' or die "listen: $!"; while ($c = $s->accept) { while (<$c>) { last if /^\\r?$/ }'
    ' print $c "HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\nhello from $ENV{WHERE}\\n"; close $c }\''
)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    reason = docker_available()
    if reason:
        pytest.skip(f"test hosts need a Docker engine: {reason}")
    if not image_exists(BASE_IMAGE):
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "kit.cli", "images", "base"], capture_output=True,
                                text=True, timeout=1800)
        assert result.returncode == 0, f"kit images base failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        MEASURED["test hosts: base image (debootstrap)"] = f"{time.monotonic() - started:.0f}s"
    started = time.monotonic()
    build_image()
    MEASURED["test hosts: image build (or up-to-date check)"] = f"{time.monotonic() - started:.1f}s"
    started = time.monotonic()
    with TestHosts(NAMES, tmp_path_factory.mktemp("testhosts")) as th:
        MEASURED["test hosts: start 2 hosts (sshd + inner dockerd ready)"] = \
            f"{time.monotonic() - started:.1f}s ({th.privilege_mode})"
        yield th


@pytest.fixture(scope="module")
def shipped(hosts: TestHosts) -> TestHosts:
    """kit/debian:bookworm shipped into both hosts over ssh (b's copy runs the clients)."""
    for name in NAMES:
        seconds = hosts.load_image(name, BASE_IMAGE)
        MEASURED[f"test hosts: ship {BASE_IMAGE} to {name}"] = \
            f"{hosts.last_load_bytes / 1e6:.0f} MB in {seconds:.1f}s"
    return hosts


def test_ssh_reaches_each_host_by_name(hosts: TestHosts):
    assert [h["name"] for h in hosts.hosts] == NAMES
    assert all(h["ssh_port"] == 22 for h in hosts.hosts)
    assert hosts.ssh_key.stat().st_mode & 0o777 == 0o600
    for host in hosts.hosts:
        assert hosts.run(host["name"], "hostname").stdout.strip() == host["name"]
        # Plain ssh with the generated config, to the address, as Ansible will do it.
        plain = subprocess.run(["ssh", "-F", str(hosts.ssh_config), host["address"], "id -un"],
                               capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert plain.returncode == 0, plain.stderr
        assert plain.stdout.strip() == "root"
        # Ansible runs its modules with the host's python3.
        assert hosts.run(host["name"], "python3", "-c", "print(6 * 7)").stdout.strip() == "42"


def test_password_login_is_refused(hosts: TestHosts):
    result = subprocess.run(
        ["ssh", "-F", str(hosts.ssh_config), "-o", "IdentityFile=/dev/null", "-o", "PubkeyAuthentication=no",
         "-o", "PasswordAuthentication=yes", "-o", "PreferredAuthentications=password", "a", "true"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 255
    assert "Permission denied" in result.stderr


def test_inner_engines_answer_with_their_own_addresses(hosts: TestHosts):
    bridges = set()
    for name in NAMES:
        driver = hosts.storage_driver(name)
        MEASURED[f"test hosts: storage driver on {name}"] = driver
        assert driver in ("overlay2", "vfs")
        docker0 = hosts.run(name, "ip -4 -o addr show docker0").stdout
        address = docker0.split("inet ")[1].split()[0]
        assert address.startswith("10.213."), docker0  # never the outer engine's 172.17.0.0/16
        bridges.add(address)
    assert len(bridges) == len(NAMES), bridges  # and not the same range on two hosts


def test_shipped_image_runs_on_the_host(shipped: TestHosts):
    out = shipped.run("a", "docker", "run", "--rm", BASE_IMAGE, "cat", "/etc/debian_version").stdout
    assert out.strip().startswith("12")


def _listen_once(address: str, accepted: list[str]) -> int | None:
    """A one-shot TCP server on this machine: its port, or None when the address is not ours."""
    try:
        server = socket.create_server((address, 0))
    except OSError:
        return None
    port = server.getsockname()[1]
    server.settimeout(30)

    def serve() -> None:
        try:
            conn, peer = server.accept()
            with conn:
                conn.sendall(f"controller {address}\n".encode())
                accepted.append(peer[0])
        except OSError:
            pass
        finally:
            server.close()

    threading.Thread(target=serve, daemon=True).start()
    return port


def test_port_published_on_a_is_reachable_from_b_and_from_here(shipped: TestHosts):
    th = shipped
    a_addr = th.address("a")
    th.run("a", f"docker run -d --init --name kit-testhost-web -e WHERE=a -p {a_addr}:{SERVER_PORT}:80 "
                f"{BASE_IMAGE} {PERL_HTTP}")
    url = f"http://{a_addr}:{SERVER_PORT}/"
    deadline = time.monotonic() + 30
    while True:  # from this machine (the controller), over the test network
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.read().decode().strip() == "hello from a"
            break
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} not reachable from the controller within 30s; "
                                     f"{th.run('a', 'docker logs kit-testhost-web', check=False).stderr}") from None
            time.sleep(0.5)
    # From host b itself.
    assert th.run("b", "curl", "-sS", "-m", "10", url).stdout.strip() == "hello from a"
    # From a container on b (the hosts target: web on one host, its database on another).
    in_container = th.run("b", "docker", "run", "--rm", BASE_IMAGE, "bash", "-c",
                          f"exec 3<>/dev/tcp/{a_addr}/{SERVER_PORT}; printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; "
                          "cat <&3")
    assert in_container.stdout.strip().endswith("hello from a")


def test_containers_on_a_host_reach_the_controller(shipped: TestHosts):
    # Inner docker0 is not 172.17.0.0/16: containers inside reach the outer engine's bridge
    # address and the controller's address on the test network.
    for address in (shipped.gateway, "172.17.0.1"):
        accepted: list[str] = []
        port = _listen_once(address, accepted)
        if port is None:
            assert address != shipped.gateway, "cannot listen on the test network's gateway"
            continue  # no outer docker0 here
        out = shipped.run("b", "docker", "run", "--rm", BASE_IMAGE, "bash", "-c",
                          f"exec 3<>/dev/tcp/{address}/{port}; cat <&3").stdout
        assert out.strip() == f"controller {address}"
        deadline = time.monotonic() + 5
        while not accepted and time.monotonic() < deadline:
            time.sleep(0.1)
        assert accepted == [shipped.address("b")]  # masqueraded as host b: a real host's view


def test_moodledata_is_shared_between_hosts(shipped: TestHosts):
    th = shipped
    stamp = f"written on a at {time.time()}"
    # As www-data (uid 33), the user Moodle's containers write moodledata as.
    th.run("a", "su", "-s", "/bin/sh", "www-data", "-c", f"echo '{stamp}' > /srv/moodledata/from-a")
    assert th.run("b", "cat", "/srv/moodledata/from-a").stdout.strip() == stamp
    assert th.run("b", "stat", "-c", "%u", "/srv/moodledata/from-a").stdout.strip() == "33"
    # And from a container on b bind-mounting it, as uid 33.
    out = th.run("b", "docker", "run", "--rm", "-u", "33", "-v", "/srv/moodledata:/data", BASE_IMAGE,
                 "sh", "-c", "cat /data/from-a && echo from-b > /data/from-b").stdout
    assert out.strip() == stamp
    assert (th.shared_dir / "from-b").read_text().strip() == "from-b"


def test_cleanup_leaves_nothing(hosts: TestHosts):
    state_dirs = [hosts.state_dir(n) for n in NAMES]
    started = time.monotonic()
    hosts.stop()
    MEASURED["test hosts: clean up 2 hosts"] = f"{time.monotonic() - started:.1f}s"
    left = subprocess.run(["docker", "ps", "-a", "--filter", "name=^kit-testhost", "--format", "{{.Names}}"],
                          capture_output=True, text=True, timeout=30).stdout.split()
    assert left == []
    networks = subprocess.run(["docker", "network", "ls", "--filter", "name=^kit-testhost", "--format",
                               "{{.Name}}"], capture_output=True, text=True, timeout=30).stdout.split()
    assert networks == []
    assert not any(d.exists() for d in state_dirs)
