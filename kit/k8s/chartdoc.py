"""The chart README's values table, generated from values.yaml's `## @param` comments (the
Bitnami readme-generator convention), so the table cannot drift from the defaults.

    python -m kit.k8s.chartdoc          # rewrite charts/moodle/README.md's table
"""
from __future__ import annotations

import json
import re
import sys

import yaml

from kit.k8s.values import chart_dir

START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"
PARAM = re.compile(r"^\s*## @param (\S+) (.*)$")
SECTION = re.compile(r"^\s*## @section (.*)$")


def lookup(values: dict, path: str) -> object:
    node: object = values
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            raise KeyError(path)
        node = node[key]
    return node


def params(text: str) -> list[tuple[str, str, str]]:
    """(section, dotted key, description) in file order."""
    out, section = [], ""
    for line in text.splitlines():
        if m := SECTION.match(line):
            section = m.group(1).strip()
        elif m := PARAM.match(line):
            out.append((section, m.group(1), m.group(2).strip()))
    return out


def leaves(values: object, prefix: str = "") -> list[str]:
    """Every settable key: scalars, lists and empty maps."""
    if isinstance(values, dict) and values:
        found = []
        for key, value in values.items():
            found += leaves(value, f"{prefix}.{key}" if prefix else key)
        return found
    return [prefix]


def undocumented(values_text: str) -> list[str]:
    values = yaml.safe_load(values_text)
    documented = {key for _, key, _ in params(values_text)}
    missing = []
    for leaf in leaves(values):
        parts = leaf.split(".")
        if not any(".".join(parts[:n]) in documented for n in range(1, len(parts) + 1)):
            missing.append(leaf)
    return missing


def _cell(value: object) -> str:
    text = json.dumps(value, separators=(", ", ": ")) if not isinstance(value, str) else json.dumps(value)
    if len(text) > 60:
        text = "see values.yaml"
    return "`" + text.replace("|", "\\|") + "`"


def table(values_text: str) -> str:
    values = yaml.safe_load(values_text)
    lines, section = [], None
    for sec, key, description in params(values_text):
        if sec != section:
            section = sec
            lines += ["", f"### {sec}", "", "| Name | Description | Default |", "| --- | --- | --- |"]
        lines.append(f"| `{key}` | {description.replace('|', '/')} | {_cell(lookup(values, key))} |")
    return "\n".join(lines).strip("\n") + "\n"


def readme_with_table(readme: str, values_text: str) -> str:
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table(values_text)}{END}{tail}"


def main() -> int:
    chart = chart_dir()
    readme = chart / "README.md"
    text = readme_with_table(readme.read_text(), (chart / "values.yaml").read_text())
    readme.write_text(text)
    print(f"wrote {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
