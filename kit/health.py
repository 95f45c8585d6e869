"""Is the site serving? Real checks: a Moodle page through nginx and php-fpm, php-fpm's
ping, PostgreSQL and Redis health, and the adhoc queue (count and oldest task age).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

import requests

from kit.drivers import hosts
from kit.config import Site
from kit.errors import CommandFailed

LOGIN_MARKUP = 'name="logintoken"'


def local_base_url(site: Site) -> str:
    """Where this host reaches the site's edge proxy (the public URL may point at a proxy)."""
    host = "127.0.0.1" if site.http.bind in ("0.0.0.0", "::") else site.http.bind
    if site.target == "hosts":
        host = site.hosts.with_role("edge")[0].address
    return f"http://{host}:{site.http.port}"


def http_check(site: Site, timeout: float = 10) -> tuple[bool, str]:
    url = local_base_url(site) + "/login/index.php"
    headers = {"Host": urlparse(site.url).netloc}
    if site.tls_at_proxy:
        headers["X-Forwarded-Proto"] = "https"
    try:
        resp = requests.get(url, headers=headers, timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        return False, f"login page unreachable at {url}: {type(exc).__name__}"
    if resp.status_code != 200:
        return False, f"login page answered HTTP {resp.status_code} (expected 200)"
    if LOGIN_MARKUP not in resp.text:
        return False, "login page has no Moodle login form (maintenance mode, or an error page)"
    return True, f"login page 200 in {resp.elapsed.total_seconds() * 1000:.0f} ms"


@dataclass
class Status:
    url: str
    ready: bool
    reason: str
    http: str = ""
    containers: list[dict] = field(default_factory=list)
    queue: dict = field(default_factory=dict)
    moodle_release: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def queue_depth(site: Site) -> dict:
    """Adhoc queue the way Moodle's own check (tool_task adhocqueue) sees it: every queued
    task, and the age of the most overdue one (now - nextruntime); plus due and failing."""
    sql = ("select count(*), greatest(0, coalesce(max(extract(epoch from now())::bigint - nextruntime), 0)), "
           "count(*) filter (where nextruntime <= extract(epoch from now())), "
           "count(*) filter (where faildelay > 0) from mdl_task_adhoc")
    try:
        queued, oldest, due, failing = hosts.psql(site, sql).split("|")
    except (CommandFailed, ValueError):
        return {}
    return {"queued": int(queued), "due": int(due), "oldest_age_s": int(oldest), "failing": int(failing)}


def release(site: Site) -> str:
    try:
        return hosts.psql(site, "select value from mdl_config where name = 'release'")
    except CommandFailed:
        return ""


def status(site: Site) -> Status:
    containers = hosts.containers(site)
    http_ok, http_msg = http_check(site)
    problems = []
    if not containers:
        problems.append("no containers: the site is not up (run `kit up`)")
    for c in containers:
        if c["role"] == "install":
            continue
        if c["state"] != "running":
            problems.append(f"{c['name']} is {c['state']}")
        elif c["health"] not in ("healthy", "none"):
            problems.append(f"{c['name']} is {c['health']}")
    if not http_ok:
        problems.append(http_msg)
    ready = not problems
    return Status(
        url=site.url or "", ready=ready, reason="serving" if ready else "; ".join(problems),
        http=http_msg, containers=containers,
        queue=queue_depth(site) if containers else {},
        moodle_release=release(site) if containers else "",
    )


def wait_ready(site: Site, timeout_s: float = 180, interval_s: float = 2) -> tuple[bool, str]:
    """Wait until the site is what `kit status` calls ready: every container running and
    healthy (restarted ones pass their first health check) and the real HTTP check passing
    (after a rollout or a restore, caches warm on first hit)."""
    deadline = time.monotonic() + timeout_s
    msg = ""
    while time.monotonic() < deadline:
        current = status(site)
        if current.ready:
            return True, current.http
        msg = current.reason
        time.sleep(interval_s)
    return False, msg
