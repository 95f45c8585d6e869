"""The `local` target: this host's Docker engine, driven by Ansible (connection local)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from kit.config import Site
from kit.errors import KitError
from kit.render import playbooks_dir
from kit.runner import run

RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")


def ansible_env() -> dict[str, str]:
    return {
        "ANSIBLE_CONFIG": str(playbooks_dir() / "ansible.cfg"),
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_FORCE_COLOR": "1" if sys.stdout.isatty() else "0",
    }


def ansible_playbook(site: Site, playbook: str, *, extra: dict[str, str | dict] | None = None,
                     check: bool = False, diff: bool = False, tags: str | None = None,
                     build_dir: Path | None = None) -> dict[str, int]:
    """Run one of the kit's playbooks against build/<site>/ (or a release snapshot),
    streaming its progress. Returns the recap counters (ok/changed/failed) summed over hosts.
    """
    build = build_dir or site.build_dir
    cmd = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i", str(build / "inventory.ini"),
        str(playbooks_dir() / playbook),
        "-e", f"@{build / 'vars.yml'}",
        "-e", f"kit_build_dir={build}",
        "-e", f"kit_secrets_file={site.secrets_file}",
    ]
    for key, value in (extra or {}).items():
        cmd += ["-e", json.dumps({key: value}) if isinstance(value, dict) else f"{key}={value}"]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    if tags:
        cmd += ["--tags", tags]
    lines: list[str] = []
    code = run(cmd, env=ansible_env(), tee=lines, check=False)
    totals = {"ok": 0, "changed": 0, "unreachable": 0, "failed": 0}
    for line in lines:
        match = RECAP.match(re.sub(r"\x1b\[[0-9;]*m", "", line))
        if match:
            for key, idx in (("ok", 2), ("changed", 3), ("unreachable", 4), ("failed", 5)):
                totals[key] += int(match.group(idx))
    if code != 0:
        failed = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines if "FAILED!" in line or "fatal:" in line]
        reason = failed[-1].strip()[:300] if failed else f"ansible-playbook exited {code}"
        raise KitError(f"rollout failed: {reason}")
    if not any(RECAP.match(re.sub(r"\x1b\[[0-9;]*m", "", line)) for line in lines):
        raise KitError("ansible-playbook printed no recap: the rollout did not run (see its output above)")
    return totals


def install_docker(site: Site) -> None:
    """Install Debian's docker.io through the playbook's docker_engine role."""
    ansible_playbook(site, "docker.yml", extra={"docker_engine_install": "true"})


def down(site: Site, *, destroy_data: bool) -> None:
    ansible_playbook(site, "down.yml", extra={"kit_destroy_data": "true" if destroy_data else "false"})
