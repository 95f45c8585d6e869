"""Shared fixtures: a site folder per test, and the real Moodle tree for end-to-end tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from kit.sizing import HostResources


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def fake_moodle(tmp_path: Path) -> Path:
    """The few files that make a folder look like Moodle to the kit's checks (no Moodle code)."""
    root = tmp_path / "moodle"
    (root / "lib").mkdir(parents=True)
    (root / "admin" / "cli").mkdir(parents=True)
    (root / "version.php").write_text("<?php\n$version  = 2024100706.00;\n$release  = '4.5.6 (Build: 20250811)';\n")
    (root / "lib" / "setup.php").write_text("<?php\n")
    (root / "admin" / "cli" / "install_database.php").write_text("<?php\n")
    return root


def write_site(site_dir: Path, data: dict) -> Path:
    path = site_dir / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


HOST_2x24 = HostResources(cpus=2, memory_mb=24 * 1024)
HOST_8x64 = HostResources(cpus=8, memory_mb=64 * 1024)


def moodle_src() -> Path | None:
    value = os.environ.get("MOODLE_SRC")
    if not value:
        return None
    path = Path(value).expanduser()
    return path if (path / "version.php").is_file() else None


#: Figures end-to-end tests measure (e.g. cold and warm `kit up`), printed at the end of the run.
MEASURED: dict[str, str] = {}


def pytest_terminal_summary(terminalreporter):
    if MEASURED:
        terminalreporter.section("measured here")
        for key, value in MEASURED.items():
            terminalreporter.write_line(f"{key}: {value}")
