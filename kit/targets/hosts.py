"""The `hosts` target: several machines, each with its own Docker engine, reached over SSH.

The rollout is the same playbook as `local` (one play per role group, web machines one at
a time); what differs is where a container lives, reaching each machine's engine (an SSH
tunnel to its Docker socket, with the site's ssh_config) and shipping the images built
here to the machines that lack them (`docker save | ssh docker load`).
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import click
import docker

from kit import db, health
from kit.config import Machine
from kit.doctor import Check, check_docker
from kit.engine import Engine
from kit.errors import KitError, Unsupported
from kit.identity import Owner
from kit.images import ImageSet
from kit.monitoring import Monitor
from kit.render import topology_for
from kit.runner import Tunnel, capture, feed_file, pipe, to_file
from kit.targets import certs
from kit.targets.docker import DockerTarget

# Which of the kit's images each role runs.
IMAGES_FOR_ROLE = {"edge": ("edge",), "db": ("postgres",), "redis": ("redis",), "cron": ("moodle",),
                   "worker": ("moodle",), "web": ("moodle", "web")}
REMOTE_DOCKER_SOCKET = "/var/run/docker.sock"
#: Free space left beside the saved images (the machine's own builds and logs need room too).
DISK_MARGIN = 2 * 2**30


class HostsTarget(DockerTarget):
    name = "hosts"

    def ssh(self, machine: Machine) -> list[str]:
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        if self.site.hosts.ssh_config:
            cmd += ["-F", str(self.site.site_dir / self.site.hosts.ssh_config)]
        return cmd + [f"{self.site.hosts.ssh_user}@{machine.address}"]

    def _open(self, machine: Machine) -> Engine:
        tunnel = Tunnel(self.ssh(machine), REMOTE_DOCKER_SOCKET).__enter__()
        atexit.register(tunnel.__exit__, None, None, None)
        client = docker.DockerClient(base_url=f"unix://{tunnel.local}", timeout=60)
        return Engine(client, machine=machine.name, where=f"machine {machine.name}")

    @cached_property
    def _engines(self) -> dict[str, Engine]:
        return {m.name: self._open(m) for m in self.site.hosts.machines}

    def engines(self) -> dict[str, Engine]:
        return self._engines

    def machine_of(self, container: str) -> Machine:
        """The machine that runs one of the site's containers (by its name in `Names`)."""
        names, topo = self.names, topology_for(self.site, self.tuning)
        by_role = {names.db: "db", names.redis: "redis", names.edge: "edge", names.cron: "cron", names.oneoff: "cron"}
        hosts = {name: topo.hosts_for[role][0] for name, role in by_role.items() if topo.hosts_for[role]}
        for replica, where in topo.replicas.items():
            hosts[replica] = hosts[f"{replica}-nginx"] = where["host"]
        hosts.update(topo.workers)
        if container not in hosts:
            raise KitError(f"{container}: not a container of site {self.site.name!r}")
        return next(m for m in self.site.hosts.machines if m.name == hosts[container])

    def engine_for(self, container: str) -> Engine:
        return self.engines()[self.machine_of(container).name]

    def owner_record(self) -> Owner | None:
        edge = self.site.hosts.with_role("edge")[0]
        result = capture([*self.ssh(edge), "cat", f"/etc/kit/{self.site.name}/owner.json"], check=False, timeout=30)
        return Owner.from_json(result.stdout) if result.returncode == 0 else None

    def db_endpoint(self) -> db.Endpoint:
        if self.site.database.external:
            parts = self.site.database.external_parts()
            return db.Endpoint(host=str(parts["host"]), port=int(parts["port"]), dbname=str(parts["dbname"]),
                               sslmode=str(parts["sslmode"]))
        machine = self.site.hosts.with_role("db")[0]
        return db.Endpoint(host=machine.address, port=5432, sslmode=self.tuning.db_sslmode,
                           sslrootcert=str(certs.site_ca_dir(self.site) / "ca.crt"))

    def local_url(self) -> str:
        return health.local_base_url(self.site, self.site.hosts.with_role("edge")[0].address)

    # --- preflight ------------------------------------------------------------------------------
    def check_machines(self) -> list[Check]:
        """SSH answers and a Docker engine runs on each machine (through the same tunnel the
        kit then uses)."""
        rows = []
        for machine in self.site.hosts.machines:
            try:
                engine = self.engines().get(machine.name) if "_engines" in self.__dict__ else None
                engine = engine or self._open(machine)
                version = engine.version()
            except KitError as exc:
                rows.append(Check(machine.name, False, str(exc)))
                continue
            except Exception as exc:  # noqa: BLE001 - the SDK's connection errors are many; all mean "no engine"
                rows.append(Check("docker", False, f"{machine.name} ({machine.address}): no Docker engine answers "
                                                   f"({type(exc).__name__}): install docker.io there, or rerun "
                                                   "`kit up --yes`"))
                continue
            rows.append(Check(machine.name, True, f"{machine.address}: ssh ok, Docker {version}"))
        return rows

    def preflight(self) -> list[Check]:
        builder = check_docker()
        if not builder.ok:
            builder = Check("docker", False, f"the kit builds images with this machine's Docker engine: "
                                             f"{builder.message}")
        return [builder, *self.check_machines(), *certs.check(self.site), *self.external_db_check()]

    def monitor_access_hint(self) -> str | None:
        m, edge = self.site.monitoring, self.site.hosts.with_role("edge")[0]
        return (f"(on the edge machine {edge.name}: ssh -L {m.prometheus_port}:127.0.0.1:{m.prometheus_port} "
                f"{self.site.hosts.ssh_user}@{edge.address})")

    def docker_missing(self, yes: bool) -> None:
        """Machines without Docker get Debian's docker.io through the playbook, with --yes."""
        if not all(c.ok for c in self.check_machines()):
            if not yes:
                raise KitError("some machines have no Docker engine: rerun with --yes to install docker.io there")
            from kit.render import render

            render(self.site, self.tuning, ImageSet.placeholder())
            self.ansible("docker.yml", extra={"docker_engine_install": True})

    # --- monitoring -------------------------------------------------------------------------------
    @contextmanager
    def monitor(self) -> Iterator[Monitor]:
        """Prometheus and Alertmanager listen on the edge machine's 127.0.0.1: reach them
        through SSH forwards for the command's length."""
        if not self.site.monitoring.enabled:
            raise KitError("monitoring is off for this site (monitoring.enabled: false in site.yaml); "
                           "turn it on and run `kit up`")
        edge = self.site.hosts.with_role("edge")[0]
        m = self.site.monitoring
        with Tunnel(self.ssh(edge), f"127.0.0.1:{m.prometheus_port}", local_port=_free_port()) as prom, \
                Tunnel(self.ssh(edge), f"127.0.0.1:{m.alertmanager_port}", local_port=_free_port()) as am:
            yield Monitor(f"http://127.0.0.1:{prom.local}", f"http://127.0.0.1:{am.local}")

    # --- images -----------------------------------------------------------------------------------
    def images_needed(self, machine: Machine, images: ImageSet) -> list[str]:
        wanted = images.as_dict()
        keys = {key for role in machine.roles for key in IMAGES_FOR_ROLE[role]}
        if wanted["monitor"] != "-":
            keys.add("monitor")      # every machine runs exporters
        return [wanted[key] for key in sorted(keys)]

    def ship_images(self, images: ImageSet) -> None:
        """Copy the images each machine needs and lacks. One already there under another name
        is re-tagged. The rest go as one `docker save` archive per set of images (the layers
        the set shares go once), written once to an owner-only file under build/ and loaded on
        each machine that lacks that set, one machine after another. Measured on a 2-core
        host with the Moodle and web images (1.3 GB): `docker save | ssh docker load` took
        106-126 s per machine; saving once took 22 s and loading from the file 55 s per
        machine; two machines loading at once took as long as loading both in turn."""
        click.secho("==> Ship images to the machines that lack them", bold=True)
        sets: dict[tuple[str, ...], list[Machine]] = {}
        for machine in self.site.hosts.machines:
            missing = tuple(self._images_missing(machine, images))
            if missing:
                sets.setdefault(missing, []).append(machine)
        if not sets:
            return
        self.site.build_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="images-", dir=self.site.build_dir) as folder:
            for number, (missing, machines) in enumerate(sets.items()):
                archive = Path(folder) / f"images-{number}.tar"
                needed = sum(self.builder.image_size(image) for image in missing)
                streamed = shutil.disk_usage(folder).free < needed + DISK_MARGIN
                if streamed:
                    click.echo(f"    {needed / 2**30:.1f} GB of images and too little free space in "
                               f"{self.site.build_dir}: streaming to each machine instead")
                else:
                    started = time.monotonic()
                    to_file(["docker", "save", *missing], archive)
                    click.echo(f"    {', '.join(missing)}: saved once, {archive.stat().st_size / 2**30:.1f} GB "
                               f"({time.monotonic() - started:.0f} s)")
                for machine in machines:
                    started = time.monotonic()
                    load = [*self.ssh(machine), "docker", "load", "-q"]
                    if streamed:
                        pipe(["docker", "save", *missing], load)
                    else:
                        feed_file(load, archive)
                    click.echo(f"    {', '.join(missing)} -> {machine.name} ({time.monotonic() - started:.0f} s)")
                archive.unlink(missing_ok=True)

    def _images_missing(self, machine: Machine, images: ImageSet) -> list[str]:
        """The images this machine needs and has under no name (one it has under another
        name is tagged here)."""
        engine = self.engines()[machine.name]
        missing = []
        for image in self.images_needed(machine, images):
            if engine.image_exists(image):
                continue
            if engine.tag(self.builder.image_id(image), image):
                click.echo(f"    {image} -> {machine.name}: same image already there, tagged")
                continue
            missing.append(image)
        return missing

    # --- what hosts does not do (yet) ----------------------------------------------------------------
    refusals = {
        "backup": "dump PostgreSQL on the db machine (pg_dump -Fc) and snapshot the shared moodledata with your "
                  "storage's tools",
        "restore": "restore the database dump on the db machine with pg_restore, and moodledata from your storage's "
                   "snapshot",
    }

    def check_scale(self, *, web: int | None, workers: int | None) -> None:
        if web is not None:
            raise Unsupported("on target hosts each machine with role web runs one replica: add or remove machines "
                              "in site.yaml (hosts.machines), then `kit up`")
        super().check_scale(web=web, workers=workers)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
