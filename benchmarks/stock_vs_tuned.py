#!/usr/bin/env python3
"""Stock vs tuned: the same Moodle, data and journey on this host, measured in turn.

    MOODLE_SRC=~/moodle-src/4.5.6 .venv/bin/python benchmarks/stock_vs_tuned.py [--levers]

For each profile it runs what an operator would: `kit init`, `kit up`, `kit loadtest seed
--size S` (XS: --size), a warm-up, `kit loadtest capacity` (p95 <= 1 s, errors <= 1 %, 60 s per level)
and a saturation run. Then it prints one table with both profiles and the ratios, and
what `kit plan --from-report` predicts from the tuned run's report. `--levers` (or
`--levers-only`) also measures each lever alone on top of the stock profile at a fixed
load, then every lever together, then the tuned profile as the kit sets it on this target
(some levers off where they were measured not to pay), on the same site.

Both sites are up for the whole run; the one not being measured is frozen with `docker
pause` (its cgroups get no CPU, so its cron and health checks cost the other nothing), and
with --repeats the capacity searches alternate stock, tuned, stock, tuned...: this host's
CPU speed drifts from minute to minute (a fixed loop took 0.70-1.07 s), and alternating
puts both profiles in the same minutes rather than one in a fast hour and one in a slow one.
`--head-to-head N` then runs the tuned default and the cheapest single lever N times each,
alternately, for the "as cheap as its best lever" check.

Figures, not pass/fail: this is a benchmark, not a test. Load goes only to 127.0.0.1.
Both sites are removed at the end (with their data) unless --keep.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from kit.config import LEVERS as KIT_LEVERS

KIT = str(Path(sys.executable).parent / "kit")
PROFILES = ("stock", "tuned")
LEVERS = tuple(KIT_LEVERS)     # the kit's own list: a new lever is measured without editing this file


def kit(site_dir: Path, *args: str, check: bool = True) -> int:
    """Run one kit command in the site's folder, streaming its output."""
    print(f"\n$ kit {' '.join(args)}   (in {site_dir})", flush=True)
    proc = subprocess.run([KIT, *args], cwd=site_dir)
    if check and proc.returncode != 0:
        raise SystemExit(f"kit {' '.join(args)} failed with exit code {proc.returncode}")
    return proc.returncode


def newest(folder: Path, name: str, since: float) -> dict:
    """The report file the last command wrote (reports/<site>/<stamp>/.../name)."""
    found = [p for p in folder.rglob(name) if p.stat().st_mtime >= since]
    if not found:
        raise SystemExit(f"no {name} written under {folder}")
    return json.loads(max(found, key=lambda p: p.stat().st_mtime).read_text())


def set_performance(site_dir: Path, profile: str, levers: dict[str, bool]) -> None:
    path = site_dir / "site.yaml"
    data = yaml.safe_load(path.read_text())
    data["performance"] = {"profile": profile, **({"levers": levers} if levers else {})}
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def site_containers(profile: str) -> list[str]:
    """The containers of the benchmark's site for this profile (kit-kb-<profile>-*), running or paused."""
    out = subprocess.run(["docker", "ps", "--format", "{{.Names}}", "--filter", f"name=^kit-kb-{profile}-"],
                         capture_output=True, text=True).stdout
    return sorted(out.split())


def freeze(profile: str, frozen: bool, *, check: bool = True) -> None:
    """docker pause (or unpause) one site: a frozen site takes no CPU from the one measured."""
    names = site_containers(profile)
    out = subprocess.run(["docker", "inspect", "--format", "{{.Name}} {{.State.Paused}}", *names],
                         capture_output=True, text=True).stdout if names else ""
    paused = dict(line.lstrip("/").split() for line in out.splitlines() if line.strip())
    todo = [name for name, state in paused.items() if (state == "true") != frozen]
    if todo:
        proc = subprocess.run(["docker", "pause" if frozen else "unpause", *todo], capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise SystemExit(f"docker {'pause' if frozen else 'unpause'} kb-{profile}: {proc.stderr.strip()}")


def only(measured: str, profiles: list[str]) -> None:
    """Freeze every other profile's site, thaw this one's, and let it settle (health checks, cron)."""
    for profile in profiles:
        if profile != measured:
            freeze(profile, True)
    freeze(measured, False)
    time.sleep(5)


def run_level(site_dir: Path, users: int, seconds: int) -> dict:
    started = time.time()
    kit(site_dir, "loadtest", "run", "--users", str(users), "--duration", f"{seconds}s", "--spawn-rate", "10",
        "--slo", "p95=1s", "--slo", "errors=1%", check=False)
    return newest(site_dir / "reports", "summary.json", started)


def bring_up(site_dir: Path, profile: str, args: argparse.Namespace, port: int) -> None:
    site_dir.mkdir(parents=True, exist_ok=True)
    if not (site_dir / "site.yaml").exists():
        init = ["init", "--name", f"kb-{profile}", "--users", str(args.plan_users), "--bind", "127.0.0.1",
                "--port", str(port), "--moodle-source", args.moodle_source]
        if args.base_image:
            init += ["--base-image", args.base_image]
        kit(site_dir, *init)
    set_performance(site_dir, profile, {})
    kit(site_dir, "up")
    kit(site_dir, "loadtest", "seed", "--size", args.size)
    wait_queue_drained(site_dir)


def wait_queue_drained(site_dir: Path, limit_s: float = 600) -> None:
    """Seeding queues adhoc tasks; their CPU would be counted against the first levels."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        out = subprocess.run([KIT, "status", "--json"], cwd=site_dir, capture_output=True, text=True)
        try:
            due = json.loads(out.stdout)["queue"].get("due", 0)
        except (ValueError, KeyError):
            due = 0
        if not due:
            return
        print(f"waiting for {due} queued tasks from seeding to finish", flush=True)
        time.sleep(10)


def capacity_search(site_dir: Path, profile: str, args: argparse.Namespace, repeat: int) -> tuple[dict, Path]:
    """One warm-up and one `kit loadtest capacity` on one site; (its capacity.json, the file)."""
    print(f"\n== {profile}: warm-up (opcache, caches, connections), not counted", flush=True)
    run_level(site_dir, 10, 30)
    print(f"\n== {profile}: capacity search {repeat + 1} of {args.repeats}", flush=True)
    started = time.time()
    kit(site_dir, "loadtest", "capacity", "--levels", args.levels, "--refine", "--step-time",
        f"{args.level_time}s", "--slo", "p95=1s", "--slo", "errors=1%", check=False)
    found = max((p for p in (site_dir / "reports").rglob("capacity.json") if p.stat().st_mtime >= started),
                key=lambda p: p.stat().st_mtime)
    return json.loads(found.read_text()), found


def finish_profile(site_dir: Path, profile: str, runs: list[tuple[dict, Path]], args: argparse.Namespace,
                   minutes: float) -> dict:
    """The median capacity search stands for the profile; every search's users at SLO give the spread."""
    capacity, capacity_file = sorted(runs, key=lambda run: run[0]["capacity_users"])[(len(runs) - 1) // 2]
    repeats = [run[0]["capacity_users"] for run in runs]
    site_at25 = [cost(lv, "site") for run, _ in runs for lv in run["levels"] if lv["users"] == 25 and lv.get("cost")]
    at25 = next((lv for lv in capacity["levels"] if lv["users"] == 25), None)
    if at25 is None:
        summary = run_level(site_dir, 25, args.level_time)
        at25 = {"users": 25, "p95_ms": summary["total"]["p95"], "failures": summary["total"]["failures"],
                "requests": summary["total"]["requests"], "cost": summary.get("cost")}
    saturated = run_level(site_dir, args.saturation_users, args.saturation_time)
    return {"profile": profile, "capacity": capacity, "capacity_file": str(capacity_file), "at25": at25,
            "capacity_repeats": repeats, "site_ms_at25_repeats": site_at25, "saturated": saturated,
            "minutes_since_start": round(minutes, 1)}


def apply_lever(site_dir: Path, lever: str) -> None:
    """Set the site to one row's configuration and roll it out."""
    if lever == "every lever":
        set_performance(site_dir, "tuned", {name: True for name in LEVERS})
    elif lever.startswith("tuned (default)"):
        set_performance(site_dir, "tuned", {})
    else:
        name = lever.split(" (")[0]
        set_performance(site_dir, "stock", {name: True} if name in LEVERS else {})
    kit(site_dir, "up")


def measure_row(site_dir: Path, lever: str, args: argparse.Namespace) -> dict:
    apply_lever(site_dir, lever)
    run_level(site_dir, args.lever_users, args.lever_warmup)   # after the roll: opcache, caches, connections
    return {"lever": lever, "summary": run_level(site_dir, args.lever_users, args.lever_time)}


def measure_levers(site_dir: Path, args: argparse.Namespace) -> list[dict]:
    """Each lever alone on the stock profile, at a fixed load: what it saves per request."""
    rows = []
    # "every lever" is the tuned profile with all of them forced on; "tuned" is the kit's
    # default for this target (TUNED_OFF_ON_TARGET turns some off); "none" again at the end
    # shows how far one unchanged site drifts between runs.
    for lever in ("none", *LEVERS, "every lever", "tuned (default)", "none (again)"):
        rows.append(measure_row(site_dir, lever, args))
        (args.out / "levers.json").write_text(json.dumps(rows, indent=2))
    singles = [r for r in rows if r["lever"] in LEVERS and cost(r["summary"], "site") == cost(r["summary"], "site")]
    if args.head_to_head and singles:
        best = min(singles, key=lambda r: cost(r["summary"], "site"))["lever"]
        print(f"\n== head to head: the tuned default against the cheapest single lever ({best}), "
              f"{args.head_to_head} times each, alternately", flush=True)
        for turn in range(args.head_to_head):
            for lever in ("tuned (default)", best):
                row = measure_row(site_dir, lever, args)
                rows.append({**row, "lever": f"{lever} (h2h {turn + 1})"})
                (args.out / "levers.json").write_text(json.dumps(rows, indent=2))
    set_performance(site_dir, "stock", {})
    return rows


def head_to_head_table(rows: list[dict]) -> str:
    """min / median / max of site and PostgreSQL CPU per request for each side of the head to head."""
    sides: dict[str, list[dict]] = {}
    for row in rows:
        if " (h2h " in row["lever"]:
            sides.setdefault(row["lever"].split(" (h2h ")[0], []).append(row["summary"])
    if not sides:
        return ""

    def span(values: list[float]) -> str:
        values = [v for v in values if v == v]      # NaN: a level without counters
        if not values:
            return "-"
        return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"

    lines = [f"| {'head to head':28} | {'runs':>4} | {'site ms/req median (min-max)':>28} | "
             f"{'PG ms/req median (min-max)':>26} |", f"|{'-' * 30}|{'-' * 6}|{'-' * 30}|{'-' * 28}|"]
    for side, summaries in sides.items():
        lines.append(f"| {side:28} | {len(summaries):>4} | {span([cost(s, 'site') for s in summaries]):>28} | "
                     f"{span([cost(s, 'db') for s in summaries]):>26} |")
    text = "\n".join(lines)
    print(text)
    return text


def cost(summary: dict, key: str) -> float:
    value = (summary.get("cost") or {}).get("cpu_ms_per_request", {}).get(key)
    return float(value) if value is not None else float("nan")


def php_ms(summary: dict) -> float:
    return cost(summary, "web")


def failures(result: dict) -> int:
    total = sum(lv["failures"] for lv in result["capacity"]["levels"])
    return total + result["saturated"]["total"]["failures"] + (result["at25"].get("failures") or 0)


def table(results: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    stock, tuned = results["stock"], results["tuned"]

    def sat(r: dict, getter) -> float:
        return getter(r["saturated"])

    rows_spec = [
        ("users at SLO (p95<=1s, errors<=1%)", lambda r: float(r["capacity"]["capacity_users"]), "{:.0f}", "higher"),
        ("saturated requests/s", lambda r: sat(r, lambda s: s["total"]["rps"]), "{:.1f}", "higher"),
        ("PHP CPU ms per request", lambda r: sat(r, php_ms), "{:.1f}", "lower"),
        ("PostgreSQL CPU ms per request", lambda r: sat(r, lambda s: cost(s, "db")), "{:.1f}", "lower"),
        ("DB transactions per request",
         lambda r: float((r["saturated"].get("cost") or {}).get("db_xacts_per_request") or "nan"), "{:.1f}", "lower"),
        ("site CPU ms per request (all containers)", lambda r: sat(r, lambda s: cost(s, "site")), "{:.1f}", "lower"),
        ("load generator CPU ms per request", lambda r: sat(r, lambda s: cost(s, "load_generator")), "{:.1f}", "-"),
        ("host CPU at saturation (% of 100 per core)",
         lambda r: float((r["saturated"].get("cost") or {}).get("host_cpu_pct") or "nan"), "{:.0f}", "-"),
        ("site CPU ms per request at 25 users", lambda r: cost(r["at25"], "site"), "{:.1f}", "lower"),
        ("p95 at 25 users (ms)", lambda r: float(r["at25"]["p95_ms"]), "{:.0f}", "lower"),
        ("p95 at saturation (ms)", lambda r: sat(r, lambda s: s["total"]["p95"]), "{:.0f}", "lower"),
        ("failed requests (all runs)", lambda r: float(failures(r)), "{:.0f}", "-"),
    ]
    rows = []
    for label, getter, fmt, better in rows_spec:
        a, b = getter(stock), getter(tuned)
        ratio = "" if better == "-" or not a or a != a or b != b else f"{b / a:.2f}x"
        rows.append((label, fmt.format(a), fmt.format(b), ratio))
    if len(stock.get("capacity_repeats", [])) > 1 or len(tuned.get("capacity_repeats", [])) > 1:
        for index, key in ((0, "capacity_repeats"),
                           (next(i for i, row in enumerate(rows) if row[0].endswith("at 25 users")),
                            "site_ms_at25_repeats")):
            name, first, second, times = rows[index]
            rows[index] = (name, f"{first} {spread(stock, key)}".strip(), f"{second} {spread(tuned, key)}".strip(),
                           times)
    return rows


def spread(result: dict, key: str = "capacity_repeats") -> str:
    """min-max over the repeated capacity searches, beside the median run's figure."""
    runs = result.get(key) or ([result["capacity"]["capacity_users"]] if key == "capacity_repeats" else [])
    runs = [r for r in runs if r == r]
    if not runs:
        return ""
    fmt = "{:.0f}" if key == "capacity_repeats" else "{:.1f}"
    return f"({fmt.format(min(runs))}-{fmt.format(max(runs))})"


def cpu_needed(results: dict[str, dict], users_ratio: float = 2.0, rps_ratio: float = 1.6) -> list[str]:
    """What the asked ratios would cost in CPU at the tuned site's lowest measured cost per request.

    Why: users at SLO cannot exceed what the host's cores can serve. Both figures are lower
    bounds (the cheapest level's CPU per request, requests per user at the capacity level,
    no kernel or Docker overhead), so "over 100 %" means the target is beyond this machine,
    not beyond the tuning.
    """
    stock, tuned = results["stock"], results["tuned"]
    cores = float(tuned["saturated"]["cost"]["host_cpus"])
    levels = [lv for lv in tuned["capacity"]["levels"] if (lv.get("cost") or {}).get("cpu_ms_per_request")]
    if not levels or not stock["capacity"]["capacity_users"]:
        return []
    best = min(levels, key=lambda lv: cost(lv, "site") + cost(lv, "load_generator"))
    ms = cost(best, "site") + cost(best, "load_generator")
    at_capacity = max((lv for lv in levels if lv["passed"]), key=lambda lv: lv["users"], default=best)
    per_user = at_capacity["rps"] / at_capacity["users"]
    users = users_ratio * stock["capacity"]["capacity_users"]
    rps = rps_ratio * stock["saturated"]["total"]["rps"]
    lines = []
    for what, need_rps in ((f"{users_ratio:g}x stock's users at SLO ({users:.0f} users x {per_user:.2f} req/s "
                            f"per user at {at_capacity['users']} users)", users * per_user),
                           (f"{rps_ratio:g}x stock's saturated requests/s ({rps:.1f} req/s)", rps)):
        need = need_rps * ms / 1000
        lines.append(f"CPU needed for {what} at {ms:.0f} ms per request (site + load generator, the tuned "
                     f"site's cheapest level, {best['users']} users): {need:.2f} of {cores:.0f} cores "
                     f"({need / cores:.0%})")
    return lines


def print_table(rows: list[tuple[str, str, str, str]]) -> str:
    lines = [f"| {'figure':42} | {'stock':>12} | {'tuned':>12} | {'tuned/stock':>11} |",
             f"|{'-' * 44}|{'-' * 14}|{'-' * 14}|{'-' * 13}|"]
    lines += [f"| {label:42} | {a:>12} | {b:>12} | {r:>11} |" for label, a, b, r in rows]
    text = "\n".join(lines)
    print(text)
    return text


def lever_table(rows: list[dict]) -> str:
    base = rows[0]["summary"]
    lines = [f"| {'lever alone on stock':28} | {'p95 ms':>7} | {'PHP ms/req':>10} | {'PG ms/req':>9} | "
             f"{'site ms/req':>11} | {'xacts/req':>9} | {'vs stock site CPU':>17} |",
             f"|{'-' * 30}|{'-' * 9}|{'-' * 12}|{'-' * 11}|{'-' * 13}|{'-' * 11}|{'-' * 19}|"]
    for row in rows:
        s = row["summary"]
        xacts = (s.get("cost") or {}).get("db_xacts_per_request")
        change = cost(s, "site") / cost(base, "site") - 1
        lines.append(f"| {row['lever']:28} | {s['total']['p95']:>7.0f} | {php_ms(s):>10.1f} | {cost(s, 'db'):>9.1f} | "
                     f"{cost(s, 'site'):>11.1f} | {xacts if xacts is not None else float('nan'):>9.1f} | "
                     f"{change:>+16.0%} |")
    text = "\n".join(lines)
    print(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moodle-source", default=os.environ.get("MOODLE_SRC",
                                                                  str(Path.home() / "moodle-src" / "4.5.6")))
    parser.add_argument("--base-image", default=None, help="Debian base image (default: the kit's default)")
    parser.add_argument("--out", type=Path, default=Path("/var/tmp/kit-bench") / time.strftime("%Y%m%d-%H%M%S"))
    parser.add_argument("--size", default="S", choices=("XS", "S", "M"),
                        help="course size seeded (Moodle's generator): S is a real 100-student course")
    parser.add_argument("--levels", default="5,10,15,20,25,30,35,40,50,60,70,80,100",
                        help="capacity levels: steps of 5 users near the knee")
    parser.add_argument("--repeats", type=int, default=1,
                        help="capacity searches per profile: the median is reported, min-max beside it")
    parser.add_argument("--level-time", type=int, default=60)
    parser.add_argument("--saturation-users", type=int, default=100)
    parser.add_argument("--saturation-time", type=int, default=90)
    parser.add_argument("--plan-users", type=int, default=100, help="users both sites are planned for (kit init)")
    parser.add_argument("--profiles", default=",".join(PROFILES))
    parser.add_argument("--levers", action="store_true", help="also measure each lever alone on stock")
    parser.add_argument("--levers-only", action="store_true", help="only the levers, on a stock site of their own")
    parser.add_argument("--lever-users", type=int, default=20)
    parser.add_argument("--lever-time", type=int, default=60)
    parser.add_argument("--lever-warmup", type=int, default=60,
                        help="seconds of load after each lever's rollout, not counted (opcache, caches)")
    parser.add_argument("--head-to-head", type=int, default=0, metavar="N",
                        help="with --levers: then the tuned default and the cheapest single lever, N times each")
    parser.add_argument("--keep", action="store_true",
                        help="keep the sites: the last one running, the others stopped with their data")
    parser.add_argument("--from-results", type=Path, metavar="RESULTS_JSON",
                        help="print the table and the CPU check again from a finished run's results.json")
    args = parser.parse_args()
    if args.from_results:
        saved = json.loads(args.from_results.read_text())["profiles"]
        print_table(table(saved))
        print("\n".join(["", *cpu_needed(saved)]))
        return
    if not Path(args.moodle_source, "version.php").exists():
        raise SystemExit(f"{args.moodle_source}: not a Moodle folder (set MOODLE_SRC or --moodle-source)")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"benchmark folder: {args.out}")
    # A kill or a closed terminal still thaws and tidies the sites (the finally below).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    results: dict[str, dict] = {}
    lever_rows: list[dict] = []
    if args.levers_only:
        site_dir = args.out / "levers"
        try:
            bring_up(site_dir, "stock", args, 18490)
            lever_rows = measure_levers(site_dir, args)
        finally:
            if not args.keep:
                kit(site_dir, "down", "--destroy-data", "--yes", check=False)
        print(f"\n== each lever alone on the stock profile, {args.lever_users} users for {args.lever_time}s")
        text = lever_table(lever_rows)
        h2h = head_to_head_table(lever_rows)
        (args.out / "levers.md").write_text(text + ("\n\n" + h2h if h2h else "") + "\n")
        return
    profiles = args.profiles.split(",")
    sites = {profile: args.out / profile for profile in profiles}
    t0 = time.monotonic()
    try:
        for index, profile in enumerate(profiles):
            for other in profiles[:index]:
                freeze(other, True)
            bring_up(sites[profile], profile, args, 18480 + index)
        runs: dict[str, list[tuple[dict, Path]]] = {profile: [] for profile in profiles}
        for repeat in range(args.repeats):         # alternating: both profiles in the same minutes
            for profile in profiles:
                only(profile, profiles)
                runs[profile].append(capacity_search(sites[profile], profile, args, repeat))
        for profile in profiles:
            only(profile, profiles)
            results[profile] = finish_profile(sites[profile], profile, runs[profile], args,
                                              (time.monotonic() - t0) / 60)
            (args.out / "results.json").write_text(json.dumps({"profiles": results, "levers": lever_rows},
                                                              indent=2))
        if "stock" in profiles and args.levers:
            only("stock", profiles)
            lever_rows = measure_levers(sites["stock"], args)
            (args.out / "results.json").write_text(json.dumps({"profiles": results, "levers": lever_rows},
                                                              indent=2))
    finally:
        for profile in profiles:
            freeze(profile, False, check=False)
        for index, profile in enumerate(profiles):
            if not args.keep:
                kit(sites[profile], "down", "--destroy-data", "--yes", check=False)
            elif index < len(profiles) - 1:
                # Kept, but stopped: its cron and workers would take CPU from whatever runs next.
                kit(sites[profile], "down", "--yes", check=False)
    text = ""
    if set(PROFILES) <= set(results):
        print("\n== stock vs tuned (same host, Moodle, data and journey)")
        text = print_table(table(results))
        check = cpu_needed(results)
        print("\n".join(["", *check]))
        text += "\n\n" + "\n".join(check)
        tuned = results["tuned"]
        measured = tuned["capacity"]["capacity_users"]
        print(f"\n== kit plan --from-report {tuned['capacity_file']}")
        proc = subprocess.run([KIT, "plan", "--from-report", tuned["capacity_file"], "--users", str(measured),
                               "--json"], cwd=args.out / "tuned", capture_output=True, text=True)
        if proc.returncode == 0:
            predicted = json.loads(proc.stdout)["predicted_users_at_slo"]
            print(f"predicted users at SLO on this host: {predicted}; measured: {measured} "
                  f"({(predicted - measured) / measured:+.0%})")
            text += f"\n\npredicted users at SLO: {predicted}; measured: {measured}"
        else:
            print(proc.stdout, proc.stderr)
    if lever_rows:
        print("\n== each lever alone on the stock profile, "
              f"{args.lever_users} users for {args.lever_time}s")
        text += "\n\n" + lever_table(lever_rows)
        h2h = head_to_head_table(lever_rows)
        text += "\n\n" + h2h if h2h else ""
    (args.out / "table.md").write_text(text + "\n")
    print(f"\nfigures: {args.out}/results.json, {args.out}/table.md")


if __name__ == "__main__":
    main()
