"""The `local` target: this host's Docker engine, driven by Ansible (connection local).
The emergency single-VM rollout, and every end-to-end test here."""
from __future__ import annotations

import errno
import socket
import sys
from functools import cached_property
from pathlib import Path
from typing import Any

import click

from kit import backup, db, health, identity, policy
from kit.config import load_secrets
from kit.doctor import Check, check_docker, check_memory, is_debian_like
from kit.engine import Engine
from kit.errors import KitError
from kit.identity import Owner
from kit.images import ImageSet
from kit.render import render
from kit.targets import certs
from kit.targets.docker import DockerTarget

CONFIG_ROOT = Path("/etc/kit")


class LocalTarget(DockerTarget):
    name = "local"

    @cached_property
    def engine(self) -> Engine:
        return Engine.local()

    def engines(self) -> dict[str, Engine]:
        return {"": self.engine}

    def engine_for(self, container: str) -> Engine:
        return self.engine

    @cached_property
    def builder(self) -> Engine:
        return self.engine

    def owner_record(self) -> Owner | None:
        path = CONFIG_ROOT / self.site.name / identity.OWNER_FILE
        try:
            return Owner.from_json(path.read_text())
        except OSError:
            return None

    def db_endpoint(self) -> db.Endpoint:
        if self.site.database.external:
            parts = self.site.database.external_parts()
            return db.Endpoint(host=str(parts["host"]), port=int(parts["port"]), dbname=str(parts["dbname"]),
                               sslmode=str(parts["sslmode"]))
        published = self.engine.published_port(self.names.db, 5432)
        if published is None:
            raise KitError(f"PostgreSQL ({self.names.db}) is not running: `kit up` starts it (see `kit status`)")
        return db.Endpoint(host=published[0], port=published[1])

    def local_url(self) -> str:
        return health.local_base_url(self.site)

    def meter(self) -> Any:
        from kit.loadtest.resources import SiteMeter

        return SiteMeter(self)

    # --- preflight --------------------------------------------------------------------------
    def port_check(self, *, monitoring: bool = True) -> Check:
        """The edge's (and monitoring's) ports are free, or this site's own containers have them."""
        bind = self.site.http.bind
        m = self.site.monitoring
        # (address, port, the container of this site that would hold it, the setting that moves it)
        wanted = [(bind, self.site.http.port, self.names.edge, "http.port")]
        if self.site.tls.at_edge:
            wanted.append((bind, self.site.tls.port, self.names.edge, "tls.port"))
        if m.enabled and monitoring:
            wanted += [("127.0.0.1", m.prometheus_port, self.names.prometheus, "monitoring.prometheus_port"),
                       ("127.0.0.1", m.alertmanager_port, self.names.alertmanager, "monitoring.alertmanager_port")]
        busy = []
        for address, port, holder, setting in wanted:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((address, port))
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        return Check("port", False, f"cannot listen on {address}:{port} ({exc.strerror}): set "
                                                    f"{setting}")
                    busy.append((address, port, holder, setting))
        shown = ", ".join(f"{a}:{p}" for a, p, _, _ in wanted)
        if not busy:
            return Check("port", True, f"{shown} free")
        me = identity.load(self.site)
        mine = []
        for entry in busy:   # held by this site's own container: not in use by another
            held = self.engine.container(entry[2])
            if (held is not None and me is not None and held.state == "running"
                    and held.labels.get("kit.site") == self.site.name and held.site_id == me.id
                    and entry[1] in {int(b["HostPort"]) for bindings in (held.ports or {}).values()
                                     for b in (bindings or []) if b.get("HostPort")}):
                mine.append(entry)
        busy = [b for b in busy if b not in mine]
        if not busy:
            return Check("port", True, f"{shown} served by this site's own containers")
        address, port, _, setting = busy[0]
        return Check("port", False, f"port {address}:{port} is already in use by another program or site: free "
                                    f"it, or set {setting} in site.yaml")

    def name_in_use(self, *, port: bool = True) -> str | None:
        try:
            found = [f for f in self.found() if f.objects]
        except KitError:
            return None   # no Docker engine yet: nothing can be in use; `kit up` checks again
        if found:
            owner = found[0].owner
            where = f" (managed from {owner.where()})" if owner else ""
            return (f"site name {self.site.name!r} is already in use on this host{where}: {found[0].objects[0]} "
                    "exists; choose another with --name")
        if port and not (busy := self.port_check(monitoring=False)).ok:
            return f"{busy.message.split(': ')[0]}: choose another with --port"
        return None

    def preflight(self) -> list[Check]:
        docker = check_docker()
        checks = [check_memory(self.site, self.tuning), docker]
        if docker.ok:
            checks.append(self.port_check())
        return checks + certs.check(self.site) + self.external_db_check()

    def free_monitoring_ports(self) -> tuple[int, int] | None:
        from kit.monitoring import free_ports

        return free_ports()

    def docker_missing(self, yes: bool) -> None:
        """`kit up` on a host without Docker: install Debian's docker.io, with consent."""
        docker = check_docker()
        if docker.ok:
            return
        if not is_debian_like():
            raise KitError(docker.message)
        if not yes and not sys.stdin.isatty():
            raise KitError(f"{docker.message}; nothing was changed")
        if not yes and not click.confirm("Install Debian's docker.io and start it now?", default=False):
            raise KitError("Docker is required: rerun with --yes to install it, or install Docker yourself")
        render(self.site, self.tuning, ImageSet.placeholder())
        self.ansible("docker.yml", extra={"docker_engine_install": True})

    # --- backups ------------------------------------------------------------------------------
    def backup(self) -> Path:
        return backup.backup(self)

    def verify_backup(self, folder: Path) -> dict[str, Any]:
        return backup.verify(folder)

    def restore(self, folder: Path) -> None:
        backup.restore(self, folder)
        self.ensure_monitoring()
        self.require_ready("restored")

    def recent_backup(self, backup_now: bool) -> str:
        if backup_now:
            return str(backup.backup(self))
        found = backup.latest(self.site)
        if found is None:
            raise policy.backup_missing("none exists", "run `kit backup` or pass --backup-now")
        if not policy.backup_is_recent(found[1]):
            raise policy.backup_missing(f"the newest is from {found[1]:%Y-%m-%d %H:%M}",
                                        "run `kit backup` or pass --backup-now")
        return str(found[0])

    def restore_hint(self) -> str:
        newest = backup.latest(self.site)
        return f"`kit restore {newest[0]}`" if newest else "`kit restore BACKUP` with the backup taken before it"

    def reset_password(self, username: str, password: str) -> None:
        load_secrets(self.site)
        super().reset_password(username, password)
