"""Test hosts for the kit's `hosts` target: privileged containers that behave like machines.

Each test host runs sshd (key auth only, root) and its own Docker engine, on a dedicated
bridge network with fixed addresses, so a test can drive them exactly like real machines:
Ansible or ssh over the network (``ssh -F hosts.ssh_config NAME``), images shipped with
``docker save | ssh HOST docker load``, containers published on a host's address and
reached from the other hosts and from this machine (the controller).

No pytest in here: the kit's tests use it, and so can a person at a shell::

    from tests.hosts.testhosts import TestHosts, build_image
    build_image()
    with TestHosts(["db1", "web1"], Path("/tmp/th")) as th:
        print(th.hosts)                       # [{'name': 'db1', 'address': '10.213.250.11', 'ssh_port': 22}, ...]
        th.run("db1", "docker", "info")       # over ssh, not docker exec
        th.load_image("web1", "kit/debian:bookworm")

Address plan (10.213.0.0/16, away from Docker's defaults 172.17.0.0/16 and up):
    10.213.250.0/24               the test network; host i (0-based) is 10.213.250.(11+i)
    10.213.(16*(i+1)).0/24        host i's inner docker0 (--bip)
    10.213.(16*(i+1)+8).0/21      host i's inner user-defined networks (--default-address-pool)
so at most 14 hosts, and no inner range overlaps the test network or another host's.
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

HERE = Path(__file__).resolve().parent
IMAGE = "kit-testhost:latest"
BASE_IMAGE = "kit/debian:bookworm"
HASH_LABEL = "kit.testhost.hash"
OWNER_LABEL = "kit.testhost"  # on every container and network this module creates
NETWORK = "kit-testhost-net"
SUBNET = "10.213.250.0/24"
FIRST_HOST_OCTET = 11
MAX_HOSTS = 14
BUILD_ENV = {"DOCKER_BUILDKIT": "0"}  # Debian's docker.io 20.10 has no buildx
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")

# Test hosts run --privileged: the inner dockerd mounts overlays, creates cgroups, network
# namespaces and iptables rules, which an ordinary container may not do.
PRIVILEGED = ["--privileged"]
# Some engines cannot grant --privileged at all: when the engine's own capability bounding
# set lacks a capability (seen here: a VM sandbox without CAP_SYS_RESOURCE), runc fails
# with "unable to apply caps". Then: every capability but that one, no seccomp/AppArmor,
# unmasked /proc, all devices allowed; the entrypoint remounts /sys and the cgroup
# hierarchies read-write. Enough for dockerd with overlay2, bridge networks and iptables.
ALMOST_PRIVILEGED = [
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--security-opt", "systempaths=unconfined", "--device-cgroup-rule", "a *:* rwm",
]
_privilege_mode: str | None = None  # learnt on the first start: "privileged" or "fallback"


class TestHostError(RuntimeError):
    """A test host could not be built, started, reached or cleaned up (message says which)."""


# --- small helpers -------------------------------------------------------------------------

def _cmd_str(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def _docker(*args: str, timeout: float = 60, check: bool = True, env: dict[str, str] | None = None,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["docker", *args]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input_text,
                                env={**os.environ, **(env or {})})
    except FileNotFoundError as exc:
        raise TestHostError("docker CLI not found (install docker.io)") from exc
    except subprocess.TimeoutExpired as exc:
        raise TestHostError(f"timed out after {timeout:.0f}s: {_cmd_str(cmd)}") from exc
    if check and result.returncode != 0:
        raise TestHostError(f"failed ({result.returncode}): {_cmd_str(cmd)}\n{(result.stderr or result.stdout)[-2000:]}")
    return result


def docker_available() -> str | None:
    """None when a Docker engine answers, else the reason it does not (for a skip message)."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    try:
        result = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                                capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 20s"
    if result.returncode != 0:
        return f"no Docker engine answers: {result.stderr.strip()[-300:]}"
    return None


def image_exists(tag: str) -> bool:
    return _docker("image", "inspect", tag, check=False, timeout=30).returncode == 0


def _image_id(tag: str) -> str | None:
    result = _docker("image", "inspect", "--format", "{{.Id}}", tag, check=False, timeout=30)
    return result.stdout.strip() if result.returncode == 0 else None


def context_hash(base_image: str = BASE_IMAGE) -> str:
    """Hash of the build context (Dockerfile, entrypoint, sshd config) and the base image's id."""
    digest = hashlib.sha256(f"{base_image}@{_image_id(base_image)}\0".encode())
    for path in sorted(p for p in HERE.iterdir() if p.is_file() and p.suffix != ".py" and p.name != "__pycache__"):
        digest.update(f"{path.name}:{path.stat().st_mode & 0o777:o}\0".encode())
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def build_image(force: bool = False, *, base_image: str = BASE_IMAGE, tag: str = IMAGE,
                timeout: float = 1200) -> str:
    """Build kit-testhost:latest (classic builder, no registry); skipped when up to date.

    Up to date means: the image exists and its hash label equals the hash of this folder's
    Dockerfile, entrypoint.sh and sshd_config. The base image must already exist (`kit images
    base` builds kit/debian:bookworm offline with debootstrap); only apt-get uses the network.
    """
    wanted = context_hash(base_image)
    previous = _image_id(tag)
    if not force and previous:
        label = _docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{HASH_LABEL}"}}}}', tag).stdout.strip()
        if label == wanted:
            return tag
    if not image_exists(base_image):
        raise TestHostError(f"base image {base_image} is missing: build it with `kit images base` (debootstrap, "
                            "no registry needed)")
    cmd = ["docker", "build", "--pull=false", "-t", tag, "--build-arg", f"BASE_IMAGE={base_image}",
           "--label", f"{HASH_LABEL}={wanted}", str(HERE)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, **BUILD_ENV})
    except subprocess.TimeoutExpired as exc:
        raise TestHostError(f"building {tag} took more than {timeout:.0f}s: {_cmd_str(cmd)}") from exc
    if result.returncode != 0:
        raise TestHostError(f"building {tag} failed: {_cmd_str(cmd)}\n{(result.stdout + result.stderr)[-3000:]}")
    if previous and previous != _image_id(tag):
        _docker("image", "rm", previous, check=False, timeout=60)  # our old build, now untagged
    return tag


def _remove_tree_as_root(path: Path) -> None:
    """Remove a state dir full of root-owned overlay files (inner /var/lib/docker)."""
    if not path.exists():
        return
    if os.geteuid() == 0:
        # --one-file-system: should a mount still be alive under it, leave it alone.
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True, timeout=600)
        if not path.exists():
            return
    # Not root (or something resisted): let a throwaway privileged container do it.
    parent, name = path.resolve().parent, path.name
    _docker("run", "--rm", "--privileged", "--name", f"kit-testhost-cleanup-{os.getpid()}-{name}"[:63],
            "--label", f"{OWNER_LABEL}=cleanup", "--network", "none", "-v", f"{parent}:/w",
            "--entrypoint", "rm", IMAGE if image_exists(IMAGE) else BASE_IMAGE, "-rf", f"/w/{name}",
            timeout=300)
    if path.exists():
        raise TestHostError(f"could not remove {path}")


# --- the hosts -------------------------------------------------------------------------------

class TestHosts:
    """Start N test hosts; a context manager that removes them (and their network) on exit.

    ``TestHosts(["a", "b"], workdir)`` keeps under workdir: the SSH key pair (``id_ed25519``),
    the generated ``ssh_config``, one state dir per host (``<name>/docker``, the host's
    /var/lib/docker, so overlay2 works) and ``shared-moodledata`` (mounted at /srv/moodledata
    on every host: the NFS share a multi-host Moodle needs).

    keep_state=False (default): each start begins with empty inner engines and exit removes
    the state dirs. keep_state=True: exit stops the hosts gracefully and keeps the state
    dirs, so the next start with the same workdir finds the images already loaded.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, names: list[str], workdir: Path, *, image: str = IMAGE, network: str = NETWORK,
                 subnet: str = SUBNET, keep_state: bool = False, start_timeout: float = 90,
                 memory: str | None = None) -> None:
        if not names:
            raise TestHostError("TestHosts needs at least one host name")
        if len(names) > MAX_HOSTS:
            raise TestHostError(f"at most {MAX_HOSTS} test hosts (address plan), got {len(names)}")
        if len(set(names)) != len(names):
            raise TestHostError(f"duplicate host names: {names}")
        for name in names:
            if not NAME_RE.match(name):
                raise TestHostError(f"host name {name!r}: use lowercase letters, digits and '-' (a hostname)")
            if name in ("shared-moodledata", "ssh-config"):
                raise TestHostError(f"host name {name!r} is reserved (a folder in workdir)")
        self.names = list(names)
        self.workdir = Path(workdir).resolve()
        self.image = image
        self.network = network
        self.subnet = subnet
        self.keep_state = keep_state
        self.start_timeout = start_timeout
        self.memory = memory
        prefix = subnet.split("/")[0].rsplit(".", 1)[0]
        self._addresses = {name: f"{prefix}.{FIRST_HOST_OCTET + i}" for i, name in enumerate(self.names)}
        self._started: list[str] = []
        self._network_created = False
        #: Size in bytes of the last image load_image() shipped.
        self.last_load_bytes = 0

    # -- facts ------------------------------------------------------------------------------

    @property
    def hosts(self) -> list[dict[str, Any]]:
        return [{"name": n, "address": self._addresses[n], "ssh_port": 22} for n in self.names]

    def address(self, name: str) -> str:
        self._check_name(name)
        return self._addresses[name]

    @property
    def gateway(self) -> str:
        """This machine's (the controller's) address on the test network."""
        return self.subnet.split("/")[0].rsplit(".", 1)[0] + ".1"

    @property
    def ssh_key(self) -> Path:
        return self.workdir / "id_ed25519"

    @property
    def ssh_config(self) -> Path:
        return self.workdir / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        return self.workdir / "known_hosts"

    @property
    def shared_dir(self) -> Path:
        return self.workdir / "shared-moodledata"

    def container(self, name: str) -> str:
        return f"kit-testhost-{name}"

    def state_dir(self, name: str) -> Path:
        return self.workdir / name

    def ssh_command(self, name: str) -> list[str]:
        """The ssh argv prefix to reach a host (append the remote command)."""
        self._check_name(name)
        return ["ssh", "-F", str(self.ssh_config), name]

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> "TestHosts":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.stop()
        except TestHostError as cleanup_error:
            if exc is None:
                raise
            # Keep the test's own error the headline; say what the cleanup left behind.
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(str(cleanup_error))

    def start(self) -> None:
        if not image_exists(self.image):
            raise TestHostError(f"image {self.image} is missing: call build_image() first")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._make_key()
        self._write_ssh_config()
        self._make_shared_dir()
        self._remove_leftovers()
        if not self.keep_state:  # start from empty engines (keep_state reuses loaded images)
            for name in self.names:
                _remove_tree_as_root(self.state_dir(name))
        self._create_network()
        public_key = self.ssh_key.with_suffix(".pub").read_text().strip()
        for index, name in enumerate(self.names):
            self._start_host(index, name, public_key)
        self._wait_ready()

    def stop(self) -> None:
        """Remove the containers and the network; the state dirs too unless keep_state."""
        errors: list[str] = []
        containers = [self.container(name) for name in self._started]
        if containers:
            # A graceful stop (SIGTERM: the inner dockerd stops its containers, up to 10 s
            # each) keeps a state dir consistent for keep_state; otherwise rm -f is enough:
            # killing the host's init ends every process inside, inner containers too.
            if self.keep_state:
                _docker("stop", "-t", "30", *containers, check=False, timeout=90)
            result = _docker("rm", "-f", "-v", *containers, check=False, timeout=120)
            for line in result.stderr.splitlines():
                if "No such container" not in line and line.strip():
                    errors.append(line.strip())
        self._started.clear()
        if self._network_created:
            result = _docker("network", "rm", self.network, check=False, timeout=60)
            if result.returncode != 0 and "not found" not in result.stderr:
                errors.append(f"network {self.network}: {result.stderr.strip()}")
            self._network_created = False
        if not self.keep_state:
            for name in self.names:
                try:
                    _remove_tree_as_root(self.state_dir(name))
                except TestHostError as exc:
                    errors.append(str(exc))
        if errors:
            raise TestHostError("cleaning up test hosts: " + "; ".join(errors))

    # -- using the hosts --------------------------------------------------------------------

    def run(self, name: str, *cmd: str, check: bool = True, timeout: float = 120,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command on a host over ssh (the real transport, not docker exec).

        The remote side gets one shell command line: each argument is shell-quoted, so
        ``run("a", "echo", "a b")`` prints ``a b``; pass a single string to use shell syntax.
        """
        remote = cmd[0] if len(cmd) == 1 else _cmd_str(list(cmd))
        argv = [*self.ssh_command(name), remote]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input_text,
                                    stdin=None if input_text is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise TestHostError(f"{name}: timed out after {timeout:.0f}s: {remote}") from exc
        if check and result.returncode != 0:
            raise TestHostError(f"{name}: `{remote}` exited {result.returncode}\n"
                                f"stdout: {result.stdout[-1500:]}\nstderr: {result.stderr[-1500:]}")
        return result

    def load_image(self, name: str, image: str, *, timeout: float = 900) -> float:
        """Ship an image from this machine's engine into a host's: docker save | ssh docker load.

        Streams (no temp file). Returns the seconds taken; the byte count is in last_load_bytes.
        """
        self._check_name(name)
        if not image_exists(image):
            raise TestHostError(f"image {image} is not in this machine's engine")
        started = time.monotonic()
        # Only the image goes through pipes; the two processes' messages go to small files so
        # that a chatty stderr can never block the stream.
        with tempfile.TemporaryFile() as save_err, tempfile.TemporaryFile() as load_log:
            save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE, stderr=save_err)
            load = subprocess.Popen([*self.ssh_command(name), "docker load"], stdin=subprocess.PIPE,
                                    stdout=load_log, stderr=subprocess.STDOUT)
            timed_out = threading.Event()

            def kill_both() -> None:
                timed_out.set()
                for proc in (save, load):
                    if proc.poll() is None:
                        proc.kill()

            watchdog = threading.Timer(timeout, kill_both)
            watchdog.start()
            copied = 0
            broken_pipe = False
            try:
                assert save.stdout is not None and load.stdin is not None
                while chunk := save.stdout.read(1 << 20):
                    try:
                        load.stdin.write(chunk)
                    except BrokenPipeError:  # docker load (or ssh) gave up: its log says why
                        broken_pipe = True
                        save.kill()
                        break
                    copied += len(chunk)
                try:
                    load.stdin.close()
                except BrokenPipeError:
                    broken_pipe = True
                save_code = save.wait()
                load_code = load.wait()
            finally:
                watchdog.cancel()
                for proc in (save, load):
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
            save_err.seek(0)
            load_log.seek(0)
            save_msg = save_err.read().decode(errors="replace").strip()[-1500:]
            load_msg = load_log.read().decode(errors="replace").strip()[-1500:]
        elapsed = time.monotonic() - started
        if timed_out.is_set():
            raise TestHostError(f"shipping {image} to {name} took more than {timeout:.0f}s "
                                f"({copied / 1e6:.0f} MB sent)")
        if load_code != 0 or broken_pipe:
            raise TestHostError(f"docker load on {name} failed ({image}, {copied / 1e6:.0f} MB sent): {load_msg}")
        if save_code != 0:
            raise TestHostError(f"docker save {image} failed: {save_msg}")
        if "Loaded image" not in load_msg:
            raise TestHostError(f"docker load on {name} did not report a loaded image: {load_msg}")
        self.last_load_bytes = copied
        return elapsed

    def logs(self, name: str, lines: int = 40) -> str:
        """The host container's last log lines (entrypoint, sshd and dockerd)."""
        result = _docker("logs", "--tail", str(lines), self.container(name), check=False, timeout=30)
        return (result.stdout + result.stderr).strip()

    def storage_driver(self, name: str) -> str:
        return self.run(name, "docker", "info", "--format", "{{.Driver}}", timeout=30).stdout.strip()

    # -- internals ----------------------------------------------------------------------------

    def _check_name(self, name: str) -> None:
        if name not in self._addresses:
            raise TestHostError(f"no test host named {name!r} (have: {', '.join(self.names)})")

    def _make_key(self) -> None:
        key = self.ssh_key
        if not key.exists():
            try:
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kit-testhost",
                                "-f", str(key)], check=True, capture_output=True, text=True, timeout=30)
            except FileNotFoundError as exc:
                raise TestHostError("ssh-keygen not found (install openssh-client)") from exc
            except subprocess.CalledProcessError as exc:
                raise TestHostError(f"ssh-keygen failed: {exc.stderr.strip()}") from exc
        key.chmod(0o600)

    def _write_ssh_config(self) -> None:
        lines = [f"# Generated by tests/hosts/testhosts.py: ssh -F {self.ssh_config} NAME", ""]
        for name in self.names:
            lines += [f"Host {name}", f"    HostName {self._addresses[name]}", ""]
        lines += [
            "Host *",
            "    User root",
            "    Port 22",
            f"    IdentityFile {self.ssh_key}",
            "    IdentitiesOnly yes",
            # Each host's own key, read from it at start (_learn_host_key): checked as on real
            # machines, which Mitogen enforces whatever an ssh_config says.
            "    StrictHostKeyChecking yes",
            f"    UserKnownHostsFile {self.known_hosts}",
            "    LogLevel ERROR",
            "    PasswordAuthentication no",
            "    BatchMode yes",
            "    ConnectTimeout 10",
            "    ServerAliveInterval 15",
            "",
        ]
        self.ssh_config.write_text("\n".join(lines))
        self.ssh_config.chmod(0o600)

    def _make_shared_dir(self) -> None:
        shared = self.shared_dir
        shared.mkdir(parents=True, exist_ok=True)
        try:
            os.chown(shared, 33, 33)  # www-data in Debian images: Moodle writes moodledata as it
            shared.chmod(0o2775)
        except PermissionError:
            shared.chmod(0o777)  # not root: world-writable instead

    def _remove_leftovers(self) -> None:
        """A crashed earlier run may have left our containers or network: remove only those."""
        for name in self.names:
            container = self.container(name)
            labels = _docker("inspect", "--format", f'{{{{index .Config.Labels "{OWNER_LABEL}"}}}}', container,
                             check=False, timeout=30)
            if labels.returncode == 0:
                if labels.stdout.strip() != "host":
                    raise TestHostError(f"a container named {container} exists and is not a test host: "
                                        "remove or rename it")
                _docker("rm", "-f", "-v", container, timeout=60)
        existing = _docker("network", "inspect", "--format", f'{{{{index .Labels "{OWNER_LABEL}"}}}}',
                           self.network, check=False, timeout=30)
        if existing.returncode == 0:
            if existing.stdout.strip() != "network":
                raise TestHostError(f"a network named {self.network} exists and is not ours: remove it")
            attached = _docker("network", "inspect", "--format", "{{range .Containers}}{{.Name}} {{end}}",
                               self.network, timeout=30).stdout.split()
            if attached:
                raise TestHostError(f"network {self.network} is still used by {', '.join(attached)} "
                                    "(another TestHosts running?)")
            _docker("network", "rm", self.network, timeout=60)

    def _create_network(self) -> None:
        _docker("network", "create", "--driver", "bridge", "--subnet", self.subnet, "--gateway", self.gateway,
                "--label", f"{OWNER_LABEL}=network", self.network, timeout=60)
        self._network_created = True

    def _start_host(self, index: int, name: str, public_key: str) -> None:
        state = self.state_dir(name) / "docker"
        state.mkdir(parents=True, exist_ok=True)
        block = 16 * (index + 1)
        cmd = [
            "run", "-d", "--name", self.container(name), "--hostname", name,
            "--label", f"{OWNER_LABEL}=host",
            # A private cgroup namespace nests the inner containers' cgroups under this
            # container's (not beside the outer engine's containers).
            "--cgroupns", "private",
            "--network", self.network, "--ip", self._addresses[name], "--network-alias", name,
            "-v", f"{state}:/var/lib/docker",
            "-v", f"{self.shared_dir}:/srv/moodledata",
            "-e", f"AUTHORIZED_KEYS={public_key}",
            "-e", f"DOCKER_BIP=10.213.{block}.1/24",
            "-e", f"DOCKER_ADDRESS_POOL=base=10.213.{block + 8}.0/21,size=24",
            "--stop-timeout", "30",
        ]
        if self.memory:
            cmd += ["--memory", self.memory]
        self._started.append(name)  # before run: a half-created container is still removed
        global _privilege_mode
        if _privilege_mode != "fallback":
            result = _docker(*cmd, *PRIVILEGED, self.image, timeout=120, check=False)
            if result.returncode == 0:
                _privilege_mode = "privileged"
                return
            if "unable to apply caps" not in result.stderr:
                raise TestHostError(f"starting test host {name} failed: {result.stderr.strip()[-2000:]}")
            # This engine runs with a reduced capability bounding set (e.g. a sandboxed VM
            # without CAP_SYS_RESOURCE): --privileged cannot work here at all.
            _docker("rm", "-f", "-v", self.container(name), check=False, timeout=60)
            _privilege_mode = "fallback"
        _docker(*cmd, *ALMOST_PRIVILEGED, self.image, timeout=120)

    @property
    def privilege_mode(self) -> str | None:
        """"privileged", or "fallback" (ALMOST_PRIVILEGED) when the engine refused --privileged."""
        return _privilege_mode

    def _learn_host_key(self, name: str, host_keys: dict[str, str]) -> bool:
        """Read the host key the host made at start (entrypoint.sh) into known_hosts."""
        result = _docker("exec", self.container(name), "cat", "/etc/ssh/ssh_host_ed25519_key.pub", check=False,
                         timeout=30)
        fields = result.stdout.split()
        if result.returncode != 0 or len(fields) < 2:
            return False
        host_keys[name] = f"{name},{self._addresses[name]} {fields[0]} {fields[1]}"
        self.known_hosts.write_text("".join(f"{line}\n" for line in host_keys.values()))
        return True

    def _wait_ready(self) -> None:
        """Every host: sshd accepts our key and the inner dockerd answers, within start_timeout."""
        deadline = time.monotonic() + self.start_timeout
        pending = list(self.names)
        last: dict[str, str] = {}
        host_keys: dict[str, str] = {}
        self.known_hosts.write_text("")
        while pending:
            for name in list(pending):
                state = _docker("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}",
                                self.container(name), check=False, timeout=30).stdout.strip()
                if not state.startswith("running"):
                    raise TestHostError(f"test host {name} stopped during start ({state}); its last log lines:\n"
                                        f"{self.logs(name)}")
                if name not in host_keys and not self._learn_host_key(name, host_keys):
                    last[name] = "no host key yet"
                    continue
                try:
                    result = self.run(name, "docker info --format '{{.Driver}}'", check=False, timeout=20)
                except TestHostError as exc:
                    last[name] = str(exc)
                    continue
                if result.returncode == 0 and result.stdout.strip():
                    pending.remove(name)
                else:
                    last[name] = (result.stderr or result.stdout).strip()[-300:]
            if not pending:
                return
            if time.monotonic() > deadline:
                details = "\n\n".join(f"--- {n}: last probe: {last.get(n, '?')}\n{self.logs(n)}" for n in pending)
                raise TestHostError(f"test hosts not ready after {self.start_timeout:.0f}s (sshd with our key "
                                    f"+ inner `docker info`): {', '.join(pending)}\n{details}")
            time.sleep(0.5)
