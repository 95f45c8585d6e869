"""`kit auth`, `kit users`, `kit courses`: how people sign in, and accounts and courses in
bulk. Sign-in methods go into site.yaml (secrets into the secrets file, read from stdin,
never from the command line); `kit up` applies them. Imports run Moodle's own upload CLIs.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from kit import bulk, config, identity, signin
from kit.errors import KitError, OperationFailed, UsageError
from kit.targets import Target, target_for

SITE_OPTION = click.option("--site", "site_path", default=lambda: os.environ.get("KIT_SITE", config.DEFAULT_SITE_FILE),
                           show_default="site.yaml or $KIT_SITE", type=click.Path(dir_okay=False),
                           help="The site config file.")


def _secret_from_stdin(flag: str) -> str:
    if sys.stdin.isatty():
        value = click.prompt("secret", hide_input=True, err=True)
    else:
        value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise UsageError(f"{flag}: no secret on stdin")
    return value


def _save(site: config.Site, auth: dict[str, Any], secrets: dict[str, str]) -> config.Site:
    return save_section(site, "auth", auth, secrets)


def save_section(site: config.Site, section: str, value: dict[str, Any], secrets: dict[str, str]) -> config.Site:
    """A new site.yaml section and its secrets: the whole new site is validated first, then
    the secrets and site.yaml are written (atomically); a refused change leaves both as they were."""
    data = site.model_dump(exclude_defaults=True, exclude={"site_dir"}, mode="json")
    data[section] = value
    new = config.parse_site(data, site_dir=site.site_dir, source=str(site.site_dir / config.DEFAULT_SITE_FILE))
    if secrets:
        current = config.load_secrets(site)
        config.save_secrets(site, {**current, **secrets})
    path = site.site_dir / config.DEFAULT_SITE_FILE
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(config.dump_site(new))
    tmp.replace(path)
    return new


def _auth_data(site: config.Site) -> dict[str, Any]:
    return site.auth.model_dump(exclude_defaults=True, mode="json")


def _owned(site: config.Site, command: str) -> Target:
    target = target_for(site)
    target.refuse_early(command)
    identity.check(site, target.found(), command=command)
    return target


@click.group(name="auth")
def auth() -> None:
    """How people sign in: the university's directory, Microsoft 365, Google, OpenID Connect,
    and MFA for site admins. Each command checks, then saves to site.yaml; `kit up` applies.

    \b
      kit auth ldap --url ldaps://dc.example.edu --base-dn ou=students,dc=example,dc=edu \\
                    --bind-dn cn=moodle,ou=svc,dc=example,dc=edu --password-stdin
      kit auth oauth2 microsoft --client-id ID --client-secret-stdin --tenant T --domains example.edu
      kit auth oidc --issuer https://idp.example.edu --client-id ID --client-secret-stdin
      kit auth mfa --admins totp          (`kit auth mfa off` when an admin lost access)
      kit auth test --user s1234567 --password-stdin
      kit auth status
    """


@auth.command()
@click.option("--url", required=True, help="ldap://HOST[:PORT] or ldaps://HOST[:PORT] of the directory.")
@click.option("--base-dn", "base_dns", multiple=True, required=True,
              help="Where users are (repeat for several OUs).")
@click.option("--bind-dn", required=True, help="The read-only account Moodle binds with.")
@click.option("--password-stdin", is_flag=True, help="Read the bind password from stdin (required).")
@click.option("--user-type", type=click.Choice(["rfc2307", "rfc2307bis", "ad", "samba", "edir", "default"]),
              default=None, help="Directory schema (default rfc2307; Active Directory: ad).")
@click.option("--user-attribute", default=None, help="Attribute holding the username (default uid; AD: sAMAccountName).")
@click.option("--object-class", default=None, help="objectClass of user entries (default person).")
@click.option("--ca-file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="CA of the directory's certificate (ldaps:// or --start-tls).")
@click.option("--start-tls", is_flag=True, default=None, help="STARTTLS on an ldap:// URL.")
@click.option("--removed", type=click.Choice(["keep", "suspend", "delete"]), default=None,
              help="What the sync does to accounts gone from the directory (default suspend).")
@click.option("--map-idnumber", default=None, metavar="ATTRIBUTE", help="Directory attribute for Moodle's ID number.")
@click.option("--sync-every", "sync_every_min", type=click.IntRange(5, 1440), default=None, metavar="MINUTES",
              help="Minutes between directory syncs (default 60).")
@SITE_OPTION
def ldap(url: str, base_dns: tuple[str, ...], bind_dn: str, password_stdin: bool, user_type: str | None,
         user_attribute: str | None, object_class: str | None, ca_file: str | None, start_tls: bool | None,
         removed: str | None, map_idnumber: str | None, sync_every_min: int | None, site_path: str) -> None:
    """Sign-in with the directory's password (Moodle's auth_ldap), and its sync task.

    Binds and searches once first: a wrong password, an unreachable server or an untrusted
    certificate is refused with one line, and site.yaml stays as it was."""
    if not password_stdin:
        raise UsageError("--password-stdin is required: the bind password is read from stdin, never an argument")
    site = config.load_site(site_path)
    password = _secret_from_stdin("--password-stdin")
    given: dict[str, Any] = {"url": url, "base_dns": list(base_dns), "bind_dn": bind_dn, "user_type": user_type,
             "user_attribute": user_attribute, "object_class": object_class,
             "ca_file": os.path.relpath(Path(ca_file).resolve(), site.site_dir.resolve()) if ca_file else None,
             "start_tls": start_tls, "removed": removed, "sync_every_min": sync_every_min}
    if map_idnumber:
        given["map"] = {"idnumber": map_idnumber}
    before = site.auth.ldap.model_dump(exclude_defaults=True) if site.auth.ldap else {}
    settings = {**before, **{k: v for k, v in given.items() if v is not None}}
    try:
        candidate = config.LdapSettings.model_validate(settings)
    except ValueError as exc:
        raise UsageError(f"kit auth ldap: {' '.join(str(exc).split())[:300]}") from None
    found = signin.check_directory(candidate, password, site_dir=site.site_dir)
    data = _auth_data(site)
    data["ldap"] = candidate.model_dump(exclude_defaults=True, mode="json")
    _save(site, data, {"ldap_bind_password": password})
    click.echo(f"directory ok: bound as {bind_dn}, {found.entries} users under {len(base_dns)} base DN(s) "
               f"(e.g. {found.sample})")
    click.echo("saved to site.yaml (auth.ldap) and the bind password to the secrets file; run `kit up` to apply")


def _save_issuer(site: config.Site, issuer: dict[str, Any], secret: str) -> None:
    try:
        candidate = config.OAuth2Issuer.model_validate(issuer)
    except ValueError as exc:
        raise UsageError(f"kit auth: {' '.join(str(exc).split())[:300]}") from None
    data = _auth_data(site)
    others = [i for i in data.get("oauth2", []) if i["name"] != candidate.name]
    data["oauth2"] = [*others, candidate.model_dump(exclude_defaults=True, mode="json")]
    _save(site, data, {candidate.secret_key: secret})
    click.echo(f"saved issuer {candidate.name} to site.yaml (auth.oauth2) and its client secret to the secrets "
               "file; run `kit up` to apply")
    click.echo(f"  register this redirect URI with the provider: {site.url}/admin/oauth2callback.php")


@auth.command()
@click.argument("provider", type=click.Choice(["microsoft", "google"]))
@click.option("--client-id", required=True)
@click.option("--client-secret-stdin", is_flag=True, help="Read the client secret from stdin (required).")
@click.option("--tenant", default=None, help="microsoft: the tenant ID (default: common).")
@click.option("--domains", default=None, help="Comma-separated e-mail domains allowed to sign in.")
@click.option("--name", default=None, help="The issuer's key in site.yaml (default: the provider).")
@click.option("--hidden", is_flag=True, help="No button on the login page.")
@SITE_OPTION
def oauth2(provider: str, client_id: str, client_secret_stdin: bool, tenant: str | None, domains: str | None,
           name: str | None, hidden: bool, site_path: str) -> None:
    """Sign-in with Microsoft 365 or Google Workspace (Moodle's OAuth2 issuers). Their
    endpoints are fixed, so `kit up` creates the issuer without reaching the provider."""
    if not client_secret_stdin:
        raise UsageError("--client-secret-stdin is required: the client secret is read from stdin")
    site = config.load_site(site_path)
    issuer: dict[str, Any] = {"name": name or provider, "provider": provider, "client_id": client_id,
                              "domains": [d.strip() for d in (domains or "").split(",") if d.strip()],
                              "show_on_login": not hidden}
    if tenant:
        if provider != "microsoft":
            raise UsageError("--tenant is for microsoft only")
        issuer["tenant"] = tenant
    _save_issuer(site, issuer, _secret_from_stdin("--client-secret-stdin"))


@auth.command()
@click.option("--issuer", "issuer_url", required=True, help="The provider's https:// issuer URL.")
@click.option("--client-id", required=True)
@click.option("--client-secret-stdin", is_flag=True, help="Read the client secret from stdin (required).")
@click.option("--domains", default=None, help="Comma-separated e-mail domains allowed to sign in.")
@click.option("--name", default="oidc", show_default=True, help="The issuer's key in site.yaml.")
@click.option("--hidden", is_flag=True, help="No button on the login page.")
@SITE_OPTION
def oidc(issuer_url: str, client_id: str, client_secret_stdin: bool, domains: str | None, name: str, hidden: bool,
         site_path: str) -> None:
    """Sign-in with any OpenID Connect provider: its endpoints come from its discovery
    document (ISSUER/.well-known/openid-configuration), fetched once here first (refused in
    one line if it is unreachable or incomplete) and again when `kit up` creates the issuer.
    A provider that does not answer at rollout leaves its issuer disabled, not the rollout
    failed."""
    if not client_secret_stdin:
        raise UsageError("--client-secret-stdin is required: the client secret is read from stdin")
    site = config.load_site(site_path)
    secret = _secret_from_stdin("--client-secret-stdin")
    doc = signin.check_discovery(site, issuer_url)
    click.echo(f"provider ok: {issuer_url} (authorization at {doc['authorization_endpoint']})")
    _save_issuer(site, {"name": name, "provider": "oidc", "client_id": client_id, "issuer": issuer_url.rstrip("/"),
                        "domains": [d.strip() for d in (domains or "").split(",") if d.strip()],
                        "show_on_login": not hidden}, secret)


@auth.command()
@click.argument("state", required=False, type=click.Choice(["off"]))
@click.option("--admins", type=click.Choice(["totp", "off"]), default=None,
              help="totp: site admins need an authenticator code after their password.")
@click.option("--grace-days", type=click.IntRange(0, 90), default=None,
              help="Days an admin without an authenticator may still sign in (default 7).")
@SITE_OPTION
def mfa(state: str | None, admins: str | None, grace_days: int | None, site_path: str) -> None:
    """MFA for site admins (Moodle's tool_mfa, TOTP factor).

    `kit auth mfa --admins totp` saves it and gives the kit's admin an authenticator secret
    (written to a file only you can read); `kit up` applies. `kit auth mfa off` is the
    emergency switch: it turns MFA off on the running site at once, and in site.yaml."""
    site = config.load_site(site_path)
    wanted = "off" if state == "off" else admins
    if wanted is None:
        raise UsageError("say --admins totp, --admins off, or `kit auth mfa off`")
    data = _auth_data(site)
    data["mfa"] = {**data.get("mfa", {}), "admins": wanted, **({"grace_days": grace_days} if grace_days is not None
                                                                  else {})}
    if wanted == "off":
        target = _owned(site, "auth mfa off")
        target.moodle_cli(["admin/cli/cfg.php", "--component=tool_mfa", "--name=enabled", "--set=0"])
        _save(site, data, {})
        click.echo("MFA is off on the running site and in site.yaml: admins sign in with their password")
        return
    secrets: dict[str, str] = {}
    current = config.load_secrets(site)
    if not current.get("admin_totp_secret"):
        import pyotp

        secrets["admin_totp_secret"] = pyotp.random_base32()
    _save(site, data, secrets)
    totp_secret = secrets.get("admin_totp_secret") or current["admin_totp_secret"]
    uri_file = site.state_dir / "admin-totp.txt"
    import pyotp

    uri = pyotp.TOTP(totp_secret).provisioning_uri(name=site.moodle.admin_user, issuer_name=f"Moodle {site.name}")
    config.write_private(uri_file, uri + "\n")
    click.echo(f"saved to site.yaml (auth.mfa.admins: {wanted}); run `kit up` to apply")
    click.echo(f"the authenticator secret of {site.moodle.admin_user}: {uri_file} (owner-only); add it to an "
               "authenticator app (as a QR code: qrencode -t ansiutf8 < that file), then delete the file")


@auth.command(name="test")
@click.option("--user", "username", required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (required).")
@SITE_OPTION
def test_cmd(username: str, password_stdin: bool, site_path: str) -> None:
    """One real sign-in through Moodle's login page; says which method took it."""
    if not password_stdin:
        raise UsageError("--password-stdin is required")
    site = config.load_site(site_path)
    target = _owned(site, "auth test")
    password = _secret_from_stdin("--password-stdin")
    result = signin.sign_in(site, target.local_url(), username, password)
    who = _moodle_json(target, ["/opt/kit/accounts.php", "whois", username])
    method = who["auth"] if who else "?"
    if result.status == "in":
        click.echo(f"signed in: {username} (auth method: {method}, {who['firstname']} {who['lastname']}, "
                   f"{who['email']})" if who else f"signed in: {username}")
    elif result.status == "mfa":
        click.echo(f"password accepted for {username} (auth method: {method}); MFA asks for a code next")
    else:
        raise OperationFailed(f"sign-in refused for {username}: {result.message}"
                              + (f" (auth method: {method}{', suspended' if who and who['suspended'] else ''}"
                                 f"{', locked out' if who and who['locked'] else ''})" if who else
                                 " (no such account in Moodle yet: a directory user gets one at first sign-in)"))


@auth.command()
@click.option("--json", "as_json", is_flag=True)
@SITE_OPTION
def status(as_json: bool, site_path: str) -> None:
    """Sign-in methods on, users per method, the directory sync's last run."""
    site = config.load_site(site_path)
    target = _owned(site, "auth status")
    state = _moodle_json(target, ["/opt/kit/accounts.php", "status"])
    if as_json:
        click.echo(json.dumps(state, indent=2))
        return
    click.echo(f"methods on: manual, {', '.join(state['enabled']) or '(no other)'}")
    for method, count in sorted(state["users"].items()):
        click.echo(f"  {method:10} {count} users")
    click.echo(f"  suspended  {state['suspended']}")
    sync = state.get("ldap_sync")
    if site.auth.ldap and sync:
        last = time.strftime("%Y-%m-%d %H:%M", time.localtime(sync["lastrun"])) if sync["lastrun"] else "never"
        click.echo(f"directory sync: {'off' if sync['disabled'] else 'on'}, last run {last}"
                   + (f", failing (retry delay {sync['faildelay']} s)" if sync["faildelay"] else ""))
    for issuer in state["issuers"]:
        click.echo(f"issuer {issuer['name']}: {'enabled' if issuer['enabled'] else 'disabled'}")
    click.echo(f"MFA for admins: {'on' if state['mfa'] else 'off'}; lockout after {state['lockout']} wrong passwords")


def _moodle_json(target: Target, args: list[str], stdin: bytes | None = None) -> Any:
    _, out = target.moodle_cli(args, stdin=stdin, quiet=True)
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise OperationFailed(f"Moodle's answer to {' '.join(args)} was not JSON: {out.strip()[:200]}") from None


# --- bulk imports ---------------------------------------------------------------------------

def _report(check: bulk.CsvCheck, source: str) -> None:
    for line, message in check.errors:
        click.echo(f"  {source}:{line}: {message}", err=True)


def _run_import(target: Target, kind: bulk.Kind, data: bytes, rows: int, options: list[str]) -> bulk.ImportResult:
    started = time.monotonic()
    code, out = target.moodle_cli(["/opt/kit/import.php", kind, str(rows), *options], stdin=data, check=False)
    result = bulk.parse_moodle_output(out)
    if code != 0 and not (result.created or result.updated or result.failed):
        last = (out.strip().splitlines() or ["no output"])[-1]
        raise OperationFailed(f"Moodle's upload CLI exited {code}: {last[:300]}")
    click.echo(f"imported in {time.monotonic() - started:.0f} s")
    return result


def _refuse_bad_rows(check: bulk.CsvCheck, continue_on_errors: bool, source: str) -> None:
    if check.errors and not continue_on_errors:
        _report(check, source)
        raise UsageError(f"{source}: {len(check.bad_lines)} bad row(s) (lines "
                         f"{', '.join(map(str, check.bad_lines[:20]))}{'...' if len(check.bad_lines) > 20 else ''}); "
                         "nothing was imported; fix them, or import the rest with --continue-on-errors")
    if check.errors:
        _report(check, source)
        click.echo(f"skipping {len(check.bad_lines)} bad row(s); importing the other "
                   f"{len(check.rows) - len(check.bad_lines)}", err=True)


@click.group(name="users")
def users() -> None:
    """Accounts in bulk: `kit users import students.csv [--dry-run] [--auth ldap]`."""


@users.command(name="import")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Check the file and say what would change; change nothing.")
@click.option("--auth", "auth_method", type=click.Choice(["manual", "ldap", "oauth2"]), default="manual",
              show_default=True, help="Sign-in method of the new accounts (ldap/oauth2: no password column).")
@click.option("--continue-on-errors", is_flag=True, help="Import the good rows when some rows are bad.")
@SITE_OPTION
def users_import(csv_file: str, dry_run: bool, auth_method: str, continue_on_errors: bool, site_path: str) -> None:
    """Create or update accounts, with enrolments (course1, role1, ... columns), through
    Moodle's upload-user CLI. Checks the whole file first (encoding, columns, duplicate
    usernames, e-mails, unknown courses) and reports bad rows by line number. The same
    file imported twice changes nothing."""
    site = config.load_site(site_path)
    if (auth_method == "ldap" and not site.auth.ldap) or (auth_method == "oauth2" and not site.auth.oauth2):
        raise UsageError(f"--auth {auth_method}: site.yaml signs in no one that way (`kit auth {auth_method} ...` "
                         "first)")
    target = _owned(site, "users import")
    source = Path(csv_file).name
    check = bulk.read_csv("users", Path(csv_file).read_bytes(), source=source)
    known = set(_moodle_json(target, ["/opt/kit/accounts.php", "courses"]))
    bulk.check_users(check, auth=auth_method, known_courses=known)
    existing = set(_moodle_json(target, ["/opt/kit/accounts.php", "existing", "users"],
                                stdin="\n".join(check.keys()).encode()))
    bad = set(check.bad_lines)
    good_keys = check.good_keys()
    new = sum(1 for key in good_keys if key not in existing)
    if dry_run:
        _report(check, source)
        click.echo(f"dry run: {len(check.rows)} rows: {new} accounts would be created, {len(good_keys) - new} exist "
                   f"(updated only where the file differs), {len(bad)} bad row(s); nothing was changed")
        if bad and not continue_on_errors:
            raise UsageError(f"{source}: {len(bad)} bad row(s); a real import would refuse (or skip them with "
                             "--continue-on-errors)")
        return
    _refuse_bad_rows(check, continue_on_errors, source)
    data = check.good_csv(fill={"auth": auth_method})
    click.echo(f"importing {len(good_keys)} rows ({new} new accounts) with Moodle's upload-user CLI")
    # Add new and update existing from the file; passwords of existing accounts are kept.
    options = ["--uutype=2", "--uuupdatetype=1", "--uupasswordold=0", "--uupasswordnew=0", "--uunoemailduplicates=0",
               "--uustandardusernames=1"]
    result = _run_import(target, "users", data, len(good_keys), options)
    for line, message in result.failed_lines:
        click.echo(f"  {source}:{line}: {message}", err=True)
    click.echo(f"created {result.created}, updated {result.updated}, skipped {result.skipped + len(bad)}, "
               f"failed {result.failed + len(bad)}" + (f" (lines {', '.join(str(n) for n in sorted(bad))})" if bad else ""))
    if result.failed:
        raise OperationFailed(f"{result.failed} row(s) failed in Moodle (lines "
                              f"{', '.join(str(line) for line, _ in result.failed_lines[:20])})")


@click.group(name="courses")
def courses() -> None:
    """Courses in bulk: `kit courses import courses.csv [--dry-run]`."""


@courses.command(name="import")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Check the file and say what would change; change nothing.")
@click.option("--continue-on-errors", is_flag=True, help="Import the good rows when some rows are bad.")
@SITE_OPTION
def courses_import(csv_file: str, dry_run: bool, continue_on_errors: bool, site_path: str) -> None:
    """Create courses (shortname, fullname, category... columns) through Moodle's
    upload-course CLI; courses that exist are left as they are."""
    site = config.load_site(site_path)
    target = _owned(site, "courses import")
    source = Path(csv_file).name
    check = bulk.check_courses(bulk.read_csv("courses", Path(csv_file).read_bytes(), source=source))
    existing = set(_moodle_json(target, ["/opt/kit/accounts.php", "existing", "courses"],
                                stdin="\n".join(check.keys()).encode()))
    bad = set(check.bad_lines)
    good = check.good_keys()
    new = [key for key in good if key not in existing]
    if dry_run:
        _report(check, source)
        click.echo(f"dry run: {len(check.rows)} rows: {len(new)} courses would be created, {len(good) - len(new)} "
                   f"exist (left as they are), {len(bad)} bad row(s); nothing was changed")
        if bad and not continue_on_errors:
            raise UsageError(f"{source}: {len(bad)} bad row(s); a real import would refuse")
        return
    _refuse_bad_rows(check, continue_on_errors, source)
    data = check.good_csv(skip=existing)      # existing courses are left as they are
    if not new:
        click.echo(f"created 0, updated 0, skipped {len(good) + len(bad)}, failed {len(bad)}: every course exists")
        return
    click.echo(f"importing {len(good)} rows ({len(new)} new courses) with Moodle's upload-course CLI")
    result = _run_import(target, "courses", data, len(new), ["--mode=createnew", "--updatemode=nothing"])
    for line, message in result.failed_lines:
        click.echo(f"  {source}: new course {line - 1} of the import: {message}", err=True)
    skipped = len(good) - len(new)
    click.echo(f"created {result.created}, updated {result.updated}, skipped {skipped + len(bad)}, "
               f"failed {result.failed + len(bad)}")
    if result.failed:
        raise KitError(f"{result.failed} course row(s) failed in Moodle")
