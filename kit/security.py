"""Moodle's own security checks for `kit doctor`: run inside a web container by
kit/php/security_checks.php, except core_publicpaths, whose paths the kit requests through
the site's edge (what the public can fetch), the way Moodle's check would from wwwroot."""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlparse

import requests
import urllib3

from kit.config import Site
from kit.doctor import Check

SCRIPT = resources.files("kit").joinpath("php/security_checks.php")
FAILING = ("error", "critical")
NAMED = ("warning", "unknown", *FAILING)


def script() -> bytes:
    return SCRIPT.read_bytes()


@dataclass(frozen=True)
class Finding:
    ref: str
    name: str
    status: str      # Moodle's result status: ok, info, na, warning, error, critical, unknown
    summary: str = ""


def parse(out: str) -> list[dict[str, Any]]:
    """The script's JSON line (PHP notices may come before it)."""
    for line in reversed(out.strip().splitlines()):
        if line.startswith("["):
            rows = json.loads(line)
            if isinstance(rows, list):
                return rows
    raise ValueError(f"no JSON from the security checks: {out.strip()[-200:] or 'no output'}")


def probe_public_paths(site: Site, base_url: str, pathsets: list[dict[str, Any]],
                       timeout: float = 10) -> Finding:
    """core_publicpaths, from outside: each path must answer as Moodle expects (404 for the
    files that must not be served; a 403 is as good)."""
    headers = {"Host": urlparse(site.url).netloc}
    if site.tls_at_proxy:
        headers["X-Forwarded-Proto"] = "https"
    wrong: list[str] = []
    with requests.Session() as session, warnings.catch_warnings():
        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
        for pathset in pathsets:
            for expected in ("404", "200"):
                for path in pathset.get(expected) or []:
                    try:
                        got = str(session.head(f"{base_url}/{path}", headers=headers, timeout=timeout,
                                               allow_redirects=False, verify=False).status_code)
                    except requests.RequestException as exc:
                        return Finding("core_publicpaths", "Public paths", "unknown",
                                       f"{base_url} unreachable: {type(exc).__name__}")
                    if got != expected and not (expected == "404" and got == "403"):
                        wrong.append(f"/{path} answered {got} (expected {expected})")
    if wrong:
        return Finding("core_publicpaths", "Public paths", "error",
                       f"{len(wrong)} paths are public: " + ", ".join(wrong[:5]))
    return Finding("core_publicpaths", "Public paths", "ok")


def findings(site: Site, base_url: str, out: str) -> list[Finding]:
    rows = parse(out)
    found = []
    for row in rows:
        if row.get("status") == "probe":
            found.append(probe_public_paths(site, base_url, row.get("pathsets") or []))
        else:
            found.append(Finding(str(row.get("ref")), str(row.get("name")), str(row.get("status")),
                                 " ".join(str(row.get("summary") or "").split())))
    return found


def verdict(found: list[Finding]) -> Check:
    """FAIL on an error or a critical finding; warnings and checks that could not decide are named."""
    named = [f"{f.status}: {f.ref} ({f.summary[:120]})" for f in found if f.status in NAMED]
    failing = [f for f in found if f.status in FAILING]
    counted = f"{len(found)} checks"
    if failing:
        return Check("security", False, f"Moodle's security checks ({counted}) found problems: " + "; ".join(named)
                     + " (Site administration > Reports > Security checks)")
    return Check("security", True, f"Moodle's security checks ({counted}): "
                 + ("; ".join(named) if named else "all ok"))
