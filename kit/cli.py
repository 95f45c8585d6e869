"""The `kit` command line: one site config in, a running Moodle out.

Every command loads the site, asks `target_for(site)` for its target and calls it; the
CLI never branches on the target. Commands that touch a running site first check that
this folder owns it (kit.identity).
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from kit import __version__, capacity, config, doctor, identity, images, sizing
from kit.db import queue_line
from kit.errors import EXIT_BUG, EXIT_FAILED, EXIT_USAGE, KitError, UsageError
from kit.targets import Target, target_for

F = TypeVar("F", bound=Callable[..., Any])

SITE_OPTION = click.option(
    "--site", "site_path", default=lambda: os.environ.get("KIT_SITE", config.DEFAULT_SITE_FILE),
    show_default="site.yaml or $KIT_SITE", type=click.Path(dir_okay=False),
    help="The site config file.")
COUNT = re.compile(r"(web|workers)=([0-9]{1,4})", flags=re.ASCII)


def _load(site_path: str) -> config.Site:
    return config.load_site(site_path)


def _target(site_path: str, command: str, *, owned: bool = True,
            before: Callable[[Target], None] | None = None) -> Target:
    """The site's target. A command it cannot do is refused first, then `before` (checks of
    the arguments); with `owned`, refuses unless this folder owns what runs under its name."""
    target = target_for(_load(site_path))
    target.refuse_early(command)
    if before is not None:
        before(target)
    if owned:
        identity.check(target.site, target.found(), command=command)
    return target


def _print_checks(checks: list[doctor.Check], *, fail_to_stderr: bool) -> bool:
    all_ok = True
    for check in checks:
        mark = (click.style("FAIL", fg="red") if not check.ok else
                click.style("warn", fg="yellow") if check.warn else click.style("ok  ", fg="green"))
        click.echo(f"  {mark} {check.name:8} {check.message}", err=fail_to_stderr and not check.ok)
        all_ok &= check.ok
    return all_ok


def _confirm(question: str, yes: bool) -> None:
    if not yes:
        click.confirm(question, abort=True, default=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="kit")
def cli() -> None:
    """Roll out a production-shaped Moodle in one command, and prove it holds a surge.

    \b
    Typical first rollout on this host:
      kit init --users 300 --moodle-source ~/moodle-src/4.5.6
      kit plan        # what will be tuned, and why
      kit doctor      # what `kit up` will check, checked now
      kit up          # build images, roll out, install Moodle, wait until healthy
      kit status      # what runs, is it healthy, queue depth

    \b
    Exit codes: 0 ok; 1 the operation failed (rolled back, SLO missed); 2 usage error;
    3 bad config or failed preflight (nothing was changed); 70 a bug in the kit.
    """


@cli.command()
@click.option("--users", type=click.IntRange(1, 1_000_000), default=300, show_default=True,
              help="Expected concurrent users at peak.")
@click.option("--moodle-source", default=None, help="Moodle folder, .tar.gz, or git URL (default: Moodle's git, v4.5.6).")
@click.option("--moodle-ref", default=None, help="Git ref when --moodle-source is a git URL.")
@click.option("--name", default="moodle", show_default=True, help="Site name: prefixes containers and volumes.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="HTTP port the edge proxy publishes.")
@click.option("--bind", default="0.0.0.0", show_default=True, help="Address to publish on (127.0.0.1: this host only).")
@click.option("--url", default=None, help="Public URL (Moodle's wwwroot). Default: http://<host>:<port>.")
@click.option("--base-image", default=None,
              help=f"Debian 12 base image (default {config.OFFICIAL_BASE_IMAGE}; offline: {images.OFFLINE_BASE_TAG}).")
@click.option("--target", type=click.Choice(["local", "hosts", "k8s"]), default="local", show_default=True)
@click.option("--database-external", "external_db", default=None, metavar="DSN",
              help="An external PostgreSQL (postgresql://USER@HOST:PORT/DB?sslmode=...), instead of the kit's own; "
                   "its password is read with --db-password-stdin.")
@click.option("--db-password-stdin", is_flag=True, help="Read the external database's password from stdin.")
@click.option("--tls", "tls_mode", type=click.Choice(["acme", "files", "self-signed", "proxy"]), default=None,
              help="Where HTTPS ends (an https --url needs one): acme (Let's Encrypt or --acme-directory), files "
                   "(--cert, --key), self-signed (a trial: browsers warn), proxy (a proxy of yours).")
@click.option("--acme-email", default=None, help="acme: the ACME account's e-mail.")
@click.option("--acme-directory", default=None, help="acme: ACME directory URL (default: Let's Encrypt).")
@click.option("--acme-ca-bundle", default=None, type=click.Path(dir_okay=False),
              help="acme: CA file of a private ACME directory's own HTTPS (e.g. a test CA).")
@click.option("--cert", "cert_file", default=None, type=click.Path(dir_okay=False),
              help="files: certificate chain (PEM, the site's first).")
@click.option("--key", "key_file", default=None, type=click.Path(dir_okay=False), help="files: its private key.")
@click.option("--https-port", type=click.IntRange(1, 65535), default=None,
              help="HTTPS port the edge publishes (default 443; not with --tls proxy).")
@click.option("--namespace", default=None, help="k8s: Kubernetes namespace (default: moodle).")
@click.option("--host", "k8s_host", default=None, help="k8s: Ingress host name; the URL becomes https://HOST.")
@click.option("--machine", "machines", multiple=True, metavar="NAME=ADDRESS:ROLE[,ROLE]",
              help="hosts: one machine and its roles (edge, db, redis, cron, web, worker); repeat per machine, "
                   "e.g. --machine app1=10.0.0.11:web,worker")
@click.option("--ssh-config", default=None, help="hosts: ssh_config file with the machines' keys (default: ssh's own).")
@click.option("--force", is_flag=True, help="Overwrite this folder's site.yaml (its secrets are kept).")
@SITE_OPTION
def init(users: int, moodle_source: str | None, moodle_ref: str | None, name: str, port: int, bind: str,
         url: str | None, base_image: str | None, target: str, external_db: str | None, db_password_stdin: bool,
         tls_mode: str | None, acme_email: str | None, acme_directory: str | None, acme_ca_bundle: str | None,
         cert_file: str | None, key_file: str | None, https_port: int | None, namespace: str | None,
         k8s_host: str | None, machines: tuple[str, ...], ssh_config: str | None, force: bool, site_path: str) -> None:
    """Write site.yaml and generate the site's secrets (owner-only) and identity.

    Refuses a site name already in use on this host: two folders never manage one site.
    """
    path = Path(site_path)
    if path.exists() and not force:
        raise KitError(f"{path} already exists: edit it, or pass --force to overwrite it")
    data: dict[str, Any] = {"name": name, "target": target, "users": users, "http": {"bind": bind, "port": port}}
    if url:
        data["url"] = url
    moodle: dict[str, str] = {}
    if moodle_source:
        expanded = os.path.expanduser(moodle_source)
        moodle["source"] = str(Path(expanded).resolve()) if os.path.exists(expanded) else moodle_source
    if moodle_ref:
        moodle["ref"] = moodle_ref
    if moodle:
        data["moodle"] = moodle
    if base_image:
        data["images"] = {"base": base_image}
    if external_db:
        data["database"] = {"external": external_db}
    tls = {"mode": tls_mode, "acme_email": acme_email, "acme_directory": acme_directory, "port": https_port,
           "acme_ca_bundle": _abs(acme_ca_bundle), "cert": _abs(cert_file), "key": _abs(key_file)}
    if any(v is not None for v in tls.values()):
        data["tls"] = {k: v for k, v in tls.items() if v is not None}
    if bool(external_db) != db_password_stdin:
        raise UsageError("--database-external and --db-password-stdin go together (the password never goes on "
                         "the command line)")
    if machines or ssh_config:
        data["hosts"] = {"machines": [_parse_machine(spec) for spec in machines]}
        if ssh_config:
            data["hosts"]["ssh_config"] = str(Path(os.path.expanduser(ssh_config)).resolve())
    if target == "k8s" or namespace or k8s_host:
        from kit.k8s.values import init_settings

        data = init_settings(data, namespace=namespace, host=k8s_host)
    site = config.parse_site(data, site_dir=path.resolve().parent, source="kit init")
    # A new site beside others on this machine gets monitoring ports of its own.
    ports = target_for(site).free_monitoring_ports() if identity.load(site) is None else None
    if ports and ports != (site.monitoring.prometheus_port, site.monitoring.alertmanager_port):
        data["monitoring"] = {"prometheus_port": ports[0], "alertmanager_port": ports[1]}
        site = config.parse_site(data, site_dir=path.resolve().parent, source="kit init")
    given: dict[str, str] = {}
    if db_password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            raise UsageError("--db-password-stdin: no password on stdin")
        given["db_password"] = password
    site_target = target_for(site)
    if identity.load(site) is None:
        _refuse_name_in_use(site_target)
    elif not site.secrets_file.exists() and site_target.name_in_use(port=False):
        raise KitError(f"site {site.name!r} exists and {site.secrets_file} is missing: new passwords would lock "
                       "its containers out of PostgreSQL and Redis; restore the file from a backup of this folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    config.create_secrets(site, given)
    identity.ensure(site)
    path.write_text(config.dump_site(site))
    click.echo(f"wrote {path} (site {site.name!r}, {site.users} users, {site.url})")
    click.echo(f"secrets in {site.secrets_file} (mode 0600)")
    click.echo("next: `kit plan` to review the tuning, `kit doctor` to check this host, then `kit up`")


def _abs(path: str | None) -> str | None:
    return str(Path(os.path.expanduser(path)).resolve()) if path else None


def _refuse_name_in_use(target: Target) -> None:
    """A new folder may not take a name (or a port) that a site on this host already uses."""
    problem = target.name_in_use()
    if problem:
        raise KitError(problem)


def _parse_machine(spec: str) -> dict[str, Any]:
    """NAME=ADDRESS:ROLE[,ROLE] -> a hosts.machines entry (validated with the site)."""
    name, sep, rest = spec.partition("=")
    address, sep2, roles = rest.rpartition(":")
    if not (sep and sep2 and name and address and roles):
        raise UsageError(f"--machine {spec!r}: use NAME=ADDRESS:ROLE[,ROLE], e.g. app1=10.0.0.11:web,worker")
    return {"name": name, "address": address, "roles": roles.split(",")}


@cli.command()
@click.option("--users", type=click.IntRange(1, 1_000_000), default=None,
              help="Plan for this many users instead of site.yaml's.")
@click.option("--from-report", "report", default=None, metavar="CAPACITY_JSON",
              help="Size from a measured `kit loadtest capacity` report (CPU per request, requests per user) "
                   "instead of rules of thumb.")
@click.option("--machine-cpus", type=click.IntRange(1, 512), default=None,
              help="With --from-report: cores of one hosts-target web machine (default 4, assumed).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@SITE_OPTION
def plan(users: int | None, report: str | None, machine_cpus: int | None, as_json: bool, site_path: str) -> None:
    """Print every derived number (replicas, php-fpm, PostgreSQL...) with its reason.

    \b
    With --from-report, size N users from what a load test measured:
      kit loadtest capacity --levels 10,20,30,40,50 --refine
      kit plan --users 5000 --from-report reports/<site>/<stamp>/capacity.json
    """
    site = _load(site_path) if Path(site_path).exists() or users is None else config.parse_site({}, site_dir=Path("."))
    if users is not None:
        site = site.model_copy(update={"users": users})
    if report:
        _plan_from_report(site, report, machine_cpus, as_json)
        return
    if machine_cpus is not None:
        raise UsageError("--machine-cpus: only with --from-report")
    tuning = sizing.plan(site)
    held = capacity.estimate(site, tuning)
    if as_json:
        click.echo(json.dumps({**tuning.as_dict(), "capacity": held.as_dict()}, indent=2, sort_keys=True))
        return
    click.echo(f"Plan for {site.users} concurrent users on {tuning.host.cpus} CPUs, {tuning.host.memory_mb} MB RAM")
    width = max(len(k) for k, _, _ in tuning.rows())
    for key, value, reason in tuning.rows():
        click.echo(f"  {key:<{width}}  {value:>8}  {click.style(reason, dim=True)}")
    _print_capacity(held)


def _print_capacity(held: capacity.Capacity) -> None:
    if held.short:
        click.secho(f"warning: capacity: {held.line()}", fg="yellow", err=True)
    else:
        click.echo(f"capacity: {held.line()}")


def _plan_from_report(site: config.Site, report: str, machine_cpus: int | None, as_json: bool) -> None:
    from kit import measured

    figures = measured.load_report(report)
    host = sizing.HostResources.for_site(site)
    result = measured.plan_for(figures, site.users, host.cpus, host.memory_mb,
                               machine_cpus or measured.HOSTS_MACHINE_CPUS)
    held = capacity.estimate(site, sizing.plan(site), report, machine_cpus or measured.HOSTS_MACHINE_CPUS)
    if as_json:
        click.echo(json.dumps({**result, "capacity": held.as_dict()}, indent=2))
        return
    costs = result["costs_ms_per_request"]
    click.echo(f"Plan for {site.users} concurrent users from {figures.source}")
    click.echo(f"  measured on {figures.cpus} cores: {costs['site']} ms CPU per request (php-fpm+nginx "
               f"{costs['web']}, PostgreSQL {costs['db']}, other {costs['other']}), "
               f"{figures.rate_per_user:.3f} requests per user per second")
    click.echo(f"  that run: {figures.measured_users_at_slo} users met p95 <= 1 s; the model predicts "
               f"{result['predicted_users_at_slo']} on the same host with its load generator")
    click.echo(f"  this host ({host.cpus} cores) holds about {result['this_host_holds']} users within p95 <= 1 s")
    for target, lines in result["targets"].items():
        click.secho(f"target {target}:", bold=True)
        width = max(len(what) for what, _, _ in lines)
        for what, value, why in lines:
            click.echo(f"  {what:<{width}}  {value:>12}  {click.style(why, dim=True)}")
    _print_capacity(held)


@cli.command()
@SITE_OPTION
def render(site_path: str) -> None:
    """Write every file `kit up` will apply to build/<site>/ (read them before applying)."""
    target = _target(site_path, "render", owned=False)
    for line in target.render_notes():
        click.echo(line)


@cli.command(name="doctor")
@SITE_OPTION
def doctor_cmd(site_path: str) -> None:
    """Check what `kit up` checks (secrets, Moodle source, disk, Docker or cluster, port,
    ownership) and, when the site runs, its replicas, database connections and size, and
    the task queue (oldest task age). FAIL lines go to stderr; any FAIL exits 3."""
    target = _target(site_path, "doctor", owned=False)
    checks = doctor.preflight(target)
    refused_by_up = sum(not c.ok for c in checks)
    owner = next((c for c in checks if c.name == "owner"), None)
    if owner is not None and owner.ok:
        try:
            checks += target.runtime_checks()
        except KitError as exc:
            checks.append(doctor.Check("runtime", False, str(exc)))
    failed = [c for c in checks if not c.ok]
    _print_checks(checks, fail_to_stderr=True)
    if refused_by_up:
        raise KitError(f"doctor found {len(failed)} problem(s): fix the lines marked FAIL above "
                       f"(`kit up` refuses for {refused_by_up} of them)")
    if failed:
        # The running site's state (replicas, queue, monitoring): `kit up` still runs, and may be the fix.
        raise KitError(f"doctor found {len(failed)} problem(s) on the running site: fix the lines marked "
                       "FAIL above (their runbooks say how; `kit up` does not refuse for these)")


@cli.command()
@click.option("--yes", "-y", is_flag=True, help="Do not ask (install Docker if missing, etc.).")
@click.option("--skip-build", is_flag=True, help="Use images already built for this site.")
@click.option("--dry-run", is_flag=True, help="Show what would change (Ansible check + diff); change nothing.")
@SITE_OPTION
def up(yes: bool, skip_build: bool, dry_run: bool, site_path: str) -> None:
    """Build images, roll the site out, install Moodle on first run, wait until healthy.

    Running it again on a healthy site changes nothing and loses no data. The preflight
    is `kit doctor`'s: a FAIL there refuses here, before anything changes.
    """
    target = _target(site_path, "up", owned=False)
    click.secho("==> Preflight", bold=True)
    checks = doctor.preflight(target)
    failed = [c for c in checks if not c.ok]
    if failed and all(c.name == "docker" for c in failed) and not dry_run:
        _print_checks(checks, fail_to_stderr=False)
        target.docker_missing(yes)
        checks = doctor.preflight(target)
        failed = [c for c in checks if not c.ok]
    _print_checks(checks, fail_to_stderr=False)
    if failed:
        more = f" (+{len(failed) - 1} more above)" if len(failed) > 1 else ""
        tail = "" if failed[0].message.endswith("nothing was changed") and not more else "; nothing was changed"
        raise KitError(f"preflight failed: {failed[0].message}{more}{tail}")
    target.up(yes=yes, skip_build=skip_build, dry_run=dry_run)


@cli.command()
@click.option("--destroy-data", is_flag=True, help="Also delete the database, moodledata and Redis volumes.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before destroying data (for scripts).")
@SITE_OPTION
def down(destroy_data: bool, yes: bool, site_path: str) -> None:
    """Stop the site. Data is kept unless --destroy-data (asks first)."""
    target = _target(site_path, "down")
    site = target.site
    if destroy_data:
        _confirm(f"Delete ALL data of site {site.name!r} (database, moodledata, Redis)? This cannot be undone", yes)
    target.down(destroy_data=destroy_data)
    click.echo(f"site {site.name!r} is down; data {'DELETED' if destroy_data else 'kept'}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output for scripts.")
@SITE_OPTION
def status(as_json: bool, site_path: str) -> None:
    """What runs, whether it is healthy (with the reason), queue depth, versions (exit 1: not ready)."""
    target = _target(site_path, "status")
    st = target.status()
    if as_json:
        click.echo(json.dumps(st.as_dict(), indent=2))
    else:
        colour = "green" if st.ready else "red"
        click.secho(f"{target.site.name}: {'READY' if st.ready else 'NOT READY'} - {st.reason}", fg=colour, bold=True)
        click.echo(f"  url      {st.url}")
        click.echo(f"  moodle   {st.moodle_release or '?'}")
        if st.http:
            click.echo(f"  http     {st.http}")
        if st.queue:
            click.echo(f"  queue    {queue_line(st.queue)}")
        for line, line_colour in st.lines:
            click.secho(line, fg=line_colour)
    if not st.ready:
        sys.exit(EXIT_FAILED)


@cli.command()
@click.option("--image-tag", default=None, help="Tag for the new Moodle images (default: derived from the code).")
@click.option("--backup-now", is_flag=True, help="Take the backup a Moodle version upgrade needs, now.")
@SITE_OPTION
def upgrade(image_tag: str | None, backup_now: bool, site_path: str) -> None:
    """Roll the site to what site.yaml and the images now say, without dropping requests.

    \b
    Same Moodle version: web replicas are replaced one at a time, each gated on a real
    health check; a failure rolls every replaced replica back by itself (exit 1).
    New Moodle version: needs a backup from the last 24 h (or --backup-now); runs
    Moodle's upgrade once in maintenance mode and prints how long users saw it.
    """
    target = _target(site_path, "upgrade")
    if image_tag:
        site = target.site
        data = site.model_dump(mode="json", exclude={"site_dir"})
        data["images"]["tag"] = image_tag
        target = target_for(config.parse_site(data, site_dir=site.site_dir, source="--image-tag"))
    target.upgrade(backup_now=backup_now)


@cli.command()
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
@SITE_OPTION
def rollback(yes: bool, site_path: str) -> None:
    """Go back to the previous release (refused across a Moodle version upgrade)."""
    target = _target(site_path, "rollback")
    _confirm(f"Roll back to {target.rollback_target()}?", yes)
    target.rollback()


@cli.command(name="releases")
@click.option("--json", "as_json", is_flag=True)
@SITE_OPTION
def releases_cmd(as_json: bool, site_path: str) -> None:
    """Release history: when, what changed, which command, outcome."""
    history = _target(site_path, "releases", owned=False).releases()
    if as_json:
        click.echo(json.dumps(history, indent=2))
        return
    if not history:
        click.echo("no releases recorded yet (run `kit up`)")
    for r in history:
        if "revision" in r:   # Helm's history
            click.echo(f"{r['revision']:>4}  {r.get('updated', '')}  {r.get('status', ''):11}  "
                       f"{r.get('app_version', '')}  {r.get('description', '')}")
            continue
        colour = {"ok": "green", "failed": "red", "rolled back": "yellow"}.get(r["outcome"])
        maint = f", maintenance {r['maintenance_s']:.0f}s" if r["maintenance_s"] else ""
        click.echo(f"{r['id']:>4}  {r['started']}  " + click.style(f"{r['outcome']:11}", fg=colour)
                   + f"  {r['images'].get('moodle', '?'):32} Moodle {r['moodle_release']}  {r['duration_s']:.0f}s"
                   f"{maint}  {r['user']}: {r['command']}")
        if r["reason"]:
            click.echo(f"      reason: {r['reason'][:300]}")


@cli.command(name="backup")
@SITE_OPTION
def backup_cmd(site_path: str) -> None:
    """Dump the database, archive moodledata, keep site.yaml, secrets and checksums, under backups/<site>/."""
    _target(site_path, "backup").backup()


@cli.command()
@click.argument("backup_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Do not ask before replacing the site's data.")
@SITE_OPTION
def restore(backup_dir: str, yes: bool, site_path: str) -> None:
    """Replace the site's database and moodledata with BACKUP_DIR (checked first).

    The site must be up (`kit up` on an empty host installs a fresh one to restore onto).
    A backup whose files do not match their checksums is refused before anything changes.
    """
    target = _target(site_path, "restore")
    manifest = target.verify_backup(Path(backup_dir))
    _confirm(f"Replace ALL data of site {target.site.name!r} with the backup from {manifest['created']}?", yes)
    target.restore(Path(backup_dir))
    click.secho(f"restored {backup_dir} (Moodle version {manifest['moodle_version']})", fg="green")


def parse_counts(counts: tuple[str, ...]) -> dict[str, int]:
    """web=N workers=M, ASCII digits only (int() would take '٣')."""
    found: dict[str, int] = {}
    for item in counts:
        match = COUNT.fullmatch(item)
        if not match:
            raise UsageError(f"{item!r}: use web=N and/or workers=M with N, M whole numbers (0-9)")
        found[match.group(1)] = int(match.group(2))
    return found


@cli.command()
@click.argument("counts", nargs=-1, required=True)
@SITE_OPTION
def scale(counts: tuple[str, ...], site_path: str) -> None:
    """Set web replicas and adhoc-task workers, e.g. `kit scale web=3 workers=4`.

    Saved in site.yaml (scale:) and applied the rolling way: no request is dropped.
    """
    wanted = parse_counts(counts)
    web, workers = wanted.get("web"), wanted.get("workers")
    target = _target(site_path, "scale", before=lambda t: t.check_scale(web=web, workers=workers))
    target.scale(web=web, workers=workers)


@cli.command()
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option("--message", default=None,
              help="Text users see on the maintenance page (kept for later `on`; empty string: Moodle's default).")
@SITE_OPTION
def maintenance(state: str, message: str | None, site_path: str) -> None:
    """Turn Moodle's maintenance mode on (users see the maintenance page) or off."""
    if message is not None and state == "off":
        raise UsageError("--message goes with `kit maintenance on`")
    _target(site_path, "maintenance").maintenance(on=state == "on", message=message)


@cli.command()
@click.option("--renew", is_flag=True, help="Get a new certificate now (acme: a forced renewal; self-signed: a new "
                                            "one), loaded with a graceful edge reload.")
@SITE_OPTION
def certs(renew: bool, site_path: str) -> None:
    """The certificate the edge serves: issuer, names, expiry, next renewal."""
    _target(site_path, "certs").certs(renew=renew)


@cli.command()
@SITE_OPTION
def adopt(site_path: str) -> None:
    """Make this folder the one that manages the running site of its name (e.g. after moving
    the folder to a new admin machine). Needs the site's own secrets file; nothing restarts."""
    _target(site_path, "adopt", owned=False).adopt()


@cli.group(name="secrets")
def secrets_group() -> None:
    """The site's generated credentials (stored owner-only in .kit/<site>/secrets.yaml)."""


@secrets_group.command(name="rotate")
@click.option("--db/--no-db", "rotate_db", default=True, show_default=True, help="Rotate the PostgreSQL password.")
@click.option("--redis/--no-redis", "rotate_redis", default=True, show_default=True,
              help="Rotate the Redis password.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
@SITE_OPTION
def secrets_rotate(rotate_db: bool, rotate_redis: bool, yes: bool, site_path: str) -> None:
    """New database and Redis passwords, applied with a rolling restart (no request dropped).

    Both old and new passwords work until every container has rolled over; then the old ones
    stop working. If interrupted, run it again: it finishes the same rotation.
    """
    if not (rotate_db or rotate_redis):
        raise UsageError("nothing to rotate: --no-db and --no-redis together")
    target = _target(site_path, "secrets rotate")
    what = " and ".join(w for w, on in (("database", rotate_db), ("Redis", rotate_redis)) if on)
    _confirm(f"Rotate the {what} password of site {target.site.name!r} with a rolling restart?", yes)
    changed = target.rotate_secrets(db=rotate_db, redis=rotate_redis)
    done = ", ".join(f"{k} ({v})" for k, v in changed.items()) or "nothing"
    click.secho(f"rotated: {done}; new values in {target.site.secrets_file}", fg="green")


@cli.command()
@click.argument("service", required=False,
                type=click.Choice(["edge", "web", "web-nginx", "cron", "worker", "db", "redis"]))
@click.option("--since", default="10m", show_default=True, help="How far back, e.g. 30m, 2h.")
@click.option("--tail", "tail_lines", type=click.IntRange(1, 100_000), default=200, show_default=True,
              help="Lines per container.")
@SITE_OPTION
def logs(service: str | None, since: str, tail_lines: int, site_path: str) -> None:
    """Recent logs of the site's containers (one service, or all)."""
    _target(site_path, "logs").logs(service, since=since, tail=tail_lines)


@cli.group(name="admin")
def admin_group() -> None:
    """Site administration tasks."""


@admin_group.command(name="reset-password")
@click.option("--user", "username", default=None, help="Moodle user name (default: the site's admin).")
@SITE_OPTION
def admin_reset_password(username: str | None, site_path: str) -> None:
    """Give a user a new generated password (and unlock it); the admin's is stored in the secrets file."""
    import secrets as pysecrets

    target = _target(site_path, "admin reset-password")
    site = target.site
    username = username or site.moodle.admin_user
    if not re.fullmatch(r"[a-z0-9_.@-]+", username):
        raise UsageError(f"--user {username!r}: not a Moodle user name")
    password = pysecrets.token_urlsafe(18)
    target.reset_password(username, password)
    if username == site.moodle.admin_user:
        config.update_secret(site, "admin_password", password)
        click.echo(f"new password for {username} stored in {site.secrets_file} (key admin_password)")
    else:
        path = site.state_dir / "passwords" / f"{username}.txt"
        config.write_private(path, password + "\n")
        click.echo(f"new password for {username} written to {path} (mode 0600): hand it over privately")


@cli.group(name="images")
def images_group() -> None:
    """Build the site's images, or an offline Debian base image."""


@images_group.command(name="base")
@click.option("--mirror", default=None, help="Debian mirror URL (default: the one this host's apt uses).")
@click.option("--tag", default=images.OFFLINE_BASE_TAG, show_default=True)
@click.option("--force", is_flag=True, help="Rebuild even if the image exists.")
def images_base(mirror: str | None, tag: str, force: bool) -> None:
    """Build a Debian 12 base image with debootstrap (no registry needed)."""
    from kit.engine import Engine

    images.build_offline_base(Engine.local(), mirror, tag, force=force)
    click.echo(f"built {tag}; use it with `images: {{base: {tag}}}` in site.yaml or `kit init --base-image {tag}`")


@images_group.command(name="build")
@click.option("--force", is_flag=True, help="Rebuild even if the tags exist.")
@SITE_OPTION
def images_build(force: bool, site_path: str) -> None:
    """Build the site's PHP, Moodle, web, PostgreSQL and Redis images."""
    from kit.engine import Engine

    built = images.build_all(_load(site_path), Engine.local(), force=force)
    for role, tag in built.as_dict().items():
        if tag != "-":
            click.echo(f"  {role:9} {tag}")


from kit.cli_loadtest import loadtest  # noqa: E402  (registered after the core commands)

cli.add_command(loadtest)
from kit.cli_auth import auth, courses, users  # noqa: E402

cli.add_command(auth)
cli.add_command(users)
cli.add_command(courses)
from kit.cli_monitor import alerts, monitor_cmd  # noqa: E402

cli.add_command(alerts)
cli.add_command(monitor_cmd)


def _bug(exc: BaseException) -> None:
    """An error the kit did not expect: one line here, the traceback in a private file."""
    fd, path = tempfile.mkstemp(prefix=f"kit-error-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log")
    with os.fdopen(fd, "w") as fh:
        fh.write(f"kit {' '.join(sys.argv[1:])}\n")
        traceback.print_exception(exc, file=fh)
    click.secho(f"error: the kit hit a bug ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
                f"; the traceback is in {path}", fg="red", err=True)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted: nothing was changed", err=True)
        sys.exit(EXIT_FAILED)
    except click.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        click.secho(f"error: {exc.format_message()}{where}", fg="red", err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        click.secho(f"error: {exc.format_message()}", fg="red", err=True)
        sys.exit(exc.exit_code)
    except KitError as exc:
        click.secho(f"error: {' '.join(str(exc).split())}", fg="red", err=True)   # one line, always
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place a bug becomes one line and a file
        if os.environ.get("KIT_DEBUG"):
            raise
        _bug(exc)
        sys.exit(EXIT_BUG)


if __name__ == "__main__":
    main()
