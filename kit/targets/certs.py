"""The edge's certificate on the Docker targets (local, hosts): staged for `files` and
`self-signed` before the rollout, obtained with certbot through the edge for `acme` after
it, read back from what the edge serves for `kit certs`, `kit status` and doctor.
"""
from __future__ import annotations

import datetime as dt
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import click

from kit import tls
from kit.config import Site, write_private
from kit.doctor import Check
from kit.errors import KitError, OperationFailed, UsageError

if TYPE_CHECKING:
    from kit.targets.docker import DockerTarget

LIVE = "/etc/letsencrypt/live"
#: certbot renews a certificate this many days before it expires (its default).
CERTBOT_RENEW_DAYS = 30


def host_of(site: Site) -> str:
    return urlparse(site.url or "").hostname or ""


def tls_dir(site: Site) -> Path:
    return site.state_dir / "tls"


def check(site: Site) -> list[Check]:
    """What `kit up` checks of the TLS settings before it changes anything (doctor too)."""
    mode = site.tls.mode
    if mode == "files":
        assert site.tls.cert and site.tls.key
        try:
            found = tls.check_files(site.site_dir / site.tls.cert, site.site_dir / site.tls.key, host_of(site))
        except KitError as exc:
            return [Check("tls", False, str(exc))]
        return [Check("tls", True, f"certificate for {', '.join(found.names)} from {found.issuer}, valid until "
                                   f"{found.not_after:%Y-%m-%d}")]
    if mode == "acme":
        bundle = site.tls.acme_ca_bundle
        if bundle and not (site.site_dir / bundle).is_file():
            return [Check("tls", False, f"tls.acme_ca_bundle: {site.site_dir / bundle} does not exist")]
        return [Check("tls", True, f"ACME from {site.tls.acme_directory} for {host_of(site)} (HTTP-01 on port "
                                   f"{site.http.port})")]
    if mode == "self-signed":
        return [Check("tls", True, f"self-signed trial certificate for {host_of(site)}: browsers will warn; use "
                                   "tls.mode acme or files before students arrive")]
    return []


def stage(site: Site) -> None:
    """Put the certificate the edge role copies into .kit/<site>/tls/ (owner-only)."""
    out = tls_dir(site)
    if site.tls.mode == "files":
        assert site.tls.cert and site.tls.key
        # every command that applies the site (up, upgrade, rotate, scale) checks them again
        tls.check_files(site.site_dir / site.tls.cert, site.site_dir / site.tls.key, host_of(site))
        write_private(out / "fullchain.pem", (site.site_dir / site.tls.cert).read_text())
        write_private(out / "privkey.pem", (site.site_dir / site.tls.key).read_text())
    elif site.tls.mode == "self-signed":
        current = out / "fullchain.pem"
        keep = False
        if current.is_file():
            found = tls.describe_pem(current.read_bytes())
            keep = host_of(site) in found.names and found.days_left() > tls.EXPIRY_WARN_DAYS
        if not keep:
            make_self_signed(site)
    elif site.tls.mode == "acme" and site.tls.acme_ca_bundle:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(site.site_dir / site.tls.acme_ca_bundle, out / "acme-ca.pem")


def make_self_signed(site: Site) -> tls.CertInfo:
    cert, key = tls.self_signed(host_of(site))
    write_private(tls_dir(site) / "privkey.pem", key.decode())
    write_private(tls_dir(site) / "fullchain.pem", cert.decode())
    click.secho(f"    self-signed trial certificate for {host_of(site)} (browsers will warn; use tls.mode acme or "
                "files for students)", fg="yellow", bold=True)
    return tls.describe_pem(cert)


def site_ca_dir(site: Site) -> Path:
    return tls_dir(site) / "site"


def stage_site_ca(target: DockerTarget) -> None:
    """hosts: the site CA (made once, kept like a secret) and the certificates of the db and
    redis machines it signs, renewed when their address changed or they near expiry."""
    site = target.site
    folder = site_ca_dir(site)
    if not (folder / "ca.crt").is_file() or not (folder / "ca.key").is_file():
        if any(f.objects for f in target.found()):
            raise KitError(f"{folder}: the site CA is missing, and the running site's PostgreSQL and Redis "
                           "certificates come from it: restore it from a copy of this folder (nothing was changed)")
        ca_cert, ca_key = tls.make_ca(site.name)
        write_private(folder / "ca.key", ca_key.decode())
        write_private(folder / "ca.crt", ca_cert.decode())
        click.echo(f"    made the site CA in {folder} (owner-only)")
    ca_cert, ca_key = (folder / "ca.crt").read_bytes(), (folder / "ca.key").read_bytes()
    for role in ("db", "redis"):
        address = site.hosts.with_role(role)[0].address
        cert_file = folder / f"{role}.crt"
        if cert_file.is_file():
            found = tls.describe_pem(cert_file.read_bytes())
            if address in found.names and found.days_left() > 60:
                continue
        cert, key = tls.issue(ca_cert, ca_key, [address])
        write_private(folder / f"{role}.key", key.decode())
        write_private(cert_file, cert.decode())


class EdgeCertificates:
    """The certificate operations that need the running edge."""

    def __init__(self, target: DockerTarget) -> None:
        self.target, self.site = target, target.site

    def _edge(self, argv: list[str], *, quiet: bool = False) -> tuple[int, str, str]:
        edge = self.target.names.edge
        return self.target.engine_for(edge).exec(edge, argv, user="root", stream=not quiet)

    def _certbot_args(self) -> list[str]:
        return ["--non-interactive", "--agree-tos", "--no-eff-email", "--email", self.site.tls.acme_email or "",
                "--server", self.site.tls.acme_directory, "--webroot", "-w", "/var/www/acme",
                "--deploy-hook", "/opt/kit/tls-deployed.sh"]

    def issue(self) -> bool:
        """acme: obtain the first certificate through the edge (HTTP-01), once; True when one
        was obtained now."""
        if self.site.tls.mode != "acme":
            return False
        host = host_of(self.site)
        code, _, _ = self._edge(["test", "-s", f"{LIVE}/{host}/fullchain.pem"], quiet=True)
        if code == 0:
            return False
        click.secho(f"==> ACME: a certificate for {host} from {self.site.tls.acme_directory}", bold=True)
        code, out, err = self._edge(["certbot", "certonly", "--cert-name", host, "-d", host,
                                     "--keep-until-expiring",
                                     *self._certbot_args()])
        if code != 0:
            reason = next((line.strip() for line in reversed((err + out).splitlines())
                           if line.strip() and "log" not in line.lower()), "no output")
            raise OperationFailed(f"ACME: certbot got no certificate for {host} ({reason[:200]}); the site serves "
                                  f"a temporary one: check that {host} resolves to this site and port "
                                  f"{self.site.http.port} is reachable, then `kit certs --renew`")
        return True

    def renew(self) -> tls.CertInfo:
        """A new certificate now: ACME renewal (forced), or a new self-signed one."""
        mode = self.site.tls.mode
        if mode == "acme" and self.issue():
            pass    # there was no certificate yet (the first issuance had failed): now there is
        elif mode == "acme":
            code, out, err = self._edge(["certbot", "renew", "--force-renewal", "--cert-name", host_of(self.site),
                                         "--no-random-sleep-on-renew", "--deploy-hook", "/opt/kit/tls-deployed.sh"])
            if code != 0:
                last = ((err or out).strip().splitlines() or ["no output"])[-1]
                raise OperationFailed(f"ACME renewal failed: {last[:200]}; the current certificate stays")
        elif mode == "self-signed":
            make_self_signed(self.site)
            self.target.ansible("site.yml", tags="tls")
        elif mode == "files":
            raise UsageError("tls.mode files: the certificate is yours; replace tls.cert and tls.key, then `kit up`")
        else:
            raise UsageError(f"this site's edge ends no TLS (tls.mode {mode or 'none'}): nothing to renew")
        return self.served()

    def served(self) -> tls.CertInfo:
        address = urlparse(self.target.local_url()).hostname or "127.0.0.1"
        return tls.served(address, self.site.tls.port, host_of(self.site))

    def report(self) -> tuple[tls.CertInfo, str]:
        """The served certificate, and when it is renewed."""
        found = self.served()
        mode = self.site.tls.mode
        if mode == "acme":
            when = found.not_after - dt.timedelta(days=CERTBOT_RENEW_DAYS)
            renewal = f"renewed from {when:%Y-%m-%d} (certbot checks twice a day; `kit certs --renew` forces it)"
        elif mode == "self-signed":
            renewal = "self-signed: `kit certs --renew` makes a new one (doctor warns 14 days before expiry)"
        else:
            renewal = "your certificate: replace tls.cert and tls.key, then `kit up`"
        return found, renewal

    def runtime_check(self) -> Check | None:
        """doctor: FAIL when the served certificate does not name the URL's host; a warning in
        its line within 14 days of expiry (FAIL once expired)."""
        if not self.site.tls.at_edge:
            return None
        try:
            found = self.served()
        except KitError as exc:
            return Check("tls", False, str(exc))
        host = host_of(self.site)
        days = found.days_left()
        if not tls.names_match(found.names, host):
            return Check("tls", False, f"the edge serves a certificate for {', '.join(found.names) or found.subject}, "
                                       f"not {host}: `kit certs --renew` (acme), or fix tls.cert and `kit up`")
        if days <= 0:
            return Check("tls", False, f"the certificate expired on {found.not_after:%Y-%m-%d}: `kit certs --renew`")
        note = f"; WARNING: expires in {days:.0f} days: `kit certs --renew`" if days < tls.EXPIRY_WARN_DAYS else ""
        return Check("tls", True, f"serving {found.issuer}'s certificate for {host} until "
                                  f"{found.not_after:%Y-%m-%d}{note}")


def print_report(found: tls.CertInfo, renewal: str) -> None:
    out = sys.stdout
    out.write(f"  issuer   {found.issuer}\n  names    {', '.join(found.names)}\n"
              f"  expires  {found.not_after:%Y-%m-%d %H:%M} UTC ({found.days_left():.0f} days)\n"
              f"  serial   {found.serial}\n  renewal  {renewal}\n")
