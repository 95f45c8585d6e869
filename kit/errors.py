"""One exception type for every problem the user can fix: printed as one line, exit 2."""


class KitError(Exception):
    """A problem with input, environment or state that the user can act on.

    The message is one line: what is wrong and how to fix it.
    """

    exit_code = 2


class CommandFailed(KitError):
    """An external command (docker, ansible-playbook) exited non-zero."""

    exit_code = 1
