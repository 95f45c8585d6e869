"""Small read-only probes of the Docker engine through its CLI (no secrets involved)."""
from __future__ import annotations

import json
import shutil
from typing import Callable

from kit.runner import capture


def cli_present() -> bool:
    return shutil.which("docker") is not None


def engine_reachable() -> tuple[bool, str]:
    if not cli_present():
        return False, "the docker CLI is not installed"
    result = capture(["docker", "info", "--format", "{{.ServerVersion}}"], check=False, timeout=20)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no answer"])[-1]
        return False, reason
    return True, result.stdout.strip()


def site_containers(site_name: str, via: Callable[[list[str]], list[str]] = list) -> list[dict]:
    """Containers labelled for this site: name, role, state, health, image.
    `via` turns a docker argv into one that runs on another machine (hosts target)."""
    out = capture(via(["docker", "ps", "-a", "--filter", f"label=kit.site={site_name}", "--format", "{{.Names}}"]),
                  check=False)
    names = [n for n in out.stdout.split() if n]
    if not names:
        return []
    fmt = ("{{json .Name}}|{{json .Config.Labels}}|{{json .State.Status}}|"
           "{{if .State.Health}}{{json .State.Health.Status}}{{else}}\"none\"{{end}}|{{json .Config.Image}}|"
           "{{json .State.StartedAt}}")
    info = capture(via(["docker", "inspect", "--format", fmt, *names]), check=False)
    rows = []
    for line in info.stdout.splitlines():
        name, labels, state, health, image, started = (json.loads(p) for p in line.split("|"))
        rows.append({"name": name.lstrip("/"), "role": (labels or {}).get("kit.role", "?"), "state": state,
                     "health": health, "image": image, "started": started})
    return sorted(rows, key=lambda r: (r["role"], r["name"]))


def psql(db_container: str, sql: str, timeout: float = 30,
         via: Callable[[list[str]], list[str]] = list) -> str:
    """Run one query as the postgres superuser over the container's local socket."""
    result = capture(via(["docker", "exec", "-u", "postgres", db_container, "psql", "-d", "moodle", "-tAX",
                          "-v", "ON_ERROR_STOP=1", "-c", sql]), timeout=timeout)
    return result.stdout.strip()
