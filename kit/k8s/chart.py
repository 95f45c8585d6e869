"""Render the chart with a real Helm engine: the `helm` CLI when it is on PATH, else Helm's
Go SDK from the helm-python-sdk wheel (same engine, no binary). Also the chart's reference
site, whose rendering is the chart's defaults (values.yaml and files/).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import yaml

from kit.config import Site, parse_site, write_private
from kit.errors import KitError
from kit.images import ImageSet
from kit.k8s.values import chart_dir, chart_values, config_texts
from kit.runner import capture
from kit.sizing import HostResources, Tuning, plan

#: The site the chart's defaults are rendered for (values.yaml, files/).
REFERENCE_SITE = {"name": "moodle", "target": "k8s", "users": 300, "url": "https://moodle.example.com",
                  "kubernetes": {"host": "moodle.example.com"}}
REFERENCE_HOST = HostResources(cpus=4, memory_mb=16 * 1024)
REFERENCE_IMAGES = ImageSet("-", "kit/moodle", "kit/moodle-web", "-", "kit/redis", "-", "kit/monitor")
#: Chart files rendered from the kit's templates for the reference site.
DEFAULT_FILES = {"configPhp": "config.php", "phpIni": "php.ini", "fpmPool": "fpm-pool.conf",
                 "nginx": "nginx.conf", "redis": "redis.conf", "signin": "signin.json",
                 "ldapConf": "ldap.conf", "alertRules": "alerts.yml", "pgQueries": "pg-queries.yaml"}


def reference() -> tuple[Site, Tuning]:
    site = parse_site(REFERENCE_SITE, site_dir=Path("."), source="reference site")
    return site, plan(site, REFERENCE_HOST)


def reference_values() -> dict:
    """What values.yaml must say (config texts empty: the chart reads files/ instead)."""
    site, tuning = reference()
    values = chart_values(site, tuning, REFERENCE_IMAGES)
    values["config"] = {key: "" for key in values["config"]}
    values["metrics"].update(alertRules="", pgQueries="")
    values["auth"]["existingSecret"] = ""
    values["database"]["cloudnativepg"]["monitorRole"]["secret"] = ""   # made by `kit up`, named by the kit
    return values


def reference_files() -> dict[str, str]:
    site, tuning = reference()
    texts = config_texts(site, tuning)
    return {name: texts[key] for key, name in DEFAULT_FILES.items()}


def write_reference_files(chart: Path | None = None) -> list[Path]:
    """Regenerate the chart's files/ from the kit's templates (tests check they match)."""
    out = (chart or chart_dir()) / "files"
    written = []
    for name, text in reference_files().items():
        (out / name).write_text(text)
        written.append(out / name)
    return written


# --- rendering ---------------------------------------------------------------------------

def engine() -> str:
    """Which Helm engine renders here: "helm" (CLI), "sdk" (helm-python-sdk), or ""."""
    if shutil.which("helm"):
        return "helm"
    try:
        import helm_python  # noqa: F401
    except (ImportError, OSError):
        return ""
    return "sdk"


def _join(manifests: dict[str, str]) -> str:
    """helm-python-sdk returns one text per template: join them the way `helm template` does."""
    docs = [f"# Source: {path}\n{text.strip()}\n" for path, text in sorted(manifests.items())
            if not path.endswith("NOTES.txt") and text.strip()]
    return "---\n" + "---\n".join(docs)


def template(values: dict, *, release: str, namespace: str, chart: Path | None = None,
             revision: int = 1, upgrade: bool = False) -> str:
    """Every manifest the chart renders for these values (hooks included), as YAML text."""
    chart = chart or chart_dir()
    which = engine()
    if which == "helm":
        with tempfile.TemporaryDirectory(prefix="kit-helm-") as tmp:
            values_file = Path(tmp) / "values.yaml"
            write_private(values_file, yaml.safe_dump(values, sort_keys=False))
            cmd = ["helm", "template", release, str(chart), "--namespace", namespace, "--values", str(values_file)]
            if upgrade:
                cmd.append("--is-upgrade")
            return capture(cmd).stdout
    if which == "sdk":
        import helm_python

        try:
            with helm_python.Chart.load(str(chart)) as loaded:
                rendered = loaded.render(values, name=release, namespace=namespace, revision=revision,
                                         is_install=not upgrade, is_upgrade=upgrade)
        except helm_python.HelmError as exc:
            raise KitError(f"the chart does not render: {str(exc).splitlines()[0]}") from None
        return _join(rendered)
    raise KitError("no Helm engine: install the helm CLI (https://helm.sh/docs/intro/install/) "
                   "or `pip install helm-python-sdk`")


def objects(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]
