"""Every `kit ...` line in a runbook must parse against the real CLI (commands and flags)."""
from __future__ import annotations

import shlex

import click
import pytest

from kit import ROOT
from kit.cli import cli

RUNBOOKS = sorted((ROOT / "runbooks").glob("*.md"))
REQUIRED_SECTIONS = ("## Symptoms", "## Check", "## Act", "## Verify", "## Escalate")


def kit_lines(text: str) -> list[str]:
    """Command lines inside fenced code blocks that start with `kit `."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        if inside and line.strip().startswith("kit "):
            lines.append(line.strip())
    return lines


def parse(line: str) -> None:
    """Resolve the command and parse its options like click would, without running it.
    (The kit's groups take no options of their own, so the next word names the subcommand.)"""
    args = shlex.split(line)[1:]
    command: click.Command = cli
    parent, name = None, "kit"
    while isinstance(command, click.Group):
        ctx = click.Context(command, info_name=name, parent=parent)
        if command.invoke_without_command and (not args or args[0].startswith("-")):
            command.make_context(name, list(args), parent=parent)   # `kit alerts`, `kit alerts --json`
            return
        if not args:
            raise click.UsageError("a command is missing", ctx)
        sub = command.get_command(ctx, args[0])
        if sub is None:
            raise click.UsageError(f"No such command {args[0]!r}", ctx)
        command, parent, name, args = sub, ctx, args[0], args[1:]
    try:
        command.make_context(name, list(args), parent=parent)
    except click.BadParameter as exc:
        if "does not exist" not in str(exc):  # runbooks name example backup folders
            raise


@pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.name)
def test_every_kit_command_in_the_runbook_parses(path):
    lines = kit_lines(path.read_text())
    if path.name != "README.md":
        assert lines, f"{path.name} has no kit command"
    for line in lines:
        try:
            parse(line)
        except click.ClickException as exc:
            pytest.fail(f"{path.name}: `{line}`: {exc.format_message()}")


@pytest.mark.parametrize("path", [p for p in RUNBOOKS if p.name != "README.md"], ids=lambda p: p.name)
def test_runbook_has_every_section(path):
    text = path.read_text()
    for section in REQUIRED_SECTIONS:
        assert section in text, f"{path.name} lacks {section}"


def test_index_links_every_runbook():
    index = (ROOT / "runbooks" / "README.md").read_text()
    for path in RUNBOOKS:
        if path.name != "README.md":
            assert f"({path.name})" in index, path.name


@pytest.mark.parametrize("broken, needle", [
    ("kit up --no-such-flag", "No such option"),
    ("kit scael web=2", "No such command"),
    ("kit loadtest run --userz 5", "No such option"),
    ("kit maintenance sideways", "sideways"),
])
def test_the_checker_catches_broken_commands(broken, needle):
    """A deliberately broken sample: the same check must fail on it."""
    with pytest.raises(click.ClickException) as exc:
        parse(broken)
    assert needle in exc.value.format_message()
