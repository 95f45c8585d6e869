"""`kit loadtest`: seed with Moodle's generator, run locust journeys, gate on SLOs."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import click

from kit import config, identity
from kit.errors import KitError, OperationFailed, UsageError
from kit.loadtest import run as lt
from kit.loadtest.resources import LevelCost, SiteMeter
from kit.loadtest.seed import is_local_url, remove_replies, saved_target
from kit.loadtest.seed import seed as do_seed
from kit.targets import Target, target_for

SITE_OPTION = click.option("--site", "site_path", default=lambda: __import__("os").environ.get("KIT_SITE", "site.yaml"),
                           show_default="site.yaml or $KIT_SITE", help="The site config file.")


@click.group(name="loadtest")
def loadtest() -> None:
    """Rehearse a surge: Moodle's own user journey on locust, judged against SLOs.

    \b
      kit loadtest seed --size S
      kit loadtest run --users 50 --duration 2m --slo p95=1s --slo errors=1%
      kit loadtest run --shape surge --peak 200 --step 20 --step-time 30s
      kit loadtest run --journey exam --users 100 --window 60s
      kit loadtest capacity --slo p95=1s --slo errors=1%
    """


@loadtest.command()
@click.option("--size", default="S", show_default=True, help="Moodle generator size: XS, S, M, L, XL, XXL.")
@SITE_OPTION
def seed(size: str, site_path: str) -> None:
    """Create test users and courses with Moodle's generator (idempotent) and the kit's exam quiz."""
    target = _owned(site_path, "loadtest seed")
    config.load_secrets(target.site)
    do_seed(target, size.upper())


def _owned(site_path: str, command: str) -> Target:
    target = target_for(config.load_site(site_path))
    identity.check(target.site, target.found(), command=command)
    return target


def _common(func):
    options = [
        click.option("--url", default=None, help="Target Moodle URL (default: this site's, through its local port)."),
        click.option("--target-file", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Seeded course/users JSON (default: the one `kit loadtest seed` wrote)."),
        click.option("--journey", type=click.Choice(["moodle", "exam"]), default="moodle", show_default=True,
                     help="moodle: the 14-step JMeter plan journey; exam: everyone starts a quiz at once."),
        click.option("--think", default="1,3", show_default=True, help="Think time between steps, MIN,MAX seconds."),
        click.option("--slo", "slos", multiple=True, default=(), show_default="site.yaml's slo (p95=1s, errors=1%)",
                     help="Service level to meet, e.g. p95=1s, p99=2s, errors=1% (repeatable). Without it, the "
                          "site's slo: the one its alerts fire on."),
        click.option("--processes", type=click.IntRange(1, 64), default=1, show_default=True,
                     help="Locust worker processes on this host (locust's distributed mode)."),
        click.option("--yes", "-y", is_flag=True, help="Do not ask before loading a host that is not this one."),
        SITE_OPTION,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _prepare(site_path: str, url: str | None, target_file: str | None, yes: bool):
    """Resolve target URL, target data and password; refuse a remote target without consent."""
    site = None
    target = None
    if Path(site_path).exists():
        site = config.load_site(site_path)
    if url is None:
        if site is None:
            raise KitError(f"{site_path} not found: pass --url and --target-file to load-test any Moodle")
        target = _owned(site_path, "loadtest")
        host, host_header = target.local_url(), urlparse(site.url).netloc
    else:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise KitError(f"--url {url!r}: must be http(s)://host[:port]")
        host, host_header = url.rstrip("/"), None
    if not is_local_url(host) and not yes:
        if not sys.stdin.isatty():
            raise KitError(f"{host} is not this host: pass --yes to load-test it (never production by accident)")
        click.confirm(f"{host} is not this host. Really send load to it?", abort=True, default=False)
    if target_file:
        target_path = Path(target_file)
    elif site is not None:
        target_path = saved_target(site)
    else:
        raise KitError("--target-file is required without a site.yaml")
    password = lt.default_env_password()
    if password is None:
        if site is None:
            raise KitError("set KIT_LT_PASSWORD to the generated users' password (tool_generator_users_password)")
        password = config.load_secrets(site)["loadtest_password"]
    out_base = site.site_dir if site else Path.cwd()
    name = site.name if site else (urlparse(host).hostname or "site")
    return site, target, host, host_header, target_path, password, out_base, name


def _parse_slos(slos: tuple[str, ...], site_path: str) -> list[lt.SLO]:
    """--slo as given, else site.yaml's slo (the alerts' too), else the model's defaults."""
    if not slos:
        slo = config.load_site(site_path).slo if Path(site_path).exists() else config.SloSettings()
        slos = (f"p95={slo.p95_ms}ms", f"errors={slo.errors_percent:g}%")
    return [lt.parse_slo(s) for s in slos]


def _server_side(target: Target | None, started: float, ended: float) -> dict[str, float | None] | None:
    """The edge's own figures for the run, from the site's Prometheus (None where there is none)."""
    if target is None or not target.site.monitoring.enabled:
        return None
    time.sleep(target.site.monitoring.scrape_interval_s + 2)    # mtail flushes in 2 s, then a scrape
    try:
        with target.monitor() as monitor:
            return monitor.window(started, ended)
    except KitError as exc:
        click.secho(f"server side: not read from Prometheus ({exc})", fg="yellow")
        return None


def _parse_levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--levels {text!r}: use user counts separated by commas, e.g. 10,20,40") from None
    if not levels or any(n <= 0 for n in levels) or levels != sorted(set(levels)):
        raise UsageError(f"--levels {text!r}: use increasing user counts above 0, e.g. 10,20,40")
    return levels


def _meter(site: config.Site | None, target: Target | None, url: str | None) -> SiteMeter | None:
    """Counters can be read only for this site's own containers on this host."""
    meter = target.meter() if target is not None and url is None else None
    if meter is None and url is None and site is not None:
        click.echo(f"resource figures: not measured (target {site.target}: the containers run elsewhere)")
    return meter


def _site_facts(site: config.Site) -> dict:
    """What the measured site was: the report says what its figures were measured on."""
    from kit import sizing

    tuning = sizing.plan(site)
    return {"name": site.name, "profile": site.performance.profile, "levers": dict(tuning.levers),
            "cpus": tuning.host.cpus, "memory_mb": tuning.host.memory_mb, "web_replicas": tuning.web_replicas,
            "fpm_max_children": tuning.fpm_max_children, "workers": tuning.workers}


def _data_facts(target_path: Path) -> dict:
    """What the load walked: the seeded course (`kit loadtest seed --size`) and its students."""
    try:
        seeded = json.loads(target_path.read_text())
    except (OSError, ValueError):
        return {}
    return {"size": seeded.get("size"), "course": seeded.get("course_shortname"), "enrolled": seeded.get("enrolled")}


def _print_cost(cost: LevelCost) -> None:
    tiers = ", ".join(f"{role} {ms:.1f}" for role, ms in sorted(cost.cpu_ms_per_request.items())
                      if role not in ("site", "load_generator", "monitoring"))
    xacts = f"{cost.db_xacts_per_request:.1f}" if cost.db_xacts_per_request is not None else "-"
    watching = ""
    if "monitoring" in cost.cpu_cores_busy and cost.cpu_cores_busy.get("site"):
        share = cost.cpu_cores_busy["monitoring"] / cost.cpu_cores_busy["site"]
        watching = f"; monitoring {cost.cpu_cores_busy['monitoring']:.3f} cores ({share:.1%} of the site's)"
    click.echo(f"cost per request: site CPU {cost.cpu_ms_per_request['site']:.1f} ms ({tiers}); "
               f"DB transactions {xacts}; load generator {cost.cpu_ms_per_request['load_generator']:.1f} ms; "
               f"host CPU {cost.host_cpu_pct:.0f}% of {cost.host_cpus * 100}%{watching}")


def _tidy_forum(target: Target | None, target_path: Path, journey: str) -> None:
    """After a run on this kit's own site: delete the replies it posted (see remove_replies)."""
    if target is None or journey != "moodle":
        return
    try:
        removed = remove_replies(target, target_path)
    except KitError as exc:     # the site is down (a fault test stopped it): the run's result stands
        click.secho(f"forum: the run's replies were not removed: {exc}", fg="yellow")
        return
    if removed is None:
        click.secho("forum: the run's replies were not removed (the site's image predates it: `kit upgrade`)",
                    fg="yellow")
    else:
        click.echo(f"forum: removed the run's {removed} replies (every run starts from the seeded forum)")


def level_entry(result: lt.RunResult, cost: LevelCost | None) -> dict:
    """One level of a capacity report: locust's figures and, when measured, what they cost."""
    return {"users": result.users, "passed": result.passed, "p95_ms": result.total.p95, "p50_ms": result.total.p50,
            "avg_ms": result.total.avg, "rps": result.total.rps, "failures": result.total.failures,
            "requests": result.total.requests, "cost": cost.as_dict() if cost else None}


@loadtest.command(name="run")
@click.option("--users", type=click.IntRange(1, 100000), default=20, show_default=True, help="Concurrent users.")
@click.option("--spawn-rate", type=float, default=5, show_default=True, help="Users started per second.")
@click.option("--duration", default="1m", show_default=True, help="Run time, e.g. 60s, 2m.")
@click.option("--shape", type=click.Choice(["steady", "surge"]), default="steady", show_default=True)
@click.option("--peak", type=click.IntRange(1, 100000), default=100, show_default=True, help="surge: top user count.")
@click.option("--step", type=click.IntRange(1, 100000), default=10, show_default=True, help="surge: users added per step.")
@click.option("--step-time", default="30s", show_default=True, help="surge: time per step.")
@click.option("--window", default="60s", show_default=True, help="exam: login window before the exam starts.")
@_common
def run_cmd(users: int, spawn_rate: float, duration: str, shape: str, peak: int, step: int, step_time: str,
            window: str, url: str | None, target_file: str | None, journey: str, think: str, slos: tuple[str, ...],
            processes: int, yes: bool, site_path: str) -> None:
    """One load run; prints a per-step table and exits non-zero when an SLO is missed."""
    parsed_slos = _parse_slos(slos, site_path)
    duration_s, step_time_s, window_s = (lt.parse_duration(d) for d in (duration, step_time, window))
    lt.ensure_locustfile()
    site, target, host, host_header, target_path, password, out_base, name = _prepare(site_path, url, target_file,
                                                                                       yes)
    if journey == "exam":
        duration_s = max(duration_s, window_s + 60)
    job = lt.LocustJob(host=host, target_file=target_path, password=password, out_dir=lt.report_dir(out_base, name),
                       users=users, spawn_rate=spawn_rate if journey == "moodle" else max(spawn_rate, users),
                       duration_s=duration_s, journey=journey, think=think, processes=processes, shape=shape,
                       peak=peak, step=step, step_time_s=step_time_s, window_s=window_s, host_header=host_header,
                       public_url=site.url if host_header and site else None)
    meter = _meter(site, target, url)
    before = meter.snapshot() if meter else None
    started = time.time()
    cost = None
    try:
        result = lt.run_locust(job, parsed_slos, f"{journey} journey")
        ended = time.time()
        if meter and before:    # read before the tidy-up, whose work is not the run's
            cost = meter.cost(before, meter.snapshot(), result.total.requests)
    finally:
        _tidy_forum(target, target_path, journey)
    lt.print_table(result)
    summary_file = job.out_dir / "summary.json"
    summary = json.loads(summary_file.read_text())
    if cost is not None and site is not None:
        _print_cost(cost)
        summary["cost"], summary["site"] = cost.as_dict(), _site_facts(site)
    server = _server_side(target, started, ended)
    if server is not None:
        click.echo("server side (edge, Prometheus): "
                   + (f"p95 {server['p95_ms']:.0f}ms" if server["p95_ms"] is not None else "p95 -")
                   + f", {server['requests'] or 0:.0f} requests"
                   + f", {server['errors_5xx'] or 0:.0f} 5xx")
        summary["server_side"] = server
    summary_file.write_text(json.dumps(summary, indent=2) + "\n")
    click.echo(f"reports: {job.out_dir}/ (report.html, locust_stats.csv, summary.json)")
    if result.slo_missed:
        for missed in result.slo_missed:
            click.secho(f"SLO {missed}", fg="red")
        raise OperationFailed("SLO missed: " + "; ".join(result.slo_missed))
    click.secho("all SLOs met: " + ", ".join(s.describe() for s in parsed_slos), fg="green")


@loadtest.command()
@click.option("--start", type=click.IntRange(1, 100000), default=10, show_default=True, help="First user level.")
@click.option("--step", type=click.IntRange(1, 100000), default=10, show_default=True, help="Users added per level.")
@click.option("--max-users", type=click.IntRange(1, 100000), default=200, show_default=True, help="Highest level tried.")
@click.option("--levels", "levels_text", default=None, metavar="N,N,...",
              help="Explicit user levels to try in order (instead of --start/--step/--max-users).")
@click.option("--refine/--no-refine", default=False, show_default=True,
              help="After a missed level, try the level halfway back (a finer answer for one more level).")
@click.option("--step-time", default="60s", show_default=True, help="Run time per level.")
@click.option("--spawn-rate", type=float, default=10, show_default=True)
@_common
def capacity(start: int, step: int, max_users: int, levels_text: str | None, refine: bool, step_time: str,
             spawn_rate: float, url: str | None,
             target_file: str | None, journey: str, think: str, slos: tuple[str, ...], processes: int, yes: bool,
             site_path: str) -> None:
    """Step the load up until an SLO fails; report the highest user count that met every SLO."""
    parsed_slos = _parse_slos(slos, site_path)
    step_s = lt.parse_duration(step_time)
    lt.ensure_locustfile()
    site, target, host, host_header, target_path, password, out_base, name = _prepare(site_path, url, target_file,
                                                                                       yes)
    levels = _parse_levels(levels_text) if levels_text else list(range(start, max_users + 1, step))
    meter = _meter(site, target, url)
    budget = (len(levels) + refine) * (step_s + 20)
    click.secho(f"capacity search: {len(levels)} levels ({levels[0]}..{levels[-1]} users), {step_s:.0f}s each; "
                f"at most {budget / 60:.1f} min", bold=True)
    started = time.monotonic()
    base_dir = lt.report_dir(out_base, name)
    best, results = 0, []
    costs: dict[int, LevelCost] = {}
    queue = list(levels)
    while queue:
        level = queue.pop(0)
        job = lt.LocustJob(host=host, target_file=target_path, password=password, out_dir=base_dir / f"users-{level:05d}",
                           users=level, spawn_rate=spawn_rate, duration_s=step_s, journey=journey, think=think,
                           processes=processes, host_header=host_header,
                           public_url=site.url if host_header and site else None)
        before = meter.snapshot() if meter else None
        try:
            result = lt.run_locust(job, parsed_slos, f"level {level}")
            if meter and before:
                costs[level] = meter.cost(before, meter.snapshot(), result.total.requests)
        finally:
            _tidy_forum(target, target_path, journey)
        lt.print_table(result)
        results.append(result)
        if not result.passed:
            click.secho("  missed: " + "; ".join(result.slo_missed), fg="red")
            halfway = (best + level) // 2
            if refine and best and best < halfway < level and halfway not in {r.users for r in results}:
                refine, queue = False, [halfway]
                click.echo(f"  refining: trying {halfway} users")
                continue
            break
        best = max(best, level)
    elapsed = time.monotonic() - started
    results.sort(key=lambda r: r.users)
    summary = {"capacity_users": best, "slos": [s.describe() for s in parsed_slos], "elapsed_s": round(elapsed, 1),
               "announced_max_s": round(budget), "journey": journey, "think": think,
               "site": _site_facts(site) if meter else None, "data": _data_facts(target_path),
               "levels": [level_entry(r, costs.get(r.users)) for r in results]}
    base_dir.mkdir(parents=True, exist_ok=True)
    (base_dir / "capacity.json").write_text(json.dumps(summary, indent=2) + "\n")
    click.echo(f"{'users':>6} {'req/s':>7} {'p95':>8} {'fails':>6} {'site CPU/req':>13} {'host CPU':>9}  result")
    for r in results:
        cost = costs.get(r.users)
        cpu = f"{cost.cpu_ms_per_request['site']:>11.1f}ms {cost.host_cpu_pct:>8.0f}%" if cost else f"{'-':>13} {'-':>9}"
        click.echo(f"{r.users:>6} {r.total.rps:>7.2f} {r.total.p95:>6.0f}ms {r.total.failures:>6} {cpu}  "
                   f"{'ok' if r.passed else 'MISSED'}")
    click.secho(f"capacity: {best} concurrent users met {', '.join(s.describe() for s in parsed_slos)} "
                f"(searched in {elapsed / 60:.1f} min; report {base_dir})", bold=True)
    if best == 0:
        raise OperationFailed(f"no level met the SLOs, not even {levels[0]} users")
