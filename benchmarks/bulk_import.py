#!/usr/bin/env python3
"""A term's import on a running site: COURSES courses from a courses CSV, then USERS accounts
with two enrolments each, through `kit courses import` and `kit users import` (Moodle's own
upload CLIs), then the same users file again (it must create nothing).

    .venv/bin/python benchmarks/bulk_import.py --site-dir DIR [--users 10000] [--courses 20]

Figures, not pass/fail: wall time of each step and accounts per second. The accounts and
courses it makes stay on the site (usernames bench00000..., courses BENCH-01...).
"""
from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KIT = str(Path(sys.executable).parent / "kit")
PASSWORD = "Bench-Pass-2026!"


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def timed(site_dir: Path, *args: str) -> tuple[float, str]:
    started = time.monotonic()
    result = subprocess.run([KIT, *args], cwd=site_dir, capture_output=True, text=True, timeout=4 * 3600)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"kit {' '.join(args)} exited {result.returncode}: {result.stderr.strip()[-500:]}")
    summary = [line for line in result.stdout.splitlines() if line.startswith(("created", "dry run"))]
    return elapsed, (summary or ["?"])[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site-dir", type=Path, required=True, help="Folder of a running site's site.yaml.")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--courses", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        courses = write_csv(folder / "courses.csv", ["shortname", "fullname", "category"],
                            [[f"BENCH-{n:02d}", f"Benchmark course {n}", "1"] for n in range(1, args.courses + 1)])
        users = write_csv(folder / "users.csv",
                          ["username", "password", "firstname", "lastname", "email", "course1", "role1", "course2"],
                          [[f"bench{n:05d}", PASSWORD, f"Bench{n}", "Student", f"bench{n:05d}@bench.kit.test",
                            f"BENCH-{n % args.courses + 1:02d}", "student",
                            f"BENCH-{(n + 7) % args.courses + 1:02d}"] for n in range(args.users)])
        rows = []
        for label, cmd in ((f"courses import ({args.courses})", ["courses", "import", str(courses)]),
                           (f"users dry run ({args.users})", ["users", "import", str(users), "--dry-run"]),
                           (f"users import ({args.users}, 2 enrolments each)", ["users", "import", str(users)]),
                           ("same users file again", ["users", "import", str(users)])):
            elapsed, summary = timed(args.site_dir, *cmd)
            rows.append((label, elapsed, summary))
            print(f"{label:45} {elapsed:8.1f} s   {summary}", flush=True)
    created = next((int(m.group(1)) for _, _, s in rows[2:3] if (m := re.search(r"created (\d+)", s))), 0)
    print(f"\naccounts per second (first import): {created / rows[2][1]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
