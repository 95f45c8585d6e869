"""Seeding with Moodle's own generator inside the site's app container, idempotently."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kit.config import Site
from kit.errors import KitError, OperationFailed, UsageError
from kit.loadtest.pages import REPLY_SUBJECT
from kit.runner import hostname_addresses

if TYPE_CHECKING:
    from kit.targets import Target

SIZES = ("XS", "S", "M", "L", "XL", "XXL")
DISCUSSIONS = 25    # replies spread over this many, so a long run does not grow one thread


def target_file(site: Site) -> Path:
    return site.state_dir / "loadtest-target.json"


def read_target(target: Target) -> dict[str, Any] | None:
    """The seeded course, activities and users as JSON, or None when not seeded."""
    code, out = target.moodle_cli(["/opt/kit/loadtest_target.php"], check=False, quiet=True)
    if code == 3:
        return None
    if code != 0:
        reason = out.strip().splitlines()[-1:] or [f"exit code {code}"]
        raise OperationFailed(f"cannot read the load-test target: {reason[0]} (is the site up? `kit status`)")
    data: dict[str, Any] = json.loads(out)
    return data


def seed(target: Target, size: str) -> dict[str, Any]:
    if size not in SIZES:
        raise UsageError(f"--size {size!r}: use one of {', '.join(SIZES)}")
    found = read_target(target)
    fresh = found is None
    if found is None:
        click.echo(f"seeding with Moodle's generator (maketestsite --size={size}); this takes minutes")
        target.moodle_cli(["admin/tool/generator/cli/maketestsite.php", f"--size={size}", "--fixeddataset",
                           "--bypasscheck", "--filesizelimit=1000", "--quiet"])
        found = read_target(target)
        if found is None:
            raise OperationFailed("Moodle's generator finished but no testcourse_* course exists")
    else:
        click.echo(f"already seeded: {found['course_shortname']} with {found['enrolled']} enrolled, "
                   f"{found['users']['count']} generated users")
    # The exam quiz is checked every time (idempotent): questions may be missing.
    target.moodle_cli(["/opt/kit/seed_exam.php", str(found["course_id"])])
    target.moodle_cli(["/opt/kit/seed_discussions.php", str(found["forum_cmid"]), str(DISCUSSIONS)])
    path = target_file(target.site)
    # The generator's size, for the reports (what the figures were measured on); a site
    # seeded before this was recorded keeps "unknown" rather than a guess.
    size_seeded = size if fresh else _saved_size(path)
    found = {**(read_target(target) or found), "size": size_seeded}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(found, indent=2) + "\n")
    click.echo(f"target written to {path}")
    return found


def remove_replies(target: Target, target_path: Path) -> int | None:
    """Delete the replies a load run posted, so the next run walks the same forum as the first.

    Without this, each run leaves a few replies per user in the seeded threads and every
    later level pays for longer discussion pages: the figures drift with the run order.
    Returns how many were removed, or None when the site's image predates the script's
    option (the replies stay; `kit upgrade` brings it).
    """
    try:
        forum_cmid = int(json.loads(target_path.read_text())["forum_cmid"])
    except (OSError, ValueError, KeyError, TypeError):
        raise OperationFailed(f"{target_path}: names no forum (forum_cmid)") from None
    code, out = target.moodle_cli(["/opt/kit/seed_discussions.php", str(forum_cmid), "--remove-replies",
                                   REPLY_SUBJECT], check=False, quiet=True)
    if code != 0:
        reason = (out.strip().splitlines() or [f"exit code {code}"])[-1]
        raise OperationFailed(f"seed_discussions.php --remove-replies: {reason[:200]}")
    match = re.search(r"kit: removed (\d+) load-test replies", out)
    return int(match.group(1)) if match else None


def _saved_size(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("size")
    except (OSError, ValueError, AttributeError):
        return None


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
    local = {"127.0.0.1", "::1"} | hostname_addresses()
    return all(ipaddress.ip_address(a).is_loopback or a in local for a in addresses)
