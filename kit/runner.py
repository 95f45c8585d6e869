"""One wrapper for every external command: show it, stream its output, fail clearly.

Secrets never go on a command line; callers pass them through the environment or
files, so printing the command is always safe.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence

import click

from kit.errors import CommandFailed, KitError


def show(cmd: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(part)) for part in cmd)


def run(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    stdin: int | None = None,
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
            stdin=subprocess.PIPE if input_bytes is not None else stdin,
            stdout=subprocess.PIPE if tee is not None else (None if not quiet else subprocess.DEVNULL),
            stderr=subprocess.STDOUT if tee is not None else (None if not quiet else subprocess.DEVNULL),
            text=tee is not None or None,
        )
    except FileNotFoundError as exc:
        raise KitError(f"command not found: {cmd[0]} (install it, or run the README's setup command)") from exc
    if input_bytes is not None:
        assert proc.stdin is not None
        proc.stdin.write(input_bytes)
        proc.stdin.close()
    if tee is not None:
        assert proc.stdout is not None
        for line in proc.stdout:
            tee.append(line.rstrip("\n"))
            if not quiet:
                sys.stdout.write(line)
                sys.stdout.flush()
    code = proc.wait()
    if check and code != 0:
        raise CommandFailed(f"command failed with exit code {code}: {show(cmd)}")
    return code


def capture(cmd: Sequence[str], *, env: dict[str, str] | None = None, check: bool = True,
            timeout: float | None = 120) -> subprocess.CompletedProcess[str]:
    """Run a command quietly and return its output (for probes, not for long work)."""
    full_env = {**os.environ, **(env or {})}
    try:
        result = subprocess.run([str(c) for c in cmd], env=full_env, capture_output=True,
                                text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise KitError(f"command not found: {cmd[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(f"command timed out after {timeout}s: {show(cmd)}") from exc
    if check and result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        raise CommandFailed(f"{show(cmd)} exited {result.returncode}: {last[0]}")
    return result


def stream_to(pipe_cmd: Sequence[str], producer, *, env: dict[str, str] | None = None) -> None:
    """Run a command that reads stdin, feeding it from producer(fileobj) (e.g. a tar stream)."""
    click.secho(f"$ {show(pipe_cmd)}  < (build context)", fg="cyan", err=True)
    proc = subprocess.Popen([str(c) for c in pipe_cmd], stdin=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
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
