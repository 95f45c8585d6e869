"""One interface, three targets: `local` (this host's Docker engine), `hosts` (machines over
SSH, each with Docker) and `k8s` (Helm on a cluster).

The CLI asks `target_for(site)` and calls the same methods whatever the target; it never
branches on it. A command a target cannot do refuses in one line (`Unsupported`) saying
what to use instead, before anything changes.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kit.config import Site
from kit.errors import KitError, Unsupported

if TYPE_CHECKING:
    from kit.db import Database, Queue
    from kit.doctor import Check
    from kit.identity import Found
    from kit.monitoring import Monitor
    from kit.sizing import Tuning


@dataclass
class Status:
    """What `kit status` shows, on every target."""

    url: str
    ready: bool
    reason: str
    http: str = ""
    containers: list[dict[str, Any]] = field(default_factory=list)
    queue: dict[str, int] = field(default_factory=dict)
    moodle_release: str = ""
    details: dict[str, Any] = field(default_factory=dict)   # target-specific (pods, autoscalers...)
    lines: list[tuple[str, str | None]] = field(default_factory=list)   # how the target prints itself

    def as_dict(self) -> dict[str, Any]:
        data = {"url": self.url, "ready": self.ready, "reason": self.reason, "http": self.http,
                "containers": self.containers, "queue": self.queue, "moodle_release": self.moodle_release}
        data.update(self.details)
        return data


class Target:
    """The operations every target offers. The defaults refuse: a target overrides what it can do."""

    name = "?"
    #: Commands this target cannot do -> what to use instead (refused before anything runs).
    refusals: dict[str, str] = {}

    def __init__(self, site: Site) -> None:
        self.site = site
        self.monitoring_figures: dict[str, float | None] = {}

    @cached_property
    def tuning(self) -> Tuning:
        """Every derived number for this site (kit.sizing), as the target applies it."""
        from kit import sizing

        return sizing.plan(self.site)

    def _no(self, command: str, instead: str) -> Unsupported:
        return Unsupported(f"`kit {command}` is not available on target {self.name}: {instead}")

    def refuse_early(self, command: str) -> None:
        """Refuse a command this target cannot do, before it connects anywhere."""
        if command in self.refusals:
            raise self._no(command, self.refusals[command])

    def scaled_site(self, *, web: int | None, workers: int | None) -> Site:
        """The site with new counts, validated as site.yaml would be (nothing written yet)."""
        from kit.config import parse_site

        update = {k: v for k, v in (("web_replicas", web), ("workers", workers)) if v is not None}
        data = self.site.model_dump(mode="json", exclude={"site_dir"}, exclude_none=True)
        data["scale"] = {**self.site.scale.model_dump(exclude_none=True), **update}
        return parse_site(data, site_dir=self.site.site_dir, source="kit scale")

    def check_scale(self, *, web: int | None, workers: int | None) -> None:
        """Refuse counts this target cannot apply (before anything runs)."""
        self.scaled_site(web=web, workers=workers)

    # --- ownership and checks -------------------------------------------------------------
    def found(self) -> list[Found]:
        """What exists under this site's name where the target runs it (for the ownership check)."""
        raise NotImplementedError

    def preflight(self) -> list[Check]:
        """The target's own checks before `kit up` (doctor shows the same)."""
        return []

    def runtime_checks(self) -> list[Check]:
        """A running site's pressure points, for `kit doctor`."""
        return []

    def name_in_use(self, *, port: bool = True) -> str | None:
        """Why `kit init` may not use this site's name (or, with port, its port) here."""
        return None

    def free_monitoring_ports(self) -> tuple[int, int] | None:
        """Prometheus and Alertmanager ports for a new site beside others on this machine
        (None where the target does not publish them here)."""
        return None

    def monitor_access_hint(self) -> str | None:
        """How to reach the monitoring ports from the admin machine, where they are elsewhere."""
        return None

    def docker_missing(self, yes: bool) -> None:
        """`kit up` where the Docker engine is missing (only Docker targets can install it)."""
        raise KitError("Docker is not reachable; nothing was changed")

    def render_notes(self) -> list[str]:
        """Write everything `kit up` would apply; lines saying what was written."""
        raise NotImplementedError

    def adopt(self) -> None:
        raise self._no("adopt", "run it from the folder that manages the site")

    # --- the site's life ------------------------------------------------------------------
    def up(self, *, yes: bool, skip_build: bool, dry_run: bool) -> None:
        raise NotImplementedError

    def down(self, *, destroy_data: bool) -> None:
        raise NotImplementedError

    def status(self) -> Status:
        raise NotImplementedError

    def upgrade(self, *, backup_now: bool) -> None:
        raise NotImplementedError

    def rollback_target(self) -> str:
        """What a rollback would go back to (asked before `rollback`)."""
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError

    def releases(self) -> list[dict[str, Any]]:
        raise self._no("releases", "see your platform's release history")

    def scale(self, *, web: int | None, workers: int | None) -> None:
        raise NotImplementedError

    def logs(self, service: str | None, *, since: str, tail: int) -> None:
        raise NotImplementedError

    def maintenance(self, *, on: bool, message: str | None) -> None:
        if message is not None:
            self.moodle_cli(["admin/cli/cfg.php", "--name=maintenance_message", f"--set={message}"])
        self.moodle_cli(["admin/cli/maintenance.php", "--enable" if on else "--disable"])

    def moodle_cli(self, args: list[str], *, stdin: bytes | None = None, check: bool = True,
                   quiet: bool = False) -> tuple[int, str]:
        """Run a Moodle CLI script (a path relative to Moodle's folder, or one of /opt/kit/)
        where Moodle runs, as www-data; (exit code, output)."""
        raise NotImplementedError

    def backup(self) -> Path:
        raise self._no("backup", "back up with your platform's tools")

    def restore(self, folder: Path) -> None:
        raise self._no("restore", "restore with your platform's tools")

    def verify_backup(self, folder: Path) -> dict[str, Any]:
        raise self._no("restore", "restore with your platform's tools")

    def rotate_secrets(self, *, db: bool, redis: bool) -> dict[str, str]:
        raise self._no("secrets rotate", "change the site's passwords with your platform's tools")

    def certs(self, *, renew: bool) -> None:
        """Show the certificate the edge serves (issuer, names, expiry, renewal); renew it."""
        raise self._no("certs", "the certificate is served by your platform")

    def reset_password(self, username: str, password: str) -> None:
        self.moodle_cli(["/opt/kit/set_password.php"], stdin=f"{username}\n{password}\n".encode())

    # --- what load tests and probes need -----------------------------------------------------
    def monitor_db(self) -> Database:
        """The read-only monitoring login to the site's database."""
        raise NotImplementedError

    def queue(self) -> Queue | None:
        from kit import db

        return db.queue(self.monitor_db())

    def local_url(self) -> str:
        """Where this machine reaches the site's edge (the public URL may point at a proxy)."""
        return self.site.url or ""

    def meter(self) -> Any:
        """A reader of what a load level costs (None where the containers run elsewhere)."""
        return None

    @contextmanager
    def monitor(self) -> Iterator[Monitor]:
        """The site's Prometheus and Alertmanager, reachable from here for the command's length."""
        raise self._no("alerts", "the chart renders a PrometheusRule for your cluster's Prometheus "
                                 "(kubernetes.monitoring: true); read the alerts there")
        yield  # pragma: no cover

    def monitoring_status(self) -> list[tuple[str, str | None]]:
        """`kit status`'s lines from Prometheus (req/s, p95, 5xx, DB connections, queue, cron,
        alerts); a line saying why where it cannot be read. Nothing where monitoring is off."""
        if not self.site.monitoring.enabled:
            return [("  monitor  off (monitoring.enabled: false)", None)]
        from kit.monitoring import status_lines

        try:
            with self.monitor() as monitor:
                figures = monitor.figures()
        except Unsupported:
            return []
        except KitError as exc:
            return [(f"  monitor  {exc}", "yellow")]
        self.monitoring_figures = figures
        return status_lines(figures, self.site)


def target_for(site: Site) -> Target:
    """The target a site runs on."""
    if site.target == "hosts":
        from kit.targets.hosts import HostsTarget

        return HostsTarget(site)
    if site.target == "k8s":
        from kit.targets.k8s import K8sTarget

        return K8sTarget(site)
    from kit.targets.local import LocalTarget

    return LocalTarget(site)
