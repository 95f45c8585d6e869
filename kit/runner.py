"""One wrapper for every external command the kit runs: show it, stream its output, fail
clearly. No other module starts a process.

Secrets never go on a command line; callers pass them through stdin or files, so printing
the command is always safe.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import click

from kit.errors import CommandFailed, KitError


def show(cmd: Sequence[str | os.PathLike[str]]) -> str:
    return " ".join(shlex.quote(str(part)) for part in cmd)


def _not_found(cmd: Sequence[str | os.PathLike[str]]) -> KitError:
    return KitError(f"command not found: {cmd[0]} (install it, or run the README's setup command)")


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    input_bytes: bytes | None = None,
    quiet: bool = False,
    check: bool = True,
    tee: list[str] | None = None,
) -> int:
    """Run a command, echoing it and streaming its output to the terminal.

    With tee, output lines are also collected into that list (e.g. Ansible's recap).
    """
    if not quiet:
        click.secho(f"$ {show(cmd)}", fg="cyan", err=True)
    full_env = {**os.environ, **(env or {})}
    try:
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            cwd=cwd,
            env=full_env,
            stdin=subprocess.PIPE if input_bytes is not None else None,
            stdout=subprocess.PIPE if tee is not None else (None if not quiet else subprocess.DEVNULL),
            stderr=subprocess.STDOUT if tee is not None else (None if not quiet else subprocess.DEVNULL),
            text=tee is not None or None,
        )
    except FileNotFoundError:
        raise _not_found(cmd) from None
    if input_bytes is not None:
        assert proc.stdin is not None
        proc.stdin.write(input_bytes)
        proc.stdin.close()
    try:
        if tee is not None:
            assert proc.stdout is not None
            for line in proc.stdout:
                tee.append(str(line).rstrip("\n"))
                if not quiet:
                    sys.stdout.write(str(line))
                    sys.stdout.flush()
        code = proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached the command too (same process group): let it finish its own
        # shutdown (Ansible's recap, locust's report) before the kit stops.
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    if check and code != 0:
        raise CommandFailed(f"command failed with exit code {code}: {show(cmd)}")
    return code


def capture(cmd: Sequence[str | os.PathLike[str]], *, env: dict[str, str] | None = None, check: bool = True,
            timeout: float | None = 120, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command quietly and return its output (for probes, not for long work)."""
    full_env = {**os.environ, **(env or {})}
    try:
        result = subprocess.run([str(c) for c in cmd], env=full_env, capture_output=True, text=True,
                                timeout=timeout, input=input_text)
    except FileNotFoundError:
        raise _not_found(cmd) from None
    except subprocess.TimeoutExpired:
        raise CommandFailed(f"command timed out after {timeout}s: {show(cmd)}") from None
    if check and result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        raise CommandFailed(f"{show(cmd)} exited {result.returncode}: {last[0]}")
    return result


def stream_to(pipe_cmd: Sequence[str], producer: Callable[[IO[bytes]], None], *,
              env: dict[str, str] | None = None) -> None:
    """Run a command that reads stdin, feeding it from producer(fileobj) (e.g. a tar stream)."""
    click.secho(f"$ {show(pipe_cmd)}  < (build context)", fg="cyan", err=True)
    try:
        proc = subprocess.Popen([str(c) for c in pipe_cmd], stdin=subprocess.PIPE, env={**os.environ, **(env or {})})
    except FileNotFoundError:
        raise _not_found(pipe_cmd) from None
    assert proc.stdin is not None
    try:
        producer(proc.stdin)
    except BrokenPipeError:
        pass
    finally:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
    code = proc.wait()
    if code != 0:
        raise CommandFailed(f"command failed with exit code {code}: {show(pipe_cmd)}")
    sys.stderr.flush()


def to_file(cmd: Sequence[str], dest: Path) -> None:
    """Run a command with its stdout written to an owner-only file (a dump, an archive)."""
    click.secho(f"$ {show(cmd)} > {dest.name}", fg="cyan", err=True)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        try:
            proc = subprocess.run([str(c) for c in cmd], stdout=out, stderr=subprocess.PIPE)
        except FileNotFoundError:
            dest.unlink(missing_ok=True)
            raise _not_found(cmd) from None
    if proc.returncode != 0:
        dest.unlink(missing_ok=True)
        last = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise CommandFailed(f"{show(cmd)} failed: {last[0]}")


def from_file(cmd: Sequence[str], source: Path, *, what: str | None = None, quiet_output: bool = False) -> int:
    """Run a command reading a file on its stdin (a restore); returns its exit code."""
    click.secho(f"$ {show(cmd)} < {what or source.name}", fg="cyan", err=True)
    with source.open("rb") as stdin:
        try:
            proc = subprocess.run([str(c) for c in cmd], stdin=stdin,
                                  stdout=subprocess.DEVNULL if quiet_output else None,
                                  stderr=subprocess.DEVNULL if quiet_output else None)
        except FileNotFoundError:
            raise _not_found(cmd) from None
    return proc.returncode


def feed_file(cmd: Sequence[str], source: Path) -> None:
    """cmd < source (e.g. `ssh HOST docker load < images.tar`), checked: its last error line on failure."""
    click.secho(f"$ {show(cmd)} < {source.name}", fg="cyan", err=True)
    with source.open("rb") as stdin:
        try:
            proc = subprocess.run([str(c) for c in cmd], stdin=stdin, capture_output=True, text=True)
        except FileNotFoundError:
            raise _not_found(cmd) from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CommandFailed(f"{show(cmd)} < {source.name} failed: {last}")


def pipe(producer: Sequence[str], consumer: Sequence[str]) -> None:
    """producer | consumer (e.g. `docker save IMAGE | ssh HOST docker load`), both checked."""
    click.secho(f"$ {show(producer)} | {show(consumer)}", fg="cyan", err=True)
    try:
        first = subprocess.Popen([str(c) for c in producer], stdout=subprocess.PIPE)
    except FileNotFoundError:
        raise _not_found(producer) from None
    try:
        second = subprocess.run([str(c) for c in consumer], stdin=first.stdout, capture_output=True, text=True)
    except FileNotFoundError:
        first.kill()
        raise _not_found(consumer) from None
    finally:
        assert first.stdout is not None
        first.stdout.close()
    if first.wait() != 0 or second.returncode != 0:
        last = (second.stderr.strip().splitlines() or ["no output"])[-1]
        raise CommandFailed(f"{show(producer)} | {show(consumer)} failed: {last}")


class Tunnel:
    """An SSH forward of a remote Unix socket or port to a local one, for as long as the
    `with` block lasts (the Docker SDK and psycopg talk to machines through it)."""

    def __init__(self, ssh: Sequence[str], remote: str, *, local_port: int | None = None,
                 timeout_s: float = 20) -> None:
        self.ssh, self.remote, self.timeout_s = list(ssh), remote, timeout_s
        self._tmp = tempfile.TemporaryDirectory(prefix="kit-tunnel-")
        self.local = str(local_port) if local_port else os.path.join(self._tmp.name, "sock")
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Tunnel":
        host, rest = self.ssh[-1], self.ssh[:-1]
        cmd = [*rest, "-N", "-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes",
               "-L", f"{self.local}:{self.remote}", host]
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise _not_found(cmd) from None
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = (self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else "").strip()
                raise KitError(f"ssh {host} failed: {(err.splitlines() or ['no answer'])[-1]}")
            if not self.local.isdigit() and os.path.exists(self.local):
                return self
            if self.local.isdigit() and _port_open(int(self.local)):
                return self
            time.sleep(0.1)
        self.__exit__(None, None, None)
        raise KitError(f"ssh {host}: the tunnel to {self.remote} did not open in {self.timeout_s:.0f}s")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._tmp.cleanup()


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def hostname_addresses() -> set[str]:
    """This machine's addresses (`hostname -I`), for telling a local URL from a remote one."""
    try:
        return set(capture(["hostname", "-I"], check=False, timeout=5).stdout.split())
    except KitError:
        return set()
