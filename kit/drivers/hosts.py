"""The `hosts` target: several machines, each with its own Docker engine, reached over SSH.

The rollout itself is the same playbook as `local` (one play per role group, web machines
one at a time); this module adds what differs: where a container lives, running a docker
command there, and shipping the images the kit built here to the machines that need them
(`docker save | ssh docker load`, only when a machine lacks the tag).
"""
from __future__ import annotations

import shlex
import subprocess
import time
from typing import Sequence

import click

from kit.config import Machine, Site
from kit.errors import CommandFailed, KitError
from kit.images import ImageSet
from kit.runner import capture, show

# Which of the kit's images each role runs.
IMAGES_FOR_ROLE = {"edge": ("edge",), "db": ("postgres",), "redis": ("redis",), "cron": ("moodle",),
                   "worker": ("moodle",), "web": ("moodle", "web")}


def ssh_argv(site: Site, machine: Machine) -> list[str]:
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    if site.hosts.ssh_config:
        cmd += ["-F", str(site.site_dir / site.hosts.ssh_config)]
    return cmd + [f"{site.hosts.ssh_user}@{machine.address}"]


def machine_of(site: Site, container: str) -> Machine:
    """The machine that runs one of the site's containers (by its kit name)."""
    from kit.render import topology_for
    from kit.sizing import plan

    role = container.removeprefix(f"{site.prefix}-").removesuffix("-nginx")
    topo = topology_for(site, plan(site))
    full = f"{site.prefix}-{role}"
    if full in topo.replicas:
        host = topo.replicas[full]["host"]
    elif full in topo.workers:
        host = topo.workers[full]
    elif role in ("db", "redis", "edge", "cron"):
        host = topo.hosts_for[role][0]
    elif role == "oneoff":
        host = topo.hosts_for["cron"][0]
    else:
        raise KitError(f"{container}: not a container of site {site.name!r}")
    return next(m for m in site.hosts.machines if m.name == host)


def on_host(site: Site, container: str, argv: Sequence[str]) -> list[str]:
    """argv to run where `container` lives: as is on `local`, through SSH on `hosts`."""
    if site.target != "hosts":
        return [str(a) for a in argv]
    return [*ssh_argv(site, machine_of(site, container)), "--", shlex.join(str(a) for a in argv)]


def check_machines(site: Site) -> list[tuple[str, bool, str]]:
    """(machine, ok, message): SSH answers and a Docker engine runs there."""
    rows = []
    for machine in site.hosts.machines:
        result = capture([*ssh_argv(site, machine), "docker", "info", "--format", "'{{.ServerVersion}}'"],
                         check=False, timeout=30)
        if result.returncode == 255:
            last = (result.stderr.strip().splitlines() or ["no answer"])[-1]
            rows.append((machine.name, False, f"ssh {site.hosts.ssh_user}@{machine.address} failed: {last}"))
        elif result.returncode != 0:
            rows.append((machine.name, False, f"{machine.address}: no Docker engine answers "
                                              "(install docker.io there, or rerun `kit up --yes`)"))
        else:
            rows.append((machine.name, True, f"{machine.address}: ssh ok, Docker {result.stdout.strip()}"))
    return rows


def images_needed(machine: Machine, images: ImageSet) -> list[str]:
    wanted = images.as_dict()
    keys = sorted({key for role in machine.roles for key in IMAGES_FOR_ROLE[role]})
    return [wanted[key] for key in keys]


def ship_images(site: Site, images: ImageSet) -> dict[str, float]:
    """Copy the images each machine needs and lacks; returns seconds per shipped image."""
    shipped: dict[str, float] = {}
    for machine in site.hosts.machines:
        ssh = ssh_argv(site, machine)
        for image in images_needed(machine, images):
            if capture([*ssh, "docker", "image", "inspect", image], check=False, timeout=30).returncode == 0:
                continue
            started = time.monotonic()
            image_id = capture(["docker", "image", "inspect", "--format", "{{.Id}}", image]).stdout.strip()
            if capture([*ssh, "docker", "tag", image_id, image], check=False, timeout=30).returncode == 0:
                click.echo(f"    {image} -> {machine.name}: same image already there, tagged")
                continue
            click.secho(f"$ docker save {image} | {show(ssh)} docker load", fg="cyan", err=True)
            save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
            load = subprocess.run([*ssh, "docker", "load", "-q"], stdin=save.stdout, capture_output=True, text=True)
            assert save.stdout is not None
            save.stdout.close()
            if save.wait() != 0 or load.returncode != 0:
                last = (load.stderr.strip().splitlines() or ["no output"])[-1]
                raise CommandFailed(f"shipping {image} to {machine.name} failed: {last}")
            shipped[f"{image} -> {machine.name}"] = round(time.monotonic() - started, 1)
            click.echo(f"    {image} -> {machine.name} in {shipped[f'{image} -> {machine.name}']:.0f}s")
    return shipped


def containers(site: Site) -> list[dict]:
    """The site's containers on every machine it uses (local: this host's engine)."""
    from kit import docker

    if site.target != "hosts":
        return docker.site_containers(site.name)
    rows: list[dict] = []
    for machine in site.hosts.machines:
        def via(argv: list[str], machine: Machine = machine) -> list[str]:
            return [*ssh_argv(site, machine), "--", shlex.join(argv)]

        rows += [{**c, "machine": machine.name} for c in docker.site_containers(site.name, via=via)]
    return rows


def psql(site: Site, sql: str, timeout: float = 30) -> str:
    """One query as the database superuser, wherever the db container runs."""
    from kit import docker

    db = f"{site.prefix}-db"
    return docker.psql(db, sql, timeout=timeout, via=lambda argv: on_host(site, db, argv))
