"""Backups are checked before a restore changes anything."""
from __future__ import annotations

import hashlib
import json

import pytest

from kit.backup import verify
from kit.errors import KitError


def make_backup(folder):
    folder.mkdir()
    files = {}
    for name, data in (("db.dump", b"PGDMP fake dump"), ("moodledata.tar.gz", b"\x1f\x8b fake archive")):
        (folder / name).write_bytes(data)
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (folder / "manifest.json").write_text(json.dumps({"files": files, "created": "now", "moodle_version": "1"}))
    return folder


def test_intact_backup_verifies(tmp_path):
    assert verify(make_backup(tmp_path / "b"))["moodle_version"] == "1"


@pytest.mark.parametrize("name", ["db.dump", "moodledata.tar.gz"])
def test_corrupted_file_is_refused(tmp_path, name):
    folder = make_backup(tmp_path / "b")
    data = bytearray((folder / name).read_bytes())
    data[3] ^= 0xFF
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(KitError, match=f"{name}: checksum does not match the manifest"):
        verify(folder)


def test_missing_file_or_manifest_is_refused(tmp_path):
    folder = make_backup(tmp_path / "b")
    (folder / "db.dump").unlink()
    with pytest.raises(KitError, match="db.dump is missing"):
        verify(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(KitError, match="not a kit backup"):
        verify(folder)
