"""The `kit` command line: one site config in, a running Moodle out."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from kit import __version__, config, doctor, health, images, sizing
from kit.errors import KitError

SITE_OPTION = click.option(
    "--site", "site_path", default=lambda: os.environ.get("KIT_SITE", config.DEFAULT_SITE_FILE),
    show_default="site.yaml or $KIT_SITE", type=click.Path(dir_okay=False),
    help="The site config file.")


def _local_only(site: config.Site, command: str) -> None:
    """Commands that reach into containers with secrets or data streams run on `local` only (for now)."""
    if site.target != "local":
        raise KitError(f"`kit {command}` supports target local; this site's target is {site.target!r} "
                       "(on hosts, run it on the machine itself with a local site.yaml)")


def _load(site_path: str) -> config.Site:
    return config.load_site(site_path)


def _print_checks(checks: list[doctor.Check]) -> bool:
    all_ok = True
    for check in checks:
        mark = click.style("ok  ", fg="green") if check.ok else click.style("FAIL", fg="red")
        click.echo(f"  {mark} {check.name:8} {check.message}")
        all_ok &= check.ok
    return all_ok


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="kit")
def cli() -> None:
    """Roll out a production-shaped Moodle in one command, and prove it holds a surge.

    \b
    Typical first rollout on this host:
      kit init --users 300 --moodle-source ~/moodle-src/4.5.6
      kit plan        # what will be tuned, and why
      kit up          # build images, roll out, install Moodle, wait until healthy
      kit status      # what runs, is it healthy, queue depth
    """


@cli.command()
@click.option("--users", type=int, default=300, show_default=True, help="Expected concurrent users at peak.")
@click.option("--moodle-source", default=None, help="Moodle folder, .tar.gz, or git URL (default: Moodle's git, v4.5.6).")
@click.option("--moodle-ref", default=None, help="Git ref when --moodle-source is a git URL.")
@click.option("--name", default="moodle", show_default=True, help="Site name: prefixes containers and volumes.")
@click.option("--port", type=int, default=8080, show_default=True, help="HTTP port the edge proxy publishes.")
@click.option("--bind", default="0.0.0.0", show_default=True, help="Address to publish on (127.0.0.1: this host only).")
@click.option("--url", default=None, help="Public URL (Moodle's wwwroot). Default: http://<host>:<port>.")
@click.option("--base-image", default=None,
              help=f"Debian 12 base image (default {config.OFFICIAL_BASE_IMAGE}; offline: {images.OFFLINE_BASE_TAG}).")
@click.option("--target", type=click.Choice(["local", "hosts", "k8s"]), default="local", show_default=True)
@click.option("--namespace", default=None, help="k8s: Kubernetes namespace (default: moodle).")
@click.option("--host", "k8s_host", default=None, help="k8s: Ingress host name; the URL becomes https://HOST.")
@click.option("--machine", "machines", multiple=True, metavar="NAME=ADDRESS:ROLE[,ROLE]",
              help="hosts: one machine and its roles (edge, db, redis, cron, web, worker); repeat per machine, "
                   "e.g. --machine app1=10.0.0.11:web,worker")
@click.option("--ssh-config", default=None, help="hosts: ssh_config file with the machines' keys (default: ssh's own).")
@click.option("--force", is_flag=True, help="Overwrite an existing site.yaml (secrets are kept).")
@SITE_OPTION
def init(users: int, moodle_source: str | None, moodle_ref: str | None, name: str, port: int, bind: str,
         url: str | None, base_image: str | None, target: str, namespace: str | None, k8s_host: str | None,
         machines: tuple[str, ...], ssh_config: str | None, force: bool, site_path: str) -> None:
    """Write site.yaml and generate the site's secrets (owner-only)."""
    path = Path(site_path)
    if path.exists() and not force:
        raise KitError(f"{path} already exists: edit it, or pass --force to overwrite it")
    data: dict = {"name": name, "target": target, "users": users, "http": {"bind": bind, "port": port}}
    if url:
        data["url"] = url
    moodle: dict = {}
    if moodle_source:
        expanded = os.path.expanduser(moodle_source)
        moodle["source"] = str(Path(expanded).resolve()) if os.path.exists(expanded) else moodle_source
    if moodle_ref:
        moodle["ref"] = moodle_ref
    if moodle:
        data["moodle"] = moodle
    if base_image:
        data["images"] = {"base": base_image}
    if machines or ssh_config:
        data["hosts"] = {"machines": [_parse_machine(spec) for spec in machines]}
        if ssh_config:
            data["hosts"]["ssh_config"] = str(Path(os.path.expanduser(ssh_config)).resolve())
    if target == "k8s" or namespace or k8s_host:
        from kit.k8s.values import init_settings

        data = init_settings(data, namespace=namespace, host=k8s_host)
    site = config.parse_site(data, site_dir=path.resolve().parent, source="kit init")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.dump_site(site))
    config.ensure_secrets(site)
    click.echo(f"wrote {path} (site {site.name!r}, {site.users} users, {site.url})")
    click.echo(f"secrets in {site.secrets_file} (mode 0600)")
    click.echo("next: `kit plan` to review the tuning, then `kit up`")


def _parse_machine(spec: str) -> dict:
    """NAME=ADDRESS:ROLE[,ROLE] -> a hosts.machines entry (validated with the site)."""
    name, sep, rest = spec.partition("=")
    address, sep2, roles = rest.rpartition(":")
    if not (sep and sep2 and name and address and roles):
        raise KitError(f"--machine {spec!r}: use NAME=ADDRESS:ROLE[,ROLE], e.g. app1=10.0.0.11:web,worker")
    return {"name": name, "address": address, "roles": roles.split(",")}


@cli.command()
@click.option("--users", type=int, default=None, help="Plan for this many users instead of site.yaml's.")
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
        if users <= 0:
            raise KitError(f"--users: must be greater than 0 (got {users})")
        site = site.model_copy(update={"users": users})
    if report:
        _plan_from_report(site, report, machine_cpus, as_json)
        return
    if machine_cpus is not None:
        raise KitError("--machine-cpus: only with --from-report")
    tuning = sizing.plan(site)
    if as_json:
        click.echo(json.dumps(tuning.as_dict(), indent=2, sort_keys=True))
        return
    click.echo(f"Plan for {site.users} concurrent users on {tuning.host.cpus} CPUs, {tuning.host.memory_mb} MB RAM")
    width = max(len(k) for k, _, _ in tuning.rows())
    for key, value, reason in tuning.rows():
        click.echo(f"  {key:<{width}}  {value:>8}  {click.style(reason, dim=True)}")


def _plan_from_report(site: config.Site, report: str, machine_cpus: int | None, as_json: bool) -> None:
    from kit import measured

    figures = measured.load_report(report)
    host = sizing.HostResources.for_site(site)
    result = measured.plan_for(figures, site.users, host.cpus, host.memory_mb,
                               machine_cpus or measured.HOSTS_MACHINE_CPUS)
    if as_json:
        click.echo(json.dumps(result, indent=2))
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


@cli.command()
@SITE_OPTION
def render(site_path: str) -> None:
    """Write every file `kit up` will apply to build/<site>/ (read them before applying)."""
    from kit.render import render as do_render

    site = _load(site_path)
    config.ensure_secrets(site)
    out = do_render(site, sizing.plan(site), images.image_set(site))
    click.echo(f"rendered {out}")
    for item in sorted(out.iterdir()):
        click.echo(f"  {item.name}")
    if site.target == "k8s":
        from kit.k8s import driver as k8s_driver

        k8s_out, note = k8s_driver.render(site, sizing.plan(site), images.image_set(site),
                                          k8s_driver.moodle_version_of(site))
        click.echo(f"rendered {k8s_out} ({note})")


@cli.command(name="doctor")
@SITE_OPTION
def doctor_cmd(site_path: str) -> None:
    """Check the host (Docker, port, disk, memory, Moodle source) and, when the site runs,
    its replicas, database connections and size, and the task queue (oldest task age)."""
    site = _load(site_path)
    checks = doctor.preflight(site, sizing.plan(site))
    if doctor.check_docker().ok:
        checks += doctor.runtime_checks(site)
    ok = _print_checks(checks)
    if not ok:
        raise KitError("doctor found problems: fix the lines marked FAIL above")


@cli.command()
@click.option("--yes", "-y", is_flag=True, help="Do not ask (install Docker if missing, etc.).")
@click.option("--skip-build", is_flag=True, help="Use images already built for this site.")
@click.option("--dry-run", is_flag=True, help="Show what would change (Ansible check + diff); change nothing.")
@SITE_OPTION
def up(yes: bool, skip_build: bool, dry_run: bool, site_path: str) -> None:
    """Build images, roll the site out, install Moodle on first run, wait until healthy.

    Running it again on a healthy site changes nothing and loses no data.
    """
    from kit.drivers import local

    site = _load(site_path)
    if site.target == "k8s":
        from kit.k8s import driver as k8s_driver

        k8s_driver.up(site, dry_run=dry_run)
        return
    if dry_run:
        _dry_run(site)
        return
    started = time.monotonic()
    tuning = sizing.plan(site)
    click.secho("==> Preflight", bold=True)
    checks = doctor.preflight(site, tuning, docker_required=False)
    docker_check = doctor.check_docker()
    ok = _print_checks(checks)
    if not ok:
        raise KitError("preflight failed: fix the lines marked FAIL above; nothing was changed")
    if site.target == "hosts":
        if not docker_check.ok:
            raise KitError(f"the kit builds images with this machine's Docker engine: {docker_check.message}")
        from kit.drivers import hosts as hosts_driver

        rows = hosts_driver.check_machines(site)
        for name, reachable, msg in rows:
            click.echo(f"  {'ok  ' if reachable else 'FAIL'} {name:8} {msg}")
        if not all(reachable for _, reachable, _ in rows):
            raise KitError("machines unreachable: fix the lines marked FAIL above; nothing was changed")
    if not docker_check.ok:
        if not doctor.is_debian_like():
            raise KitError(docker_check.message)
        if not yes and not sys.stdin.isatty():
            raise KitError(f"{docker_check.message}; nothing was changed")
        click.echo(f"  {docker_check.message}")
        if not yes and not click.confirm("Install Debian's docker.io and start it now?", default=False):
            raise KitError("Docker is required: rerun with --yes to install it, or install Docker yourself")
        config.ensure_secrets(site)
        from kit.render import render as do_render

        site.build_dir.mkdir(parents=True, exist_ok=True)
        do_render(site, tuning, images.ImageSet.placeholder())
        local.install_docker(site)
    from kit import rollout

    release, totals = rollout.apply(site, tuning, build=not skip_build)
    click.secho("==> Health", bold=True)
    ready, msg = health.wait_ready(site)
    if not ready:
        raise KitError(f"rolled out, but the site is not healthy: {msg} (see `kit status`)")
    click.echo(f"    {msg}")
    elapsed = time.monotonic() - started
    if totals["changed"] == 0:
        click.secho(f"No changes: the site already matched {site_path} ({elapsed:.0f}s).", fg="green")
    else:
        number = f" as release {release.id}" if release else ""
        click.secho(f"Site is up ({totals['changed']} changes applied{number} in {elapsed:.0f}s).", fg="green")
    click.echo(f"  URL:            {site.url}")
    click.echo(f"  Admin user:     {site.moodle.admin_user}")
    click.echo(f"  Admin password: stored in {site.secrets_file} (key admin_password)")


def _dry_run(site: config.Site) -> None:
    from kit.drivers import local
    from kit.render import render as do_render

    tuning = sizing.plan(site)
    if not doctor.check_docker().ok:
        raise KitError(doctor.check_docker().message)
    config.ensure_secrets(site)
    wanted = images.image_set(site)
    missing = [tag for tag in wanted.as_dict().values() if not images.image_exists(tag)]
    out = do_render(site, tuning, wanted)
    click.echo(f"rendered {out} (read it to see every setting that would be applied)")
    if missing:
        click.echo("would build: " + ", ".join(missing))
        click.echo("containers using those images would be (re)created; run `kit images build` first "
                   "for a container-by-container dry run")
        return
    totals = local.ansible_playbook(site, "site.yml", check=True, diff=True)
    if totals["changed"]:
        click.secho(f"dry run: {totals['changed']} changes would be applied (marked 'changed' above)", fg="yellow")
    else:
        click.secho("dry run: no changes; the site matches site.yaml", fg="green")


@cli.command()
@click.option("--destroy-data", is_flag=True, help="Also delete the database, moodledata and Redis volumes.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before destroying data (for scripts).")
@SITE_OPTION
def down(destroy_data: bool, yes: bool, site_path: str) -> None:
    """Stop the site. Data is kept unless --destroy-data (asks first)."""
    from kit.drivers import local
    from kit.render import render as do_render

    site = _load(site_path)
    if destroy_data and not yes:
        click.confirm(f"Delete ALL data of site {site.name!r} (database, moodledata, Redis)? This cannot be undone",
                      abort=True, default=False)
    if site.target == "k8s":
        from kit.k8s import driver as k8s_driver

        k8s_driver.down(site, destroy_data=destroy_data)
        click.echo(f"site {site.name!r} is down; data {'DELETED' if destroy_data else 'kept (database hibernated, volumes kept)'}")
        return
    config.ensure_secrets(site)
    if not (site.build_dir / "vars.yml").exists():
        do_render(site, sizing.plan(site), images.ImageSet.placeholder())
    local.down(site, destroy_data=destroy_data)
    click.echo(f"site {site.name!r} is down; data {'DELETED' if destroy_data else 'kept (volumes ' + site.prefix + '-*)'}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output for scripts.")
@SITE_OPTION
def status(as_json: bool, site_path: str) -> None:
    """What runs, whether it is healthy (with the reason), queue depth, versions."""
    site = _load(site_path)
    if site.target == "k8s":
        from kit.k8s import driver as k8s_driver

        if not k8s_driver.print_status(site, as_json):
            sys.exit(1)
        return
    st = health.status(site)
    if as_json:
        click.echo(json.dumps(st.as_dict(), indent=2))
    else:
        colour = "green" if st.ready else "red"
        click.secho(f"{site.name}: {'READY' if st.ready else 'NOT READY'} - {st.reason}", fg=colour, bold=True)
        click.echo(f"  url      {st.url}")
        click.echo(f"  moodle   {st.moodle_release or '?'}")
        click.echo(f"  http     {st.http}")
        if st.queue:
            click.echo(f"  queue    {st.queue['queued']} adhoc tasks queued ({st.queue['due']} due), "
                       f"oldest overdue {st.queue['oldest_age_s']}s, "
                       f"{st.queue['failing']} failing")
        for c in st.containers:
            click.echo(f"  {c['role']:7} {c['name']:28} {c['state']:8} {c['health']:9} {c['image']}")
    if not st.ready:
        sys.exit(1)


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
    from kit import rollout

    site = _load(site_path)
    if image_tag:
        site = site.model_copy(update={"images": site.images.model_copy(update={"tag": image_tag})})
        config.parse_site(site.model_dump(mode="json", exclude={"site_dir"}), site_dir=site.site_dir,
                          source="--image-tag")
    if site.target == "k8s":
        from kit.k8s import driver as k8s_driver

        k8s_driver.upgrade(site, backup_now=backup_now)
        return
    started = time.monotonic()
    release, totals = rollout.upgrade(site, sizing.plan(site), backup_now=backup_now)
    ready, msg = health.wait_ready(site)
    if not ready:
        raise KitError(f"rolled out, but the site is not healthy: {msg}")
    if release is None:
        click.secho(f"No changes: the site already runs this release ({time.monotonic() - started:.0f}s).", fg="green")
    else:
        click.secho(f"Release {release.id} is live ({totals['changed']} changes in {release.duration_s:.0f}s).",
                    fg="green")


@cli.command()
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
@SITE_OPTION
def rollback(yes: bool, site_path: str) -> None:
    """Go back to the previous release (refused across a Moodle version upgrade)."""
    from kit import releases, rollout

    site = _load(site_path)
    if site.target == "k8s":
        from kit.k8s import driver as k8s_driver

        k8s_driver.rollback(site, yes=yes)
        return
    target = releases.previous_good(site)
    if not yes:
        click.confirm(f"Roll back to release {target.id} ({target.started}, Moodle {target.moodle_release})?",
                      abort=True, default=False)
    release = rollout.rollback(site)
    ready, msg = health.wait_ready(site)
    if not ready:
        raise KitError(f"rolled back, but the site is not healthy: {msg}")
    click.secho(f"Rolled back: release {release.id} applies release {target.id}'s images and settings "
                f"({release.duration_s:.0f}s). site.yaml still describes the newer release.", fg="green")


@cli.command(name="releases")
@click.option("--json", "as_json", is_flag=True)
@SITE_OPTION
def releases_cmd(as_json: bool, site_path: str) -> None:
    """Release history: when, what changed, which command, outcome."""
    from dataclasses import asdict

    from kit import releases

    history = releases.load(_load(site_path))
    if as_json:
        click.echo(json.dumps([asdict(r) for r in history], indent=2))
        return
    if not history:
        click.echo("no releases recorded yet (run `kit up`)")
    for r in history:
        colour = {"ok": "green", "failed": "red", "rolled back": "yellow"}.get(r.outcome)
        maint = f", maintenance {r.maintenance_s:.0f}s" if r.maintenance_s else ""
        click.echo(f"{r.id:>4}  {r.started}  " + click.style(f"{r.outcome:11}", fg=colour)
                   + f"  {r.images.get('moodle', '?'):32} Moodle {r.moodle_release}  {r.duration_s:.0f}s{maint}"
                   f"  {r.user}: {r.command}")
        if r.reason:
            click.echo(f"      reason: {r.reason[:300]}")


@cli.command(name="backup")
@SITE_OPTION
def backup_cmd(site_path: str) -> None:
    """Dump the database, archive moodledata, keep site.yaml and checksums, under backups/<site>/."""
    from kit import backup

    site = _load(site_path)
    _local_only(site, "backup")
    backup.backup(site)


@cli.command()
@click.argument("backup_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Do not ask before replacing the site's data.")
@SITE_OPTION
def restore(backup_dir: str, yes: bool, site_path: str) -> None:
    """Replace the site's database and moodledata with BACKUP_DIR (checked first).

    The site must be up (`kit up` on an empty host installs a fresh one to restore onto).
    A backup whose files do not match their checksums is refused before anything changes.
    """
    from kit import backup

    site = _load(site_path)
    _local_only(site, "restore")
    manifest = backup.verify(Path(backup_dir))
    if not yes:
        click.confirm(f"Replace ALL data of site {site.name!r} with the backup from {manifest['created']}?",
                      abort=True, default=False)
    backup.restore(site, Path(backup_dir))
    ready, msg = health.wait_ready(site)
    if not ready:
        raise KitError(f"restored, but the site is not healthy: {msg}")
    click.secho(f"restored {backup_dir} (Moodle version {manifest['moodle_version']}); {msg}", fg="green")


@cli.command()
@click.argument("counts", nargs=-1, required=True)
@SITE_OPTION
def scale(counts: tuple[str, ...], site_path: str) -> None:
    """Set web replicas and adhoc-task workers, e.g. `kit scale web=3 workers=4`.

    Saved in site.yaml (scale:) and applied the rolling way: no request is dropped.
    """
    from kit import rollout

    site = _load(site_path)
    update: dict[str, int] = {}
    if site.target == "hosts" and any(item.startswith("web=") for item in counts):
        raise KitError("on target hosts each machine with role web runs one replica: add or remove machines "
                       "in site.yaml (hosts.machines), then `kit up`")
    for item in counts:
        key, _, value = item.partition("=")
        field = {"web": "web_replicas", "workers": "workers"}.get(key)
        if field is None or not value.isdigit():
            raise KitError(f"{item!r}: use web=N and/or workers=M")
        update[field] = int(value)
    scaled = config.parse_site({**site.model_dump(mode="json", exclude={"site_dir"}, exclude_none=True),
                                "scale": {**site.scale.model_dump(exclude_none=True), **update}},
                               site_dir=site.site_dir, source="kit scale")
    Path(site_path).write_text(config.dump_site(scaled))
    tuning = sizing.plan(scaled)
    click.echo(f"scaling {scaled.name}: web replicas {tuning.web_replicas}, workers {tuning.workers}")
    rollout.apply(scaled, tuning, images=rollout.running_images(scaled))
    ready, msg = health.wait_ready(scaled)
    if not ready:
        raise KitError(f"scaled, but the site is not healthy: {msg}")
    click.secho(f"scaled: {tuning.web_replicas} web replicas, {tuning.workers} workers; {msg}", fg="green")


@cli.command()
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option("--message", default=None,
              help="Text users see on the maintenance page (kept for later `on`; empty string: Moodle's default).")
@SITE_OPTION
def maintenance(state: str, message: str | None, site_path: str) -> None:
    """Turn Moodle's maintenance mode on (users see the maintenance page) or off."""
    from kit.runner import run

    site = _load(site_path)
    from kit.drivers.hosts import on_host

    web = f"{site.prefix}-web-1"
    moodle = ["docker", "exec", "-u", "www-data", web, "php"]
    if message is not None:
        if state == "off":
            raise KitError("--message goes with `kit maintenance on`")
        run(on_host(site, web, [*moodle, "admin/cli/cfg.php", "--name=maintenance_message", f"--set={message}"]))
    run(on_host(site, web, [*moodle, "admin/cli/maintenance.php", "--enable" if state == "on" else "--disable"]))


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
    from kit import rotation

    site = _load(site_path)
    if not (rotate_db or rotate_redis):
        raise KitError("nothing to rotate: --no-db and --no-redis together")
    if site.target == "k8s":
        raise KitError("on target k8s, change the site's Secret and run `kit upgrade` (see docs/kubernetes.md)")
    what = " and ".join(w for w, on in (("database", rotate_db), ("Redis", rotate_redis)) if on)
    if not yes:
        click.confirm(f"Rotate the {what} password of site {site.name!r} with a rolling restart?", abort=True)
    changed = rotation.rotate(site, sizing.plan(site), db=rotate_db, redis=rotate_redis)
    ready, msg = health.wait_ready(site)
    if not ready:
        raise KitError(f"rotated, but the site is not healthy: {msg}")
    done = ", ".join(f"{k} ({v})" for k, v in changed.items()) or "nothing"
    click.secho(f"rotated: {done}; new values in {site.secrets_file}; {msg}", fg="green")


@cli.command()
@click.argument("service", required=False,
                type=click.Choice(["edge", "web", "web-nginx", "cron", "worker", "db", "redis"]))
@click.option("--since", default="10m", show_default=True, help="How far back, e.g. 30m, 2h.")
@click.option("--tail", "tail_lines", type=int, default=200, show_default=True, help="Lines per container.")
@SITE_OPTION
def logs(service: str | None, since: str, tail_lines: int, site_path: str) -> None:
    """Recent logs of the site's containers (one service, or all)."""
    from kit.drivers import hosts
    from kit.runner import run

    site = _load(site_path)
    for c in hosts.containers(site):
        if c["role"] in ("install", "oneoff") or (service and c["role"] != service):
            continue
        where = f" on {c['machine']}" if "machine" in c else ""
        click.secho(f"==> {c['name']} ({c['role']}){where}", bold=True)
        run(hosts.on_host(site, c["name"], ["docker", "logs", "--since", since, "--tail", str(tail_lines), c["name"]]),
            quiet=False, check=False)


@cli.group(name="admin")
def admin_group() -> None:
    """Site administration tasks."""


@admin_group.command(name="reset-password")
@click.option("--user", "username", default=None, help="Moodle user name (default: the site's admin).")
@SITE_OPTION
def admin_reset_password(username: str | None, site_path: str) -> None:
    """Give a user a new generated password (and unlock it); the admin's is stored in the secrets file."""
    import secrets as pysecrets

    from kit.runner import run

    site = _load(site_path)
    _local_only(site, "admin reset-password")
    username = username or site.moodle.admin_user
    password = pysecrets.token_urlsafe(18)
    run(["docker", "exec", "-e", "KIT_USERNAME", "-e", "KIT_NEW_PASSWORD", "-u", "www-data", f"{site.prefix}-web-1",
         "php", "/opt/kit/set_password.php"], env={"KIT_USERNAME": username, "KIT_NEW_PASSWORD": password})
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
    images.build_offline_base(mirror, tag, force=force)
    click.echo(f"built {tag}; use it with `images: {{base: {tag}}}` in site.yaml or `kit init --base-image {tag}`")


@images_group.command(name="build")
@click.option("--force", is_flag=True, help="Rebuild even if the tags exist.")
@SITE_OPTION
def images_build(force: bool, site_path: str) -> None:
    """Build the site's PHP, Moodle, web, PostgreSQL and Redis images."""
    built = images.build_all(_load(site_path), force=force)
    for role, tag in built.as_dict().items():
        click.echo(f"  {role:9} {tag}")


from kit.cli_loadtest import loadtest  # noqa: E402  (registered after the core commands)

cli.add_command(loadtest)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted: nothing was changed", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KitError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
