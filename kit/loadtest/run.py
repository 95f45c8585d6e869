"""Running locust (its own runner, distributed mode and HTML report) and judging the result
against SLOs. The kit writes no load generator: it prepares locust's environment, reads
locust's CSV, prints a table and exits non-zero when an SLO is missed.
"""
from __future__ import annotations

import csv
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

from kit import ROOT
from kit.config import write_private
from kit.errors import KitError
from kit.runner import run

LOCUSTFILE = ROOT / "loadtests" / "moodle.py"
METRICS = {"p50": "50%", "p66": "66%", "p75": "75%", "p90": "90%", "p95": "95%", "p99": "99%",
           "avg": "Average Response Time", "max": "Max Response Time"}


@dataclass(frozen=True)
class SLO:
    metric: str          # p95, p99, avg... (milliseconds) or errors (fraction of requests)
    limit: float

    def describe(self) -> str:
        return f"errors<={self.limit:.2%}" if self.metric == "errors" else f"{self.metric}<={self.limit:g}ms"


def parse_duration(text: str) -> float:
    """'90', '90s', '2m', '1h30m' -> seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise KitError(f"bad duration {text!r}: use e.g. 90s, 2m, 1h30m")
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * factor[u] for n, u in parts)


def parse_slo(text: str) -> SLO:
    """'p95=1s', 'p99=800ms', 'errors=1%' -> SLO."""
    match = re.fullmatch(r"\s*(\w+)\s*=\s*(.+?)\s*", text)
    if not match:
        raise KitError(f"--slo {text!r}: use METRIC=LIMIT, e.g. p95=1s or errors=1%")
    metric, value = match.group(1).lower(), match.group(2).lower()
    if metric == "errors":
        number = re.fullmatch(r"(\d+(?:\.\d+)?)%", value)
        if not number:
            raise KitError(f"--slo {text!r}: errors takes a percentage, e.g. errors=1%")
        return SLO("errors", float(number.group(1)) / 100)
    if metric not in METRICS:
        raise KitError(f"--slo {text!r}: unknown metric {metric!r} (use {', '.join([*METRICS, 'errors'])})")
    return SLO(metric, parse_duration(value) * 1000)


@dataclass
class StepStats:
    name: str
    requests: int
    failures: int
    rps: float
    p50: float
    p95: float
    p99: float
    avg: float


@dataclass
class RunResult:
    label: str
    users: int
    duration_s: float
    steps: list[StepStats]
    total: StepStats
    slo_missed: list[str] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    out_dir: str = ""
    exam: dict | None = None

    @property
    def passed(self) -> bool:
        return not self.slo_missed

    def as_dict(self) -> dict:
        data = asdict(self)
        data["passed"] = self.passed
        return data


def _num(row: dict, key: str) -> float:
    value = row.get(key, "") or "0"
    return float(value) if value != "N/A" else 0.0


def read_stats(prefix: Path) -> tuple[list[StepStats], StepStats]:
    path = Path(f"{prefix}_stats.csv")
    if not path.exists():
        raise KitError(f"locust wrote no statistics ({path}): see its output above")
    steps, total = [], None
    with path.open() as fh:
        for row in csv.DictReader(fh):
            stats = StepStats(
                name=row["Name"], requests=int(_num(row, "Request Count")), failures=int(_num(row, "Failure Count")),
                rps=_num(row, "Requests/s"), p50=_num(row, "50%"), p95=_num(row, "95%"), p99=_num(row, "99%"),
                avg=_num(row, "Average Response Time"))
            if row["Name"] == "Aggregated":
                total = stats
            else:
                steps.append(stats)
    if total is None:
        total = StepStats("Aggregated", 0, 0, 0, 0, 0, 0, 0)
    return sorted(steps, key=lambda s: s.name), total


def read_failures(prefix: Path) -> list[dict]:
    path = Path(f"{prefix}_failures.csv")
    if not path.exists():
        return []
    with path.open() as fh:
        return [{"step": r["Name"], "error": r["Error"], "count": int(r["Occurrences"])} for r in csv.DictReader(fh)]


def judge(total: StepStats, slos: list[SLO]) -> list[str]:
    missed = []
    for slo in slos:
        if slo.metric == "errors":
            rate = total.failures / total.requests if total.requests else 1.0
            if total.requests == 0 or rate > slo.limit:
                missed.append(f"{slo.describe()} missed: errors were {rate:.2%} of {total.requests} requests")
        else:
            value = {"p50": total.p50, "p95": total.p95, "p99": total.p99, "avg": total.avg}.get(slo.metric)
            if value is None or total.requests == 0 or value > slo.limit:
                missed.append(f"{slo.describe()} missed: {slo.metric} was {value or 0:.0f}ms")
    return missed


def print_table(result: RunResult) -> None:
    head = f"{'step':34} {'reqs':>6} {'req/s':>7} {'p50':>7} {'p95':>7} {'p99':>7} {'fails':>6}"
    click.echo(head)
    click.echo("-" * len(head))
    for s in [*result.steps, result.total]:
        line = (f"{s.name[:34]:34} {s.requests:>6} {s.rps:>7.2f} {s.p50:>5.0f}ms {s.p95:>5.0f}ms "
                f"{s.p99:>5.0f}ms {s.failures:>6}")
        click.secho(line, bold=s is result.total, fg="red" if s.failures else None)
    for f in result.failures[:8]:
        click.secho(f"  failure x{f['count']} in {f['step']}: {f['error'][:140]}", fg="red")
    if result.exam:
        e = result.exam

        def after(seconds: float | None) -> str:
            return f"{seconds:.1f} s after the start" if seconds is not None else "not all"
        click.echo(f"exam: {e['opened']} of {e['students']} attempts open ({after(e['all_open_s'])}), "
                   f"{e['submitted']} submitted ({after(e['all_submitted_s'])})")


@dataclass
class LocustJob:
    host: str
    target_file: Path
    password: str
    out_dir: Path
    users: int = 20
    spawn_rate: float = 5
    duration_s: float = 60
    journey: str = "moodle"
    think: str = "1,3"
    processes: int = 1
    shape: str = "steady"
    peak: int = 0
    step: int = 0
    step_time_s: float = 30
    window_s: float = 60
    host_header: str | None = None
    public_url: str | None = None

    def planned_seconds(self) -> float:
        if self.shape == "surge":
            steps = -(-self.peak // self.step)
            return (steps + 1) * self.step_time_s
        return self.duration_s

    def env(self, password_file: Path) -> dict[str, str]:
        """locust's environment: settings, and where the users' password is (a file, never
        the value: a process's environment is readable by its user)."""
        env = {
            "KIT_LT_TARGET": str(self.target_file), "KIT_LT_PASSWORD_FILE": str(password_file),
            "KIT_LT_JOURNEY": self.journey, "KIT_LT_THINK": self.think,
            "KIT_LT_PROCESSES": str(self.processes), "KIT_LT_WINDOW": str(self.window_s),
            "KIT_LT_SPAWN_RATE": str(self.spawn_rate), "KIT_LT_FAIL_DIR": str(self.out_dir / "failed-pages"),
        }
        if self.journey == "exam":
            env["KIT_LT_EXAM_START"] = str(time.time() + self.window_s + 5)
            env["KIT_LT_EXAM_DIR"] = str(self.out_dir / "exam")
        if self.shape == "surge":
            env.update({"KIT_LT_SHAPE": "surge", "KIT_LT_PEAK": str(self.peak), "KIT_LT_STEP": str(self.step),
                        "KIT_LT_STEP_TIME": str(self.step_time_s)})
        if self.host_header:   # the kit's own site through its local address: see loadtests/moodle.py
            env["KIT_LT_HOST_HEADER"] = self.host_header
            env["KIT_LT_PUBLIC_URL"] = self.public_url or ""
            env["KIT_LT_VERIFY"] = "0"
        return env


def run_locust(job: LocustJob, slos: list[SLO], label: str) -> RunResult:
    """One locust run, headless, bounded by its duration; returns judged stats."""
    job.out_dir.mkdir(parents=True, exist_ok=True)
    prefix = job.out_dir / "locust"
    duration = job.planned_seconds()
    cmd = [str(Path(sys.executable).parent / "locust"), "-f", str(LOCUSTFILE), "--headless",
           "--host", job.host, "--csv", str(prefix), "--html", str(job.out_dir / "report.html"),
           "--run-time", f"{int(duration)}s", "--stop-timeout", "10", "--exit-code-on-error", "0",
           "--only-summary", "--loglevel", "WARNING"]
    if job.shape != "surge":
        cmd += ["--users", str(job.users), "--spawn-rate", str(job.spawn_rate)]
    if job.processes > 1:
        cmd += ["--processes", str(job.processes)]
    started = time.monotonic()
    click.secho(f"==> {label}: {job.users if job.shape != 'surge' else job.peak} users, "
                f"{duration:.0f}s against {job.host}", bold=True)
    with tempfile.TemporaryDirectory(prefix="kit-locust-") as private:
        password_file = Path(private) / "password"
        write_private(password_file, job.password)
        env = job.env(password_file)
        try:
            run(cmd, env={**env, "KIT_LT_PASSWORD": ""}, quiet=True, check=True)
        except KeyboardInterrupt:  # locust got the Ctrl-C too and wrote what it measured
            click.secho(f"==> {label}: stopped by Ctrl-C after {time.monotonic() - started:.0f}s of "
                        f"{duration:.0f}s; the figures cover what ran", fg="yellow", bold=True)
    steps, total = read_stats(prefix)
    result = RunResult(label=label, users=job.users if job.shape != "surge" else job.peak,
                       duration_s=round(time.monotonic() - started, 1), steps=steps, total=total,
                       slo_missed=judge(total, slos), failures=read_failures(prefix), out_dir=str(job.out_dir))
    if job.journey == "exam":
        result.exam = exam_times(job.out_dir / "exam", float(env["KIT_LT_EXAM_START"]), result.users)
    (job.out_dir / "summary.json").write_text(json.dumps(
        {**result.as_dict(), "slos": [s.describe() for s in slos], "journey": job.journey, "shape": job.shape,
         "host": job.host}, indent=2) + "\n")
    return result


def exam_times(folder: Path, start: float, students: int) -> dict:
    """How long after the exam's start the last student had an attempt open, and the last
    submitted it (None until every student did), from what each locust process wrote."""
    opened: list[float] = []
    submitted: list[float] = []
    for part in sorted(folder.glob("exam-*.json")):
        data = json.loads(part.read_text())
        opened += data["opened"]
        submitted += data["submitted"]

    def last(times: list[float]) -> float | None:
        return round(max(times) - start, 1) if times and len(times) >= students else None

    return {"students": students, "opened": len(opened), "submitted": len(submitted),
            "all_open_s": last(opened), "all_submitted_s": last(submitted)}


def report_dir(base: Path, site_name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = base / "reports" / site_name / stamp
    suffix = 1
    while out.exists():
        suffix += 1
        out = base / "reports" / site_name / f"{stamp}-{suffix}"
    return out


def ensure_locustfile() -> None:
    if not LOCUSTFILE.exists():
        raise KitError(f"{LOCUSTFILE} is missing: reinstall the kit from its repository")
    if not (Path(sys.executable).parent / "locust").exists():
        raise KitError("locust is not installed in the kit's environment: pip install locust")


def default_env_password() -> str | None:
    """The generated users' password for a site that is not this folder's: a file named by
    KIT_LT_PASSWORD_FILE, or KIT_LT_PASSWORD itself."""
    path = os.environ.get("KIT_LT_PASSWORD_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise KitError(f"KIT_LT_PASSWORD_FILE {path}: cannot be read ({exc.strerror})") from None
    return os.environ.get("KIT_LT_PASSWORD")
