"""Seeding with Moodle's own generator inside the site's app container, idempotently."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import click

from kit.config import Site
from kit.errors import KitError
from kit.runner import capture, run

SIZES = ("XS", "S", "M", "L", "XL", "XXL")
DISCUSSIONS = 25    # replies spread over this many, so a long run does not grow one thread


def target_file(site: Site) -> Path:
    return site.state_dir / "loadtest-target.json"


def _exec(site: Site, *args: str) -> list[str]:
    from kit.drivers.hosts import on_host

    web = f"{site.prefix}-web-1"
    return on_host(site, web, ["docker", "exec", "-u", "www-data", web, *args])


def read_target(site: Site) -> dict | None:
    """The seeded course, activities and users as JSON, or None when not seeded."""
    result = capture(_exec(site, "php", "/opt/kit/loadtest_target.php"), check=False, timeout=120)
    if result.returncode == 3:
        return None
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise KitError(f"cannot read the load-test target from {site.prefix}-web-1: {reason[0]} (is the site up?)")
    return json.loads(result.stdout)


def seed(site: Site, size: str) -> dict:
    if size not in SIZES:
        raise KitError(f"--size {size!r}: use one of {', '.join(SIZES)}")
    target = read_target(site)
    if target is None:
        click.echo(f"seeding with Moodle's generator (maketestsite --size={size}); this takes minutes")
        run(_exec(site, "php", "admin/tool/generator/cli/maketestsite.php", f"--size={size}", "--fixeddataset",
                  "--bypasscheck", "--filesizelimit=1000", "--quiet"))
        target = read_target(site)
        if target is None:
            raise KitError("Moodle's generator finished but no testcourse_* course exists")
    else:
        click.echo(f"already seeded: {target['course_shortname']} with {target['enrolled']} enrolled, "
                   f"{target['users']['count']} generated users")
    # The exam quiz is checked every time (idempotent): questions may be missing.
    run(_exec(site, "php", "/opt/kit/seed_exam.php", str(target["course_id"])))
    run(_exec(site, "php", "/opt/kit/seed_discussions.php", str(target["forum_cmid"]), str(DISCUSSIONS)))
    target = read_target(site) or target
    path = target_file(site)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(target, indent=2) + "\n")
    click.echo(f"target written to {path}")
    return target


def saved_target(site: Site) -> Path:
    path = target_file(site)
    if not path.exists():
        raise KitError(f"{path}: the site is not seeded for load tests; run `kit loadtest seed` first")
    return path


def is_local_url(url: str) -> bool:
    import ipaddress
    import socket
    from urllib.parse import urlparse

    host = urlparse(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    local = {"127.0.0.1", "::1"}
    try:
        local |= set(subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout.split())
    except (OSError, subprocess.SubprocessError):
        pass
    return all(ipaddress.ip_address(a).is_loopback or a in local for a in addresses)
