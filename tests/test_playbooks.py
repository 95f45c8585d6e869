"""Playbooks: valid syntax, ansible-lint clean (production profile), check mode supported."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kit import ROOT
from kit.targets.ansible import ansible_env

PLAYBOOKS = ROOT / "playbooks"
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("playbook", ["site.yml", "down.yml", "docker.yml"])
def test_syntax(playbook):
    result = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", "localhost,",
                             str(PLAYBOOKS / playbook)], capture_output=True, text=True,
                            env={**__import__("os").environ, **ansible_env()}, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_production_profile():
    lint = BIN / "ansible-lint"
    if not lint.exists():
        pytest.fail("ansible-lint is missing: install the test extras (pip install -e .[test])")
    result = subprocess.run([str(lint), "--nocolor", "--profile", "production", "site.yml", "down.yml", "docker.yml"],
                            cwd=PLAYBOOKS, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_no_container_gets_a_secret_in_its_environment():
    """Secrets are files (kit_secret_files): `docker inspect` and Moodle's PHP info page show a
    container's environment, so no env of any container may name a secret."""
    import yaml

    envs = [("group_vars kit_moodle_env", yaml.safe_load((PLAYBOOKS / "group_vars" / "all.yml").read_text())
             ["kit_moodle_env"])]
    for path in PLAYBOOKS.glob("roles/*/*/*.yml"):
        text = path.read_text()
        data = yaml.safe_load(text) or []
        if isinstance(data, dict):   # defaults: their env values are templates
            envs += [(f"{path}: {k}", v) for k, v in data.items() if k.endswith("_env")]
            continue
        for task in _tasks(data):
            module = task.get("community.docker.docker_container")
            if isinstance(module, dict) and "env" in module:
                envs.append((f"{path}: {task.get('name')}", module["env"]))
    assert len(envs) >= 5
    for where, env in envs:
        assert "kit_secrets" not in str(env) and "password" not in str(env).lower(), where


def _tasks(items):
    for item in items:
        yield item
        for key in ("block", "rescue", "always"):
            yield from _tasks(item.get(key, []))

