"""Image builds: a Debian base (official or debootstrapped offline), then PHP, Moodle, web,
PostgreSQL and Redis images, each tagged by a hash of its inputs so an unchanged site is
never rebuilt and a changed one always is.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import click

from kit import ROOT
from kit.config import Site
from kit.engine import Engine
from kit.errors import KitError
from kit.runner import capture, run, stream_to

IMAGES_DIR = ROOT / "images"
OFFLINE_BASE_TAG = "kit/debian:bookworm"
BUILD_ENV = {"DOCKER_BUILDKIT": "0"}  # Debian's docker.io 20.10 ships no buildx
SKIP_IN_CODE = {".git", "node_modules", ".github"}
#: The kit's own Moodle plugins -> where the Moodle image has them (images/moodle/Dockerfile
#: copies them there; a test keeps the two in step). A newer one needs Moodle's upgrade.
KIT_PLUGINS = {"local_kit": "local/kit", "cachestore_kitredis": "cache/stores/kitredis"}


def _hash(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def _dir_digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return _hash(*(f"{p.relative_to(path)}:{p.stat().st_mode & 0o777:o}:{p.read_bytes().hex()}" for p in files))


# --- Moodle source ----------------------------------------------------------------------

def check_moodle_tree(path: Path) -> str:
    """Return Moodle's release string, or raise a one-line KitError if path is not Moodle."""
    if not path.exists():
        raise KitError(f"moodle.source: {path} does not exist (point it at a Moodle folder, tarball or git URL)")
    if not path.is_dir():
        raise KitError(f"moodle.source: {path} is not a folder")
    version = path / "version.php"
    if not version.is_file() or not (path / "lib" / "setup.php").is_file() \
            or not (path / "admin" / "cli" / "install_database.php").is_file():
        raise KitError(f"moodle.source: {path} is not a Moodle tree (no {', '.join(MOODLE_MARKERS)})")
    match = re.search(r"\$release\s*=\s*'([^']+)'", version.read_text(errors="replace"))
    if not match:
        raise KitError(f"moodle.source: {version} has no $release: not a Moodle tree")
    return match.group(1)


MOODLE_MARKERS = ("version.php", "lib/setup.php", "admin/cli/install_database.php")


def check_moodle_tarball(path: Path) -> str:
    """Open a Moodle tarball and read it to its end (a truncated or damaged archive fails
    here, not after four images are built); returns Moodle's release string."""
    import zlib

    if not path.is_file():
        raise KitError(f"moodle.source: tarball {path} does not exist")
    found: dict[str, set[str]] = {}       # top folder ("" = the archive's root) -> markers in it
    releases: dict[str, str] = {}
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                parts = [p for p in Path(member.name).parts if p != "."]
                if not member.isfile():
                    continue
                for depth in (0, 1):
                    top, rel = "/".join(parts[:depth]), "/".join(parts[depth:])
                    if rel in MOODLE_MARKERS:
                        found.setdefault(top, set()).add(rel)
                        if rel == "version.php":
                            handle = tar.extractfile(member)
                            text = handle.read().decode(errors="replace") if handle else ""
                            match = re.search(r"\$release\s*=\s*'([^']+)'", text)
                            releases[top] = match.group(1) if match else ""
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        why = "not a tar archive" if isinstance(exc, tarfile.ReadError) else "damaged or cut short"
        raise KitError(f"moodle.source: {path} is not a readable tar archive ({why}: {type(exc).__name__}): "
                       "point it at a Moodle .tar.gz, a folder or a git URL") from None
    tops = [top for top, markers in found.items() if markers == set(MOODLE_MARKERS)]
    if not tops:
        raise KitError(f"moodle.source: {path} holds no Moodle tree (no {', '.join(MOODLE_MARKERS)} at its top or "
                       "in its one top folder)")
    release = releases.get(tops[0], "")
    if not release:
        raise KitError(f"moodle.source: {path}: version.php has no $release: not a Moodle tree")
    return release


def check_git_ref(site: Site) -> str:
    """The commit moodle.ref names on moodle.source, asked of the remote now."""
    out = capture(["git", "ls-remote", site.moodle.source, site.moodle.ref], check=False, timeout=60)
    if out.returncode != 0 or not out.stdout.strip():
        reason = (out.stderr.strip().splitlines() or ["no such ref"])[-1][:200]
        raise KitError(f"moodle.source: cannot read ref {site.moodle.ref!r} from {site.moodle.source} ({reason}); "
                       "offline? set moodle.source to a local Moodle folder or tarball")
    return out.stdout.split()[0]


def moodle_version(path: Path) -> str:
    match = re.search(r"\$version\s*=\s*([0-9.]+)", (path / "version.php").read_text(errors="replace"))
    return match.group(1) if match else "unknown"


def _tree_fingerprint(path: Path) -> str:
    """Cheap identity of a code tree: names, sizes and mtimes (a full hash of 400 MB is slow)."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_IN_CODE)
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            digest.update(f"{os.path.relpath(full, path)}:{st.st_size}:{int(st.st_mtime)}\n".encode())
    return digest.hexdigest()[:12]


class MoodleSource:
    """Moodle's code from a folder, a tarball or a git URL+ref, as a local folder."""

    def __init__(self, site: Site):
        self.site = site
        self.kind = site.moodle.source_kind()
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._path: Path | None = None

    def identity(self) -> str:
        if self.kind == "folder":
            return "folder:" + _tree_fingerprint(self.path())
        if self.kind == "tarball":
            tar = self.site.moodle_source_path
            if not tar.is_file():
                raise KitError(f"moodle.source: tarball {tar} does not exist")
            return "tarball:" + hashlib.sha256(tar.read_bytes()).hexdigest()[:12]
        return "git:" + check_git_ref(self.site)

    def path(self) -> Path:
        if self._path is not None:
            return self._path
        if self.kind == "folder":
            self._path = self.site.moodle_source_path
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="kit-moodle-")
            dest = Path(self._tmp.name)
            if self.kind == "tarball":
                check_moodle_tarball(self.site.moodle_source_path)
                with tarfile.open(self.site.moodle_source_path) as tar:
                    tar.extractall(dest, filter="data")
                entries = [p for p in dest.iterdir()]
                self._path = entries[0] if len(entries) == 1 and entries[0].is_dir() else dest
            else:
                run(["git", "clone", "--depth", "1", "--branch", self.site.moodle.ref,
                     self.site.moodle.source, str(dest / "moodle")])
                self._path = dest / "moodle"
        check_moodle_tree(self._path)
        return self._path

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


# --- image set ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageSet:
    """The tags one site runs; the same set serves every target."""

    php: str
    moodle: str
    web: str
    postgres: str
    redis: str
    edge: str
    monitor: str = "-"     # releases recorded before monitoring existed have none

    @classmethod
    def placeholder(cls) -> "ImageSet":
        """For renders that need no image (installing Docker, taking a site down)."""
        return cls("-", "-", "-", "-", "-", "-", "-")

    def as_dict(self) -> dict[str, str]:
        return {"php": self.php, "moodle": self.moodle, "web": self.web,
                "postgres": self.postgres, "redis": self.redis, "edge": self.edge, "monitor": self.monitor}


def image_set(site: Site, source: MoodleSource | None = None) -> ImageSet:
    """Compute tags from inputs without building anything."""
    prefix, base = site.images.prefix, site.images.base
    php_tag = _hash(base, _dir_digest(IMAGES_DIR / "php"))
    postgres_tag = _hash(base, _dir_digest(IMAGES_DIR / "postgres"))
    redis_tag = _hash(base, _dir_digest(IMAGES_DIR / "redis"))
    edge_tag = _hash(base, _dir_digest(IMAGES_DIR / "edge"))
    monitor_tag = _hash(base, _dir_digest(IMAGES_DIR / "monitor"))
    if site.images.tag:
        moodle_tag = site.images.tag
    else:
        source = source or MoodleSource(site)
        moodle_tag = _hash(php_tag, _dir_digest(IMAGES_DIR / "moodle"), _dir_digest(IMAGES_DIR / "web"),
                           source.identity())
    return ImageSet(
        php=f"{prefix}/php:{php_tag}",
        moodle=f"{prefix}/moodle:{moodle_tag}",
        web=f"{prefix}/moodle-web:{moodle_tag}",
        postgres=f"{prefix}/postgres:{postgres_tag}",
        redis=f"{prefix}/redis:{redis_tag}",
        edge=f"{prefix}/edge:{edge_tag}",
        monitor=f"{prefix}/monitor:{monitor_tag}" if site.monitoring.enabled else "-",
    )


def _docker_build(tag: str, context: Path, build_args: dict[str, str]) -> None:
    cmd = ["docker", "build", "--pull=false", "-t", tag]
    for key, value in build_args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    run(cmd + [str(context)], env=BUILD_ENV)


def _stream_moodle_context(out: IO[bytes], code: Path) -> None:
    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        if any(p in SKIP_IN_CODE for p in parts):
            return None
        if parts[-2:] == ("moodle", "config.php") and len(parts) == 2:
            return None
        # Owned by root and read-only for everyone else: no chown/chmod layer in the image.
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        if info.isdir() or info.mode & 0o111:
            info.mode = 0o755
        elif info.isfile():
            info.mode = 0o644
        return info

    with tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        tar.add(IMAGES_DIR / "moodle" / "Dockerfile", arcname="Dockerfile")
        tar.add(IMAGES_DIR / "moodle" / "kit", arcname="kit", filter=keep)
        tar.add(code, arcname="moodle", filter=keep)


def ensure_base(site: Site, engine: Engine) -> None:
    base = site.images.base
    if engine.image_exists(base):
        return
    if base == OFFLINE_BASE_TAG:
        raise KitError(f"images.base: {base} is not built yet; run `kit images base` (debootstrap from a Debian mirror)")
    raise KitError(f"images.base: image {base} is not on this host and no registry was tried; "
                   f"`docker pull {base}`, or build one offline with `kit images base` and set images.base: {OFFLINE_BASE_TAG}")


def build_all(site: Site, engine: Engine, *, force: bool = False) -> ImageSet:
    """Build whatever image of the set is missing (on this host's engine); reports each as
    built or present."""
    ensure_base(site, engine)
    source = MoodleSource(site)
    try:
        images = image_set(site, source)
        base = {"BASE_IMAGE": site.images.base}
        steps = [
            (images.php, lambda: _docker_build(images.php, IMAGES_DIR / "php", base)),
            (images.postgres, lambda: _docker_build(images.postgres, IMAGES_DIR / "postgres", base)),
            (images.redis, lambda: _docker_build(images.redis, IMAGES_DIR / "redis", base)),
            (images.edge, lambda: _docker_build(images.edge, IMAGES_DIR / "edge", base)),
            *([(images.monitor, lambda: _docker_build(images.monitor, IMAGES_DIR / "monitor", base))]
              if images.monitor != "-" else []),
            (images.moodle, lambda: stream_to(
                ["docker", "build", "--pull=false", "-t", images.moodle, "--build-arg", f"PHP_IMAGE={images.php}", "-"],
                lambda out: _stream_moodle_context(out, source.path()), env=BUILD_ENV)),
            (images.web, lambda: _docker_build(images.web, IMAGES_DIR / "web",
                                               {**base, "MOODLE_IMAGE": images.moodle})),
        ]
        for number, (tag, build) in enumerate(steps, start=1):
            if not force and engine.image_exists(tag):
                click.echo(f"[{number}/{len(steps)}] {tag}: present")
                continue
            click.echo(f"[{number}/{len(steps)}] {tag}: building")
            build()
        return images
    finally:
        source.cleanup()


# --- offline base -------------------------------------------------------------------------

def apt_mirror() -> str:
    """The Debian mirror this host's apt uses (the offline path needs no other)."""
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in candidates:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for match in re.finditer(r"(?:^deb\s+(?:\[[^\]]*\]\s+)?|^URIs:\s*)(\S+/debian)/?\s", text, re.M):
            return match.group(1)
    return "http://deb.debian.org/debian"


def build_offline_base(engine: Engine, mirror: str | None = None, tag: str = OFFLINE_BASE_TAG, *,
                       force: bool = False) -> str:
    """debootstrap a minimal Debian 12 and import it: no registry needed."""
    if not force and engine.image_exists(tag):
        click.echo(f"{tag}: present (use --force to rebuild)")
        return tag
    if shutil.which("debootstrap") is None:
        raise KitError("debootstrap is not installed: `apt-get install debootstrap` (Debian/Ubuntu)")
    if os.geteuid() != 0:
        raise KitError("building the base image with debootstrap needs root: run `sudo kit images base`")
    mirror = mirror or apt_mirror()
    with tempfile.TemporaryDirectory(prefix="kit-debootstrap-") as tmp:
        root = Path(tmp) / "rootfs"
        run(["debootstrap", "--variant=minbase", "bookworm", str(root), mirror])
        # Security updates come from the same host's mirror layout when it has one.
        (root / "etc/apt/sources.list").write_text(f"deb {mirror} bookworm main\ndeb {mirror} bookworm-updates main\n")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (root / junk).glob("*"):
                if item.is_file():
                    item.unlink()
        tar_path = Path(tmp) / "rootfs.tar"
        run(["tar", "-C", str(root), "-cf", str(tar_path), "."])
        run(["docker", "import", "--change", 'CMD ["/bin/bash"]', str(tar_path), tag])
    return tag
