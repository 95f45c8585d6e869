"""What `local` and `hosts` share: the same images and containers, driven by the same
playbooks, read through the Docker SDK and psycopg. A subclass says where the engines
are (this host, or each machine through SSH) and how images reach them.

Rollouts keep a release history: the same Moodle version rolls replicas one at a time,
each gated on a real health check, and a failure applies the previous release again;
a new Moodle version runs Moodle's upgrade once, in maintenance mode.
"""
from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import click

from kit import db, health, identity, policy, releases, security
from kit import images as kit_images
from kit.config import dump_site, load_secrets, save_secrets
from kit.doctor import Check
from kit.engine import Container, Engine
from kit.errors import KitError, OperationFailed, UsageError
from kit.identity import Found, Owner
from kit.images import ImageSet
from kit.monitoring import Monitor
from kit.render import Names, names_for, render
from kit.targets import Status, Target, certs
from kit.targets.ansible import playbook

NOT_RUNTIME = ("install", "oneoff")


def parse_since(text: str) -> int:
    """'30m', '2h', '45s', '1d' -> seconds."""
    match = re.fullmatch(r"([0-9]+)([smhd])", text, flags=re.ASCII)
    if not match:
        raise UsageError(f"--since {text!r}: use a number and a unit, e.g. 30s, 10m, 2h, 1d")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


class DockerTarget(Target):
    """local and hosts: Docker engines driven by Ansible."""

    # --- where things are (subclasses) ------------------------------------------------------
    def engines(self) -> dict[str, Engine]:
        """machine name ("" on local) -> its engine."""
        raise NotImplementedError

    def engine_for(self, container: str) -> Engine:
        raise NotImplementedError

    def db_endpoint(self) -> db.Endpoint:
        raise NotImplementedError

    def ship_images(self, images: ImageSet) -> None:
        """Make the images available where the containers run (local: already here)."""

    def owner_record(self) -> Owner | None:
        """The folder the running site records as its manager (/etc/kit/<site>/owner.json)."""
        raise NotImplementedError

    # --- shared state -------------------------------------------------------------------------
    @property
    def names(self) -> Names:
        return names_for(self.site, self.tuning)

    @cached_property
    def builder(self) -> Engine:
        """This host's engine: images are built here, for every target."""
        return Engine.local()

    def owner(self) -> dict[str, str]:
        me = identity.load(self.site)
        if me is None:
            raise KitError(f"this folder has no identity for site {self.site.name!r} yet: run `kit up` first")
        return {"site_id": me.id, "folder": str(self.site.site_dir), "host": Owner.of(self.site, me).host}

    def ansible(self, name: str, **kwargs: Any) -> dict[str, int]:
        return playbook(self.site, name, owner=self.owner(), **kwargs)

    def containers(self) -> list[Container]:
        rows: list[Container] = []
        for engine in self.engines().values():
            rows += engine.containers(self.site.name)
        return rows

    def found(self) -> list[Found]:
        result = []
        record = None
        for machine, engine in self.engines().items():
            objects, ids = [], set()
            for c in engine.containers(self.site.name, claims=self.names.claims):
                objects.append(f"container {c.name}")
                ids.add(c.site_id if c.labels.get("kit.site") == self.site.name else "")
            for kind, name, labels in engine.labelled(self.site.name) + engine.named(self.names.claims):
                if f"{kind} {name}" not in objects:
                    objects.append(f"{kind} {name}")
                    ids.add(labels.get("kit.site-id", "") if labels.get("kit.site") == self.site.name else "")
            if objects and record is None:
                record = self.owner_record()
            result.append(Found(where=f"machine {machine}" if machine else "this host", objects=objects,
                                site_ids=ids, owner=record))
        return result

    # --- databases ----------------------------------------------------------------------------
    def _login(self, role: db.Role) -> db.Login:
        secrets = load_secrets(self.site)
        if role == "monitor":
            return db.Login(self.site.database.monitor_user, secrets["monitor_password"])
        if role == "admin":
            return db.Login("postgres", secrets["db_admin_password"])
        user = secrets.get("db_user", db.OWNER_ROLE)
        if self.site.database.external:
            user = str(self.site.database.external_parts()["user"])
        return db.Login(user, secrets["db_password"])

    def database(self, role: db.Role) -> db.Database:
        return db.Database(self.db_endpoint(), self._login(role), role)

    def monitor_db(self) -> db.Database:
        return self.database("monitor")

    def ensure_monitoring(self) -> None:
        """The monitoring role and the kit's read functions (idempotent, after each rollout)."""
        endpoint = self.db_endpoint()
        monitor = self._login("monitor")
        if self.site.database.external:
            owner = self.database("owner")
            db.ensure_monitor_role(owner, endpoint, monitor)
            db.ensure_functions(owner, monitor.user)
            return
        admin = self.database("admin")
        db.ensure_monitor_role(admin, endpoint, monitor)
        db.ensure_functions(admin, monitor.user, as_role=db.OWNER_ROLE)

    # --- checks -------------------------------------------------------------------------------
    def external_db_check(self) -> list[Check]:
        """An external database must accept Moodle's login before anything is rolled out."""
        if not self.site.database.external:
            return []
        try:
            conn = self.database("owner")
            with conn.connect() as c:
                version = c.info.parameter_status("server_version") or "?"
        except KitError as exc:
            return [Check("database", False, str(exc))]
        return [Check("database", True, f"external PostgreSQL {version} at {conn.endpoint.label} "
                                        f"accepts {conn.login.user}")]

    def runtime_checks(self) -> list[Check]:
        containers = [c for c in self.containers() if c.role not in NOT_RUNTIME]
        if not containers:
            return []
        served = certs.EdgeCertificates(self).runtime_check()
        bad = [f"{c.name} {c.state}/{c.health}" for c in containers
               if c.state != "running" or c.health not in ("healthy", "none")]
        checks = [Check("replicas", not bad, "all containers running and healthy" if not bad
                        else "not healthy: " + ", ".join(bad) + " (see `kit logs`, then `kit up`)")]
        m = self.site.monitoring
        connections_warn, queue_age_warn_s = m.db_connections_percent / 100, m.queue_age_minutes * 60
        try:
            figures = db.connections(self.monitor_db())
            ratio = figures.used / figures.limit
            checks.append(Check("db-conn", ratio < connections_warn,
                                f"{figures.used} of {figures.limit} connections in use ({ratio:.0%})"
                                + ("" if ratio < connections_warn else ": see runbooks/db-connections.md")))
            checks.append(Check("db-size", True, f"database is {figures.size_mb} MB"))
            queue = db.queue(self.monitor_db())
        except KitError as exc:
            checks.append(Check("db-conn", False, f"cannot query PostgreSQL: {exc}"))
            return checks
        if queue:
            ok = queue.oldest_age_s <= queue_age_warn_s and queue.failing == 0
            checks.append(Check("queue", ok, f"{queue.queued} adhoc tasks queued ({queue.due} due), "
                                             f"oldest overdue {queue.oldest_age_s}s (the alert fires after "
                                             f"{queue_age_warn_s}s), {queue.failing_text()}"
                                + ("" if ok else ": see runbooks/queue-backlog.md")))
        return checks + ([served] if served else []) + self.monitoring_checks() + [self.security_check()]

    def monitoring_checks(self) -> list[Check]:
        """The monitoring stack answers, every scrape target is up, and its disk (counted
        against monitoring.retention_mb)."""
        m = self.site.monitoring
        if not m.enabled:
            return [Check("monitor", True, "monitoring is off (monitoring.enabled: false): nobody is told when "
                                           "the site breaks")]
        try:
            with self.monitor() as monitor:
                down = monitor.targets_down()
                used = monitor.query("sum(prometheus_tsdb_storage_blocks_bytes) + sum(prometheus_tsdb_wal_storage_size_bytes)"
                                     " + sum(prometheus_tsdb_head_chunks_storage_size_bytes)")
                firing = monitor.query('count(ALERTS{alertstate="firing"}) or vector(0)') or 0
        except KitError as exc:
            return [Check("monitor", False, f"{exc}")]
        disk = f"metrics use {(used or 0) / 1e6:.0f} MB of at most {m.retention_mb} MB ({m.retention_days} days)"
        if down:
            return [Check("monitor", False, "scrape targets not answering: " + ", ".join(down) + f"; {disk}")]
        return [Check("monitor", True, f"every exporter answers, {firing:.0f} alerts firing (`kit alerts`); {disk}")]

    def security_check(self) -> Check:
        """Moodle's own security checks (kit/security.py): FAIL on an error or a critical finding."""
        code, out = self.moodle_cli(["--"], stdin=security.script(), check=False, quiet=True)
        try:
            found = security.findings(self.site, self.local_url(), out)
        except ValueError as exc:
            return Check("security", False, f"Moodle's security checks did not run (php exited {code}): {exc}")
        return security.verdict(found)

    # --- monitoring -------------------------------------------------------------------------------
    def monitoring_base(self) -> tuple[str, str]:
        """Prometheus's and Alertmanager's URLs as this machine reaches them (127.0.0.1 only)."""
        m = self.site.monitoring
        return f"http://127.0.0.1:{m.prometheus_port}", f"http://127.0.0.1:{m.alertmanager_port}"

    @contextmanager
    def monitor(self) -> Iterator[Monitor]:
        if not self.site.monitoring.enabled:
            raise KitError("monitoring is off for this site (monitoring.enabled: false in site.yaml); "
                           "turn it on and run `kit up`")
        prometheus, alertmanager = self.monitoring_base()
        yield Monitor(prometheus, alertmanager)

    # --- status ---------------------------------------------------------------------------------
    def status(self) -> Status:
        containers = self.containers()
        http_ok, http_msg = health.http_check(self.site, self.local_url())
        problems = []
        if not containers:
            problems.append("no containers: the site is not up (run `kit up`)")
        for c in containers:
            if c.role in NOT_RUNTIME:
                continue
            if c.state != "running":
                problems.append(f"{c.name} is {c.state}")
            elif c.health not in ("healthy", "none"):
                problems.append(f"{c.name} is {c.health}")
        if not http_ok:
            problems.append(http_msg)
        queue: dict[str, int] = {}
        release = ""
        if containers:
            try:
                monitor = self.monitor_db()
                found = db.queue(monitor)
                queue = found.as_dict() if found else {}
                release = db.moodle_setting(monitor, "release") or ""
            except KitError as exc:
                problems.append(f"database: {exc}")
        lines_tls: list[tuple[str, str | None]] = []
        if containers and self.site.tls.at_edge:
            try:
                cert = certs.EdgeCertificates(self).served()
                lines_tls = [(f"  tls      {cert.issuer}, for {', '.join(cert.names)}, expires "
                              f"{cert.not_after:%Y-%m-%d} ({cert.days_left():.0f} days)", None)]
            except KitError as exc:
                lines_tls = [(f"  tls      {exc}", "red")]
        ready = not problems
        rows = [c.as_dict() for c in containers]
        lines: list[tuple[str, str | None]] = [(f"  {c['role']:9} {c['name']:28} {c['state']:8} {c['health']:9} {c['image']}"
                  + (f"  on {c['machine']}" if "machine" in c else ""), None) for c in rows]
        lines_monitor = self.monitoring_status() if containers else []
        return Status(url=self.site.url or "", ready=ready, reason="serving" if ready else "; ".join(problems),
                      http=http_msg, containers=rows, queue=queue, moodle_release=release,
                      details={"monitoring": self.monitoring_figures} if self.monitoring_figures else {},
                      lines=lines_tls + lines_monitor + lines)

    def wait_ready(self, timeout_s: float = 180, interval_s: float = 2) -> tuple[bool, str]:
        """Until the site is what `kit status` calls ready: every container running and healthy
        and the real HTTP check passing (after a rollout or a restore, caches warm on first hit)."""
        deadline = time.monotonic() + timeout_s
        msg = ""
        while time.monotonic() < deadline:
            current = self.status()
            if current.ready:
                return True, current.http
            msg = current.reason
            time.sleep(interval_s)
        return False, msg

    def require_ready(self, what: str) -> str:
        ready, msg = self.wait_ready()
        if not ready:
            raise OperationFailed(f"{what}, but the site is not healthy: {msg} (see `kit status`)")
        return msg

    # --- Moodle commands -------------------------------------------------------------------------
    def php(self, container: str, args: list[str], *, stdin: bytes | None = None, check: bool = True,
            quiet: bool = False) -> tuple[int, str]:
        """php ARGS as www-data in one of the site's containers; (exit code, stdout)."""
        if not quiet:
            click.secho(f"$ php {' '.join(args)}   (in {container})", fg="cyan", err=True)
        code, out, err = self.engine_for(container).exec(container, ["php", *args], stdin=stdin, stream=not quiet)
        if check and code != 0:
            last = ((err or out).strip().splitlines() or ["no output"])[-1]
            raise OperationFailed(f"php {' '.join(args)} in {container} exited {code}: {last[:300]}")
        return code, out

    def moodle_cli(self, args: list[str], *, stdin: bytes | None = None, check: bool = True,
                   quiet: bool = False) -> tuple[int, str]:
        return self.php(self.names.web[0], args, stdin=stdin, check=check, quiet=quiet)

    def render_notes(self) -> list[str]:
        out = self.render()
        return [f"rendered {out}", *(f"  {item.name}" for item in sorted(out.iterdir()))]

    def logs(self, service: str | None, *, since: str, tail: int) -> None:
        start = int(time.time()) - parse_since(since)
        for c in self.containers():
            if c.role in NOT_RUNTIME or (service and c.role != service):
                continue
            where = f" on {c.machine}" if c.machine else ""
            click.secho(f"==> {c.name} ({c.role}){where}", bold=True)
            for chunk in self.engine_for(c.name).logs(c.name, since=start, tail=tail):
                sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()

    # --- rollouts ---------------------------------------------------------------------------------
    def image_moodle_version(self, image: str) -> tuple[str, str]:
        """Moodle's $version and $release from the code inside an image."""
        text = self.builder.read_from_image(image, "/var/www/moodle/version.php")
        version = re.search(r"\$version\s*=\s*([0-9.]+)", text)
        rel = re.search(r"\$release\s*=\s*'([^']+)'", text)
        return (version.group(1) if version else "0"), (rel.group(1) if rel else "?")

    def image_plugin_versions(self, image: str) -> dict[str, str]:
        """The versions of the kit's own Moodle plugins in an image."""
        found = {}
        for plugin, folder in kit_images.KIT_PLUGINS.items():
            text = self.builder.read_from_image(image, f"/var/www/moodle/{folder}/version.php")
            version = re.search(r"\$plugin->version\s*=\s*([0-9]+)", text)
            found[plugin] = version.group(1) if version else "0"
        return found

    def plugins_to_upgrade(self, image: str) -> list[str]:
        """The kit's plugins the image carries newer than the database has (Moodle's upgrade
        installs them, as it does a new Moodle version)."""
        installed = db.kit_plugin_versions(self.monitor_db())
        return [f"{plugin} {installed.get(plugin, 'none')} -> {version}"
                for plugin, version in self.image_plugin_versions(image).items()
                if int(version) > int(installed.get(plugin, "0"))]

    def running_images(self) -> ImageSet:
        """The images the site runs now (its last good release), so that scaling or rotating
        secrets never changes the release: an `--image-tag` upgrade is not in site.yaml."""
        current = releases.current(self.site)
        return ImageSet(**current.images) if current is not None else kit_images.image_set(self.site)

    def render(self, images: ImageSet | None = None) -> Path:
        return render(self.site, self.tuning, images or kit_images.image_set(self.site))

    def apply(self, *, build: bool = True, allow_moodle_upgrade: bool = False, auto_rollback: bool = True,
              images: ImageSet | None = None) -> tuple[releases.Release | None, dict[str, int]]:
        """Build, render and apply the site; record the release; roll back by itself on failure.
        `images` given: apply exactly those (built already)."""
        load_secrets(self.site)
        identity.ensure(self.site)
        started = time.monotonic()
        click.secho("==> Images", bold=True)
        if images is None:
            images = kit_images.build_all(self.site, self.builder) if build else kit_images.image_set(self.site)
        certs.stage(self.site)
        if self.tuning.network_tls:
            certs.stage_site_ca(self)     # before rendering: the servers' certificates count in their checksums
        click.secho("==> Render", bold=True)
        click.echo(f"    {self.render(images)}")
        version, release_name = self.image_moodle_version(images.moodle)
        if self.site.database.external:   # it runs already: its monitoring login is made before any change
            self.ensure_monitoring()
        self.ship_images(images)
        release = releases.start(self.site, images.as_dict(), version, release_name)
        click.secho(f"==> Roll out release {release.id} (Moodle {release_name})", bold=True)
        extra: dict[str, Any] = {"kit_allow_moodle_upgrade": allow_moodle_upgrade}
        before = releases.last_good(self.site, before=release.id)
        if before is not None and before.moodle_version == version:
            extra["kit_previous_images"] = before.images  # a replica failing its check gets these back at once
        try:
            totals = self.ansible("site.yml", extra=extra)
        except OperationFailed as exc:
            releases.finish(self.site, release, "failed", reason=str(exc),
                            duration_s=round(time.monotonic() - started, 1))
            if not auto_rollback or before is None or before.moodle_version != version:
                raise
            problem = releases.snapshot_problem(self.site, before.id)
            if problem:
                raise OperationFailed(f"{exc} -- not rolled back: {problem}; fix the cause and run `kit up` "
                                      "again") from None
            click.secho(f"==> Rolling back to release {before.id} ({exc})", fg="yellow", bold=True)
            self.ansible("site.yml", build_dir=releases.snapshot_dir(self.site, before.id))
            releases.finish(self.site, release, "rolled back", reason=str(exc),
                            duration_s=round(time.monotonic() - started, 1))
            raise OperationFailed(f"{exc} -- rolled back to release {before.id}; the site serves the previous "
                                  "release") from None
        if not self.site.database.external:
            try:
                self.ensure_monitoring()
            except KitError as exc:
                raise OperationFailed(f"rolled out, but the monitoring login could not be set up: {exc}") from None
        if certs.EdgeCertificates(self).issue():
            totals["changed"] += 1
        if totals["changed"] == 0 and before is not None:
            releases.discard(self.site, release)  # nothing happened: not a release
            return None, totals
        releases.finish(self.site, release, "ok", changed=totals["changed"],
                        duration_s=round(time.monotonic() - started, 1))
        return release, totals

    def dry_run(self) -> None:
        load_secrets(self.site)
        wanted = kit_images.image_set(self.site)
        missing = [tag for tag in wanted.as_dict().values() if tag != "-" and not self.builder.image_exists(tag)]
        out = self.render(wanted)
        click.echo(f"rendered {out} (read it to see every setting that would be applied)")
        if missing:
            click.echo("would build: " + ", ".join(missing))
            click.echo("containers using those images would be (re)created; run `kit images build` first "
                       "for a container-by-container dry run")
            return
        if identity.load(self.site) is None:
            click.secho("dry run: a new site would be created (nothing of it exists yet)", fg="yellow")
            return
        totals = self.ansible("site.yml", check=True, diff=True)
        if totals["changed"]:
            click.secho(f"dry run: {totals['changed']} changes would be applied (marked 'changed' above)",
                        fg="yellow")
        else:
            click.secho("dry run: no changes; the site matches site.yaml", fg="green")

    def up(self, *, yes: bool, skip_build: bool, dry_run: bool) -> None:
        if dry_run:
            self.dry_run()
            return
        started = time.monotonic()
        release, totals = self.apply(build=not skip_build)
        click.secho("==> Health", bold=True)
        click.echo(f"    {self.require_ready('rolled out')}")
        if totals["changed"] == 0:
            click.secho(f"No changes: the site already matched site.yaml ({time.monotonic() - started:.0f}s).",
                        fg="green")
        else:
            number = f" as release {release.id}" if release else ""
            policy.banner(self.site, f"Site is up ({totals['changed']} changes applied{number})",
                          time.monotonic() - started)
            return
        policy.banner(self.site, "Site is up", time.monotonic() - started)

    def down(self, *, destroy_data: bool) -> None:
        if not (self.site.build_dir / "vars.yml").exists():
            render(self.site, self.tuning, ImageSet.placeholder())
        self.ansible("down.yml", extra={"kit_destroy_data": destroy_data})

    def db_version(self) -> str:
        try:
            version = db.moodle_setting(self.monitor_db(), "version")
        except KitError:
            version = None
        if version is None:
            raise KitError("the site is not installed or not running: run `kit up` first")
        return version

    def upgrade(self, *, backup_now: bool) -> None:
        started = time.monotonic()
        db_version = self.db_version()
        images = kit_images.build_all(self.site, self.builder)
        new_version, new_release = self.image_moodle_version(images.moodle)
        kind = policy.upgrade_kind(db_version, new_version, restore_hint="restore a backup instead "
                                   "(`kit restore BACKUP`)")
        plugins: list[str] = []
        if kind == "same":
            self.ensure_monitoring()   # this kit's read functions (an older kit's lack kit_plugin_versions)
            plugins = self.plugins_to_upgrade(images.moodle)
        if kind == "same" and not plugins:
            release, totals = self.apply(images=images)
        else:
            release, totals = self.upgrade_database(images, db_version, new_version, new_release, backup_now,
                                                    plugins=plugins)
        self.require_ready("rolled out")
        if release is None:
            click.secho(f"No changes: the site already runs this release ({time.monotonic() - started:.0f}s).",
                        fg="green")
        else:
            policy.banner(self.site, f"Release {release.id} is live ({totals['changed']} changes)",
                          time.monotonic() - started)

    def recent_backup(self, backup_now: bool) -> str:
        raise policy.backup_missing("this target keeps no backups", "back up the database and moodledata "
                                    "yourself, then rerun with --backup-now to confirm")

    def upgrade_database(self, images: ImageSet, db_version: str, new_version: str, new_release: str,
                         backup_now: bool, plugins: list[str] | None = None,
                         ) -> tuple[releases.Release | None, dict[str, int]]:
        if plugins:
            click.secho(f"==> Moodle database upgrade for the kit's plugins: {', '.join(plugins)}", bold=True)
        else:
            click.secho(f"==> Moodle version upgrade: {db_version} -> {new_version} ({new_release})", bold=True)
        saved = self.recent_backup(backup_now)
        click.echo(f"    backup: {saved}")
        maintenance_started = time.monotonic()
        self.php(self.names.cron, ["admin/cli/cron.php", "--disable-wait=600"])
        self.moodle_cli(["admin/cli/maintenance.php", "--enable"])
        try:
            release, totals = self.apply(images=images, allow_moodle_upgrade=True, auto_rollback=False)
            self.moodle_cli(["admin/cli/purge_caches.php"])
        except KitError as exc:
            raise OperationFailed(f"Moodle upgrade failed: {exc} -- the site stays in maintenance mode; "
                                  f"restore with `kit restore {saved}`") from None
        self.moodle_cli(["admin/cli/maintenance.php", "--disable"])
        self.php(self.names.cron, ["admin/cli/cron.php", "--enable"])
        maintenance_s = round(time.monotonic() - maintenance_started, 1)
        if release is not None:
            releases.finish(self.site, release, "ok", maintenance_s=maintenance_s, extra={"from_version": db_version})
        click.secho(f"users saw the maintenance page for {maintenance_s:.0f}s", bold=True)
        return release, totals

    def releases(self) -> list[dict[str, Any]]:
        from dataclasses import asdict

        return [asdict(r) for r in releases.load(self.site)]

    def rollback_target(self) -> str:
        target = releases.previous_good(self.site)
        return f"release {target.id} ({target.started}, Moodle {target.moodle_release})"

    def restore_hint(self) -> str:
        return "`kit restore BACKUP` with the backup taken before it"

    def rollback(self) -> None:
        now = releases.current(self.site)
        target = releases.previous_good(self.site)
        if now is not None:
            policy.check_rollback(now.moodle_version, target.moodle_version, what=f"release {now.id}",
                                  restore_hint=self.restore_hint())
        problem = releases.snapshot_problem(self.site, target.id)
        if problem:
            raise KitError(f"{problem}: roll forward with `kit up` (or `kit upgrade --image-tag`) instead, or "
                           "`kit restore` a backup")
        click.secho(f"==> Rolling back from release {now.id if now else '?'} to release {target.id}", bold=True)
        started = time.monotonic()
        release = releases.start_from(self.site, target)
        try:
            self.ansible("site.yml", build_dir=releases.snapshot_dir(self.site, target.id))
        except KitError as exc:
            releases.finish(self.site, release, "failed", reason=str(exc))
            raise
        releases.finish(self.site, release, "ok", duration_s=round(time.monotonic() - started, 1),
                        extra={"rollback_to": target.id})
        self.require_ready("rolled back")
        click.secho(f"Rolled back: release {release.id} applies release {target.id}'s images and settings "
                    f"({release.duration_s:.0f}s). site.yaml still describes the newer release.", fg="green")

    def scale(self, *, web: int | None, workers: int | None) -> None:
        scaled = self.scaled_site(web=web, workers=workers)
        target = type(self)(scaled)
        images = self.running_images()
        (self.site.site_dir / "site.yaml").write_text(dump_site(scaled))
        click.echo(f"scaling {scaled.name}: web replicas {target.tuning.web_replicas}, "
                   f"workers {target.tuning.workers}")
        target.apply(images=images)
        msg = target.require_ready("scaled")
        click.secho(f"scaled: {target.tuning.web_replicas} web replicas, {target.tuning.workers} workers; {msg}",
                    fg="green")

    # --- secrets ------------------------------------------------------------------------------------
    def rotate_secrets(self, *, db: bool, redis: bool) -> dict[str, str]:
        from kit import rotation

        if db and self.site.database.external:
            raise UsageError("the external database's password is yours to rotate: change it there, then update "
                             "db_password in the secrets file; rotate Redis alone with --no-db")
        current = load_secrets(self.site)
        pending = any(k.endswith("_previous") for k in current)
        staged = rotation.plan_rotation(current, db=db, redis=redis)
        if staged != current:
            save_secrets(self.site, staged)
        elif pending:
            click.secho("==> Finishing the rotation an earlier run started", fg="yellow", bold=True)
        changed = {}
        admin = self.database("admin")
        if "db_password_previous" in staged:
            click.secho(f"==> PostgreSQL: new password on login role {staged['db_user']} "
                        f"(role {staged['db_user_previous']} still valid during the roll)", bold=True)
            rotation.check_login_role(staged["db_user"])
            from kit import db as kitdb

            kitdb.grant_login(admin, staged["db_user"], staged["db_password"])
            changed["database login"] = f"{staged['db_user_previous']} -> {staged['db_user']}"
        if "redis_password_previous" in staged:
            self.redis_accept(staged["redis_password"], staged["redis_password_previous"])
            changed["redis password"] = "new"
        click.secho("==> Rolling restart with the new credentials (Redis accepts both until it ends)", bold=True)
        self.apply(images=self.running_images())
        if "db_password_previous" in staged and staged["db_user_previous"] != staged["db_user"]:
            click.secho(f"==> PostgreSQL: login role {staged['db_user_previous']} loses its password", bold=True)
            from kit import db as kitdb

            kitdb.retire_login(admin, staged["db_user_previous"])
        final = {k: v for k, v in staged.items() if not k.endswith("_previous")}
        save_secrets(self.site, final)
        if "redis_password_previous" in staged:
            click.secho("==> Redis: only the new password is accepted from now on", bold=True)
            self.ansible("site.yml")
        self.require_ready("rotated")
        return changed

    def redis_accept(self, new: str, previous: str) -> None:
        """Redis accepts both passwords before any client is given the new one: Moodle reads
        its secret files on every request, and the rollout writes them before it reaches Redis."""
        import hashlib

        click.secho("==> Redis: the new password is accepted alongside the old one", bold=True)
        hashes = " ".join("#" + hashlib.sha256(p.encode()).hexdigest() for p in (new, previous))
        script = f"AUTH {previous}\nACL SETUSER default resetpass on {hashes}\n".encode()
        cli = ["redis-cli", *(["--tls", "--cacert", "/run/kit/tls/ca.crt"] if self.tuning.network_tls else [])]
        code, out, err = self.engine_for(self.names.redis).exec(self.names.redis, cli, user="", stdin=script)
        answers = [line.strip() for line in out.splitlines() if line.strip()]
        if code != 0 or answers[:2] != ["OK", "OK"]:
            raise OperationFailed(f"Redis did not take the new password ({(answers or [err.strip()])[-1][:120]}); "
                                  "clients still use the old one: run `kit secrets rotate` again")

    def certs(self, *, renew: bool) -> None:
        edge = certs.EdgeCertificates(self)
        if not self.site.tls.at_edge:
            raise UsageError(f"this site's edge ends no TLS (tls.mode {self.site.tls.mode or 'none'}): its certificate "
                             "is your proxy's")
        if renew:
            edge.renew()
        found, renewal = edge.report()
        click.secho(f"{self.site.name}: {self.site.url}", bold=True)
        certs.print_report(found, renewal)

    def adopt(self) -> None:
        """This folder becomes the site's manager: it takes the running site's id (so no
        object changes) and the site records this folder."""
        ids = {i for f in self.found() for i in f.site_ids if i}
        if not ids:
            raise KitError(f"no site {self.site.name!r} runs here with an identity to adopt: `kit up` claims a "
                           "new one")
        if len(ids) > 1:
            raise KitError(f"site {self.site.name!r} carries several identities ({', '.join(sorted(ids))}): "
                           "remove the stray objects first")
        if not db.can_log_in(self.db_endpoint(), self._login("owner")):
            raise KitError(f"{self.site.secrets_file} does not hold the running site's database password: adopt "
                           "with the secrets file of the folder that made the site (nothing was changed)")
        identity.save(self.site, identity.Identity(id=ids.pop(), created=time.strftime("%Y-%m-%dT%H:%M:%S%z")))
        if not (self.site.build_dir / "vars.yml").exists():
            render(self.site, self.tuning, ImageSet.placeholder())
        self.ansible("site.yml", tags="owner")
        click.secho(f"adopted: site {self.site.name!r} is now managed from {self.site.site_dir}", fg="green")
