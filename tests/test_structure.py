"""The code's shape that issues #12 and #17 ask for, checked on every run so it stays that way:
the CLI never branches on the target, only kit/runner.py starts processes, no query goes
through psql's text output and no `docker --format` template is parsed back."""
import re
from pathlib import Path

KIT = Path(__file__).resolve().parents[1] / "kit"


def sources(pattern: str = "**/*.py") -> dict[str, str]:
    return {str(p.relative_to(KIT.parent)): p.read_text() for p in KIT.glob(pattern)}


def hits(files: dict[str, str], regex: str) -> list[str]:
    found = re.compile(regex)
    return [f"{name}:{n}: {line.strip()}" for name, text in files.items()
            for n, line in enumerate(text.splitlines(), 1) if found.search(line)]


def test_cli_never_branches_on_the_target() -> None:
    assert hits(sources("cli*.py"), r"site\.target\s*(==|!=|in\b)") == []


def test_only_the_runner_starts_processes() -> None:
    others = {k: v for k, v in sources().items() if k != "kit/runner.py"}
    assert hits(others, r"\b(import subprocess|from subprocess|os\.system|os\.popen|os\.exec|os\.spawn)") == []


def test_no_psql_text_and_no_format_templates_parsed_back() -> None:
    files = sources()
    assert hits(files, r"\bpsql\b") == []
    assert hits(files, r"""["']--format["']|--format[= ]""") == []


def test_the_moodle_image_copies_every_kit_plugin_where_the_kit_reads_its_version() -> None:
    from kit.images import IMAGES_DIR, KIT_PLUGINS

    dockerfile = (IMAGES_DIR / "moodle" / "Dockerfile").read_text()
    copies = dict(re.findall(r"^COPY kit/(\w+)/ /var/www/moodle/(\S+?)/?$", dockerfile, flags=re.M))
    assert copies == KIT_PLUGINS
    for plugin in KIT_PLUGINS:
        version = (IMAGES_DIR / "moodle" / "kit" / plugin / "version.php").read_text()
        assert f"$plugin->component = '{plugin}';" in version
