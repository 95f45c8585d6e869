"""The Docker engines a site runs on, through the Docker SDK: containers, volumes, networks
and images as objects (names, labels, state, health), never text parsed back from the CLI.

`local` talks to this host's engine (`docker.from_env()`, so DOCKER_HOST is honoured);
`hosts` talks to each machine's engine through an SSH tunnel to its socket, opened with
the site's own ssh_config (kit.runner.Tunnel), so keys and jump hosts work as for Ansible.
"""
from __future__ import annotations

import io
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
import requests

from kit.errors import KitError, OperationFailed

LABEL_SITE = "kit.site"
LABEL_SITE_ID = "kit.site-id"
LABEL_ROLE = "kit.role"
LABEL_REPLICA = "kit.replica"


@dataclass(frozen=True)
class Container:
    """One container of a site, as the engine reports it."""

    name: str
    id: str
    role: str
    state: str            # running, exited, restarting, created, dead, paused
    health: str           # healthy, unhealthy, starting, none
    image: str
    started: str
    labels: dict[str, str] = field(default_factory=dict, compare=False)
    machine: str = ""     # hosts target: the machine it runs on
    ports: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def site_id(self) -> str:
        return self.labels.get(LABEL_SITE_ID, "")

    def as_dict(self) -> dict[str, str]:
        row = {"name": self.name, "role": self.role, "state": self.state, "health": self.health,
               "image": self.image, "started": self.started}
        if self.machine:
            row["machine"] = self.machine
        return row


def _container(obj: Any, machine: str) -> Container:
    attrs = obj.attrs
    state = attrs.get("State", {})
    labels = attrs.get("Config", {}).get("Labels") or {}
    return Container(
        name=obj.name, id=obj.id, role=labels.get(LABEL_ROLE, "?"), state=state.get("Status", "?"),
        health=(state.get("Health") or {}).get("Status", "none"), image=attrs.get("Config", {}).get("Image", ""),
        started=state.get("StartedAt", ""), labels=dict(labels), machine=machine,
        ports=attrs.get("NetworkSettings", {}).get("Ports") or {})


class Engine:
    """One Docker engine (this host's, or one machine's)."""

    def __init__(self, client: docker.DockerClient, machine: str = "", where: str = "this host") -> None:
        self.client, self.machine, self.where = client, machine, where

    @classmethod
    def local(cls) -> "Engine":
        """This host's engine; a one-line KitError when it does not answer."""
        try:
            client = docker.from_env(timeout=60)
            client.ping()
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise KitError(f"Docker is not reachable ({first_line(exc)})") from None
        return cls(client)

    def version(self) -> str:
        return str(self.client.version().get("Version", "?"))

    # --- what a site has on this engine ---------------------------------------------------

    def containers(self, site_name: str, *, claims: Callable[[str], bool] | None = None) -> list[Container]:
        """The site's containers (by label), and with `claims` also any container whose name
        is one of the site's without its label (it must not be taken over silently)."""
        found = {c.id: c for c in self.client.containers.list(all=True, filters={"label": f"{LABEL_SITE}={site_name}"})}
        if claims:
            for c in self.client.containers.list(all=True):
                if claims(c.name):
                    found.setdefault(c.id, c)
        rows = [_container(c, self.machine) for c in found.values()]
        return sorted(rows, key=lambda r: (r.role, r.name))

    def container(self, name: str) -> Container | None:
        try:
            return _container(self.client.containers.get(name), self.machine)
        except docker.errors.NotFound:
            return None

    def labelled(self, site_name: str) -> list[tuple[str, str, dict[str, str]]]:
        """(kind, name, labels) of the site's volumes and networks."""
        rows: list[tuple[str, str, dict[str, str]]] = []
        for volume in self.client.volumes.list(filters={"label": f"{LABEL_SITE}={site_name}"}):
            rows.append(("volume", volume.name, volume.attrs.get("Labels") or {}))
        for network in self.client.networks.list(filters={"label": f"{LABEL_SITE}={site_name}"}):
            rows.append(("network", network.name, network.attrs.get("Labels") or {}))
        return rows

    def named(self, claims: Callable[[str], bool]) -> list[tuple[str, str, dict[str, str]]]:
        """(kind, name, labels) of volumes and networks whose names are the site's."""
        rows: list[tuple[str, str, dict[str, str]]] = []
        for volume in self.client.volumes.list():
            if claims(volume.name):
                rows.append(("volume", volume.name, volume.attrs.get("Labels") or {}))
        for network in self.client.networks.list():
            if claims(network.name):
                rows.append(("network", network.name, network.attrs.get("Labels") or {}))
        return rows

    def published_port(self, name: str, port: int) -> tuple[str, int] | None:
        """(host address, host port) a container publishes for its port, if it runs."""
        found = self.container(name)
        if found is None or found.state != "running":
            return None
        bindings = found.ports.get(f"{port}/tcp") or []
        for binding in bindings:
            if binding.get("HostPort"):
                address = binding.get("HostIp") or "127.0.0.1"
                return ("127.0.0.1" if address in ("0.0.0.0", "::") else address), int(binding["HostPort"])
        return None

    # --- images -----------------------------------------------------------------------------

    def image_exists(self, tag: str) -> bool:
        try:
            self.client.images.get(tag)
            return True
        except docker.errors.ImageNotFound:
            return False

    def image_id(self, tag: str) -> str:
        try:
            return str(self.client.images.get(tag).id)
        except docker.errors.ImageNotFound:
            raise KitError(f"image {tag} is not on {self.where}") from None

    def image_size(self, tag: str) -> int:
        """Bytes of the image's layers (about the size of its `docker save` archive)."""
        try:
            return int(self.client.images.get(tag).attrs.get("Size") or 0)
        except docker.errors.ImageNotFound:
            raise KitError(f"image {tag} is not on {self.where}") from None

    def tag(self, image_id: str, tag: str) -> bool:
        """Give an image already here another tag; False when the image is not here."""
        repository, _, version = tag.rpartition(":")
        try:
            return bool(self.client.images.get(image_id).tag(repository, version))
        except docker.errors.ImageNotFound:
            return False

    def read_from_image(self, image: str, path: str) -> str:
        """A text file from an image, without running anything in it."""
        created = self.client.containers.create(image, command=["true"], entrypoint=[])
        try:
            stream, _ = created.get_archive(path)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.next()
                handle = tar.extractfile(member) if member else None
                return handle.read().decode(errors="replace") if handle else ""
        except docker.errors.NotFound:
            raise KitError(f"{image} has no {path}") from None
        finally:
            created.remove(force=True)

    # --- running things in containers ---------------------------------------------------------

    def exec(self, name: str, argv: list[str], *, user: str = "www-data", stdin: bytes | None = None,
             stream: bool = False, workdir: str | None = None) -> tuple[int, str, str]:
        """Run a command in a running container; (exit code, stdout, stderr). With stream,
        the output is also shown as it comes (long Moodle CLI work)."""
        api = self.client.api
        try:
            exec_id = api.exec_create(name, argv, user=user, stdin=stdin is not None, workdir=workdir)["Id"]
        except docker.errors.NotFound:
            raise OperationFailed(f"container {name} does not exist on {self.where} (is the site up? `kit status`)") \
                from None
        except docker.errors.APIError as exc:
            raise OperationFailed(f"cannot run a command in {name}: {first_line(exc)}") from None
        sock = api.exec_start(exec_id, socket=True)
        raw = getattr(sock, "_sock", sock)
        if stdin is not None:
            raw.sendall(stdin)
        try:
            raw.shutdown(1)  # SHUT_WR: the command sees the end of its input
        except OSError:
            pass
        out: list[str] = []
        err: list[str] = []
        for kind, data in _demux(raw):
            text = data.decode(errors="replace")
            (err if kind == 2 else out).append(text)
            if stream:
                target = sys.stderr if kind == 2 else sys.stdout
                target.write(text)
                target.flush()
        raw.close()
        code = api.exec_inspect(exec_id).get("ExitCode")
        return (code if code is not None else -1), "".join(out), "".join(err)

    def logs(self, name: str, *, since: int, tail: int) -> Iterator[bytes]:
        try:
            stream = self.client.api.logs(name, stream=True, follow=False, since=since, tail=tail,
                                          stdout=True, stderr=True)
        except docker.errors.NotFound:
            return iter(())
        return iter(stream)

    def stop(self, names: list[str], timeout: int = 120) -> None:
        for name in names:
            self.client.containers.get(name).stop(timeout=timeout)

    def start(self, names: list[str]) -> None:
        for name in names:
            try:
                self.client.containers.get(name).start()
            except docker.errors.APIError:
                pass


def _demux(sock: Any) -> Iterator[tuple[int, bytes]]:
    """Docker's multiplexed exec stream: 8-byte headers (stream, size), then the payload."""
    def read(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                return buf
            buf += chunk
        return buf

    while True:
        header = read(8)
        if len(header) < 8:
            return
        size = int.from_bytes(header[4:8], "big")
        yield header[0], read(size)


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "explanation", None) or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:300]
