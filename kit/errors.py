"""The kit's errors and exit codes: every problem the user can act on is one line.

Exit codes (documented in the README):
  0  ok
  1  the operation failed (a rollout rolled back, an SLO was missed, a command failed)
  2  usage error (unknown option, bad argument)
  3  bad config or failed preflight: refused, nothing was changed
  70 a bug in the kit (the traceback is written to a file, not the terminal)
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_BUG = 70


class KitError(Exception):
    """Bad input, environment or state, found before anything changed.

    The message is one line: what is wrong and how to fix it.
    """

    exit_code = EXIT_REFUSED


class UsageError(KitError):
    """A flag or argument that cannot work (the same class of error as click's own)."""

    exit_code = EXIT_USAGE


class Unsupported(KitError):
    """A command the site's target cannot do; the message says what to use instead."""


class OperationFailed(KitError):
    """Something was started and did not succeed (the message says what state it left)."""

    exit_code = EXIT_FAILED


class CommandFailed(OperationFailed):
    """An external command (docker, ansible-playbook, helm) exited non-zero."""
