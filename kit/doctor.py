"""Preflight checks, run by `kit doctor` and by `kit up` before it changes anything: the
same function gives both their verdict, so doctor says FAIL wherever `up` would refuse.

Each check returns one line: what is wrong and how to fix it.
"""
from __future__ import annotations

import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kit.config import Site, load_secrets
from kit.errors import KitError
from kit.sizing import PHP_WORKER_MB, Tuning, pg_to_kb

if TYPE_CHECKING:
    from kit.targets import Target

MIN_FREE_DISK_GB = 5


@dataclass
class Check:
    name: str
    ok: bool
    message: str
    warn: bool = False     # ok, but worth a person's look (printed "warn"; refuses nothing)


def is_debian_like() -> bool:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return False
    return any(line.startswith(("ID=debian", "ID=ubuntu", "ID_LIKE=debian")) for line in text.splitlines()) \
        or "ID_LIKE=\"debian" in text


def check_docker() -> Check:
    from kit.engine import Engine

    try:
        engine = Engine.local()
        return Check("docker", True, f"Docker engine {engine.version()} reachable")
    except KitError as exc:
        detail = str(exc)
    if is_debian_like():
        fix = "start it (`service docker start` or `dockerd &`), or let `kit up --yes` install docker.io"
    else:
        fix = f"install Docker Engine for {platform.system()} (https://docs.docker.com/engine/install/) and start it"
    return Check("docker", False, f"{detail}: {fix}")


def check_disk(site: Site) -> Check:
    target = Path("/var/lib/docker") if Path("/var/lib/docker").exists() else site.site_dir
    free_gb = shutil.disk_usage(target).free / 1024**3
    if free_gb < MIN_FREE_DISK_GB:
        return Check("disk", False, f"only {free_gb:.1f} GB free on {target}: images and data need "
                                    f"{MIN_FREE_DISK_GB} GB; free some space")
    return Check("disk", True, f"{free_gb:.0f} GB free on {target}")


def check_memory(site: Site, tuning: Tuning) -> Check:
    need_mb = (tuning.php_children_total * PHP_WORKER_MB + pg_to_kb(tuning.postgres["shared_buffers"]) // 1024
               + tuning.redis_maxmemory_mb + 1024)
    have_mb = tuning.host.memory_mb
    if need_mb > have_mb:
        return Check("memory", False, f"the plan needs ~{need_mb} MB but the host has {have_mb} MB: "
                                      "lower `users` or set host.memory_gb to the real size")
    return Check("memory", True, f"plan needs ~{need_mb} MB of {have_mb} MB")


def check_capacity(target: Target) -> Check:
    """Whether the planned site holds site.yaml's users at its SLO (a warning, never a refusal:
    ops may open a site knowingly short, and the figure is often assumed)."""
    from kit import capacity

    try:
        found = capacity.estimate(target.site, target.tuning)
    except KitError as exc:
        return Check("capacity", True, f"not estimated: {exc}", warn=True)
    return Check("capacity", True, found.line(), warn=found.short)


def check_moodle_source(site: Site) -> Check:
    """The code `kit up` would build, opened now: a folder, a tarball read to its end, or a
    git ref that the remote has."""
    from kit.images import check_git_ref, check_moodle_tarball, check_moodle_tree

    kind = site.moodle.source_kind()
    try:
        if kind == "git":
            commit = check_git_ref(site)
            return Check("moodle", True, f"Moodle from git {site.moodle.source} @ {site.moodle.ref} ({commit[:12]})")
        if kind == "tarball":
            release = check_moodle_tarball(site.moodle_source_path)
            return Check("moodle", True, f"Moodle {release} from tarball {site.moodle_source_path}")
        release = check_moodle_tree(site.moodle_source_path)
    except KitError as exc:
        return Check("moodle", False, str(exc))
    return Check("moodle", True, f"Moodle {release} at {site.moodle_source_path}")


def check_secrets(site: Site) -> Check:
    try:
        load_secrets(site)
    except KitError as exc:
        return Check("secrets", False, str(exc))
    return Check("secrets", True, f"{site.secrets_file} (owner-only)")


def check_signin(site: Site) -> Check:
    """The sign-in settings render (their CA files are readable PEM): `kit up` mounts them."""
    from kit import signin

    try:
        signin.ldap_ca(site)
        signin.outbound_ca(site)
        methods = signin.settings(site)["enabled"]
    except KitError as exc:
        return Check("sign-in", False, str(exc))
    extra = (f", MFA for admins: {site.auth.mfa.admins}" if site.auth.mfa.admins != "off" else "")
    return Check("sign-in", True, f"Moodle accounts{''.join(', ' + m for m in methods)}{extra}")


def check_owner(target: Target) -> Check:
    from kit import identity

    try:
        identity.check(target.site, target.found(), command="up")
    except KitError as exc:
        return Check("owner", False, str(exc).replace("refusing `kit up`", "`kit up` would refuse"))
    me = identity.load(target.site)
    return Check("owner", True, f"this folder manages site {target.site.name!r}" if me
                 else f"no site {target.site.name!r} runs yet: `kit up` creates it")


def preflight(target: Target) -> list[Check]:
    """Everything `kit up` checks before it changes anything, in the order it checks them."""
    site = target.site
    checks = [check_secrets(site), check_signin(site), check_moodle_source(site), check_disk(site)]
    try:
        own = target.preflight()
    except KitError as exc:
        own = [Check("target", False, str(exc))]
    checks += own
    checks.append(check_capacity(target))
    unreachable = {"docker", "helm", "cluster", "target"}
    if not any(c.name in unreachable for c in own if not c.ok):   # it needs the engine or cluster
        checks.insert(0, check_owner(target))
    return checks
