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


def test_every_docker_container_task_with_env_hides_its_log():
    """Container env holds secrets: every task that sets env must be no_log."""
    import yaml

    for path in PLAYBOOKS.glob("roles/*/tasks/*.yml"):
        for task in _tasks(yaml.safe_load(path.read_text()) or []):
            module = task.get("community.docker.docker_container")
            if isinstance(module, dict) and "env" in module:
                assert task.get("no_log") is True, f"{path}: {task.get('name')}"


def _tasks(items):
    for item in items:
        yield item
        for key in ("block", "rescue", "always"):
            yield from _tasks(item.get(key, []))

