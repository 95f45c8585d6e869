"""`kit alerts` and `kit monitor`: what is wrong now, with the runbook to open and the command
to run first; where the incident page is; where alerts are delivered (site.yaml, secrets
read from stdin)."""
from __future__ import annotations

import json
import sys
from typing import Any

import click

from kit import config, monitoring
from kit.cli_auth import SITE_OPTION, _secret_from_stdin, save_section
from kit.cli_auth import _owned as _owned_site
from kit.errors import EXIT_FAILED, UsageError
from kit.targets import Target


def _owned(site_path: str, command: str) -> Target:
    return _owned_site(config.load_site(site_path), command)


@click.group(name="alerts", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@SITE_OPTION
@click.pass_context
def alerts(ctx: click.Context, as_json: bool, site_path: str) -> None:
    """Firing and pending alerts, each with its runbook and the command to run first
    (exit 1 while one fires). Delivery: `kit alerts email`, `kit alerts webhook`.

    \b
      kit alerts                       what fires now, and what is about to
      kit alerts email --to ops@example.edu --sender moodle@example.edu \\
                       --smarthost smtp.example.edu:587 --username moodle --password-stdin
      kit alerts webhook --url-stdin   (a chat tool's incoming-webhook URL, kept secret)
    """
    if ctx.invoked_subcommand is not None:
        return
    target = _owned(site_path, "alerts")
    with target.monitor() as monitor:
        found = monitoring.alerts(monitor)
        down = monitor.targets_down()
    if as_json:
        click.echo(json.dumps({"alerts": [a.as_dict() for a in found], "targets_down": down}, indent=2))
    else:
        if not found:
            click.secho(f"{target.site.name}: no alerts firing or pending", fg="green")
        for alert in found:
            where = alert.labels.get("instance") or alert.labels.get("mountpoint") or ""
            click.secho(f"{alert.state.upper():8} {alert.name}" + (f" ({where})" if where else "")
                        + f" since {alert.since[:19].replace('T', ' ')}",
                        fg="red" if alert.state == "firing" else "yellow", bold=True)
            click.echo(f"         {alert.summary}")
            click.echo(f"         runbook: {alert.runbook}   run first: {alert.first_command}")
        if down:
            click.secho("scrape targets not answering: " + ", ".join(down), fg="yellow")
    if any(a.state == "firing" for a in found):
        sys.exit(EXIT_FAILED)


def _save_monitoring(site: config.Site, changes: dict[str, Any], secrets: dict[str, str]) -> None:
    current = site.monitoring.model_dump(exclude_defaults=True, mode="json")
    save_section(site, "monitoring", {**current, **changes}, secrets)


@alerts.command()
@click.option("--to", required=True, help="Who gets the alerts.")
@click.option("--sender", required=True, help="The From: address.")
@click.option("--smarthost", required=True, help="SMTP relay HOST:PORT.")
@click.option("--username", default=None, help="SMTP login (then --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the SMTP password from stdin.")
@click.option("--no-tls", is_flag=True, help="Do not require STARTTLS (a relay on a trusted network only).")
@SITE_OPTION
def email(to: str, sender: str, smarthost: str, username: str | None, password_stdin: bool, no_tls: bool,
          site_path: str) -> None:
    """Send alerts by e-mail, through Alertmanager's e-mail receiver; then `kit up`."""
    site = config.load_site(site_path)
    if username and not password_stdin:
        raise UsageError("--username needs --password-stdin: the SMTP password is read from stdin")
    secrets = {"smtp_password": _secret_from_stdin("--password-stdin")} if username else {}
    _save_monitoring(site, {"email": {"to": to, "sender": sender, "smarthost": smarthost, "username": username,
                                      "require_tls": not no_tls}}, secrets)
    click.echo("saved to site.yaml (monitoring.email)" + (" and the password to the secrets file" if secrets else "")
               + "; run `kit up` to apply")


@alerts.command()
@click.option("--url-stdin", is_flag=True, help="Read the webhook URL from stdin.")
@click.option("--off", is_flag=True, help="Stop posting to the webhook.")
@SITE_OPTION
def webhook(url_stdin: bool, off: bool, site_path: str) -> None:
    """Post alerts to a webhook (Alertmanager's webhook receiver); then `kit up`. The URL of a
    chat tool's webhook is a credential: it is read from stdin and kept in the secrets file."""
    site = config.load_site(site_path)
    if off:
        _save_monitoring(site, {"webhook": False}, {})
        click.echo("webhook delivery turned off in site.yaml; run `kit up` to apply")
        return
    if not url_stdin:
        raise UsageError("--url-stdin is required: the webhook URL is read from stdin (or --off)")
    url = _secret_from_stdin("--url-stdin")
    if not url.startswith(("http://", "https://")):
        raise UsageError("--url-stdin: the webhook URL must start with http:// or https://")
    _save_monitoring(site, {"webhook": True}, {"alert_webhook_url": url})
    click.echo("saved to site.yaml (monitoring.webhook) and the URL to the secrets file; run `kit up` to apply")


@click.command(name="monitor")
@SITE_OPTION
def monitor_cmd(site_path: str) -> None:
    """Print the local URL of the site's incident page (Prometheus, 127.0.0.1 only; from
    another machine: `ssh -L PORT:127.0.0.1:PORT` to the site's host first)."""
    target = _owned(site_path, "monitor")
    m = target.site.monitoring
    with target.monitor() as mon:
        down = mon.targets_down()
    click.echo(f"dashboard     http://127.0.0.1:{m.prometheus_port}/consoles/kit.html")
    click.echo(f"prometheus    http://127.0.0.1:{m.prometheus_port}/")
    click.echo(f"alertmanager  http://127.0.0.1:{m.alertmanager_port}/")
    hint = target.monitor_access_hint()
    if hint:
        click.echo(hint)
    if down:
        click.secho("not answering: " + ", ".join(down), fg="yellow")
