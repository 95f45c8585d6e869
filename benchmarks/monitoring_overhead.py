#!/usr/bin/env python3
"""What watching the site costs: a USERS-user `kit loadtest run` of MINUTES on a running local
site, with the CPU of its monitoring containers (Prometheus, Alertmanager, the exporters)
against the CPU of the containers that serve Moodle, both from their cgroup counters.

    .venv/bin/python benchmarks/monitoring_overhead.py --site-dir DIR [--users 20] [--minutes 10]

Figures, not pass/fail: mean cores of each side, and the monitoring's share of the site's.
The site needs seeded load-test data (`kit loadtest seed`).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

KIT = str(Path(sys.executable).parent / "kit")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site-dir", type=Path, required=True)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=10)
    args = parser.parse_args()
    run = subprocess.run([KIT, "loadtest", "run", "--users", str(args.users), "--spawn-rate", str(args.users),
                          "--duration", f"{int(args.minutes * 60)}s", "--slo", "errors=1%"],
                         cwd=args.site_dir, capture_output=True, text=True, timeout=int(args.minutes * 60) + 900)
    print(run.stdout[-1500:])
    if run.returncode != 0:
        print(run.stderr[-800:], file=sys.stderr)
    reports = sorted(p for p in (args.site_dir / "reports").glob("*/*") if (p / "summary.json").is_file())
    summary = json.loads((reports[-1] / "summary.json").read_text())
    cores = summary["cost"]["cpu_cores_busy"]
    site, watching = cores["site"], cores.get("monitoring")
    if watching is None:
        sys.exit("no monitoring containers were measured: is monitoring.enabled true and the site up?")
    print(f"{args.users} users for {args.minutes:g} min, {summary['total']['requests']} requests, "
          f"{summary['total']['failures']} failed")
    print(f"site (serving Moodle)  {site:.3f} cores")
    print(f"monitoring             {watching:.3f} cores")
    print(f"monitoring / site      {watching / site:.2%}")
    server = summary.get("server_side") or {}
    if server:
        print(f"edge p95 (Prometheus) {server.get('p95_ms') or 0:.0f} ms vs locust {summary['total']['p95']:.0f} ms")
    return 0 if run.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
