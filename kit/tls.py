"""Certificates: the checks `files` mode passes before anything changes, the self-signed
trial certificate, what the edge serves (for `kit certs` and doctor), and the site CA
that signs the PostgreSQL and Redis certificates of a `hosts` site.

Every failure is one line naming the file and what to do.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kit.errors import KitError

SYSTEM_TRUST = Path("/etc/ssl/certs/ca-certificates.crt")
SELF_SIGNED_DAYS = 90
EXPIRY_WARN_DAYS = 14


@dataclass(frozen=True)
class CertInfo:
    subject: str
    issuer: str
    names: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    serial: str

    def days_left(self, now: dt.datetime | None = None) -> float:
        now = now or dt.datetime.now(dt.UTC)
        return (self.not_after - now).total_seconds() / 86400

    def as_dict(self) -> dict[str, object]:
        return {"subject": self.subject, "issuer": self.issuer, "names": list(self.names),
                "not_before": self.not_before.isoformat(), "not_after": self.not_after.isoformat(),
                "serial": self.serial}


def info(cert: x509.Certificate) -> CertInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName)) + tuple(
            str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        names = ()
    return CertInfo(subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(), names=names,
                    not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
                    serial=format(cert.serial_number, "x"))


def names_host(cert: x509.Certificate, host: str) -> bool:
    """RFC 6125 matching of the URL's host against the certificate's names."""
    return names_match(info(cert).names, host)


def names_match(names: tuple[str, ...] | list[str], host: str) -> bool:
    """A name equal to the host, or a wildcard for exactly one label of it (*.example.edu
    covers lms.example.edu, not a.lms.example.edu), as browsers match."""
    host = host.lower().rstrip(".")
    for name in names:
        name = name.lower().rstrip(".")
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _load_chain(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KitError(f"tls.cert: {path} cannot be read ({exc.strerror})") from None
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise KitError(f"tls.cert: {path} is not a PEM certificate chain") from None
    return chain


def system_roots() -> list[x509.Certificate]:
    import warnings

    try:
        with warnings.catch_warnings():   # a few old roots have serials RFC 5280 disallows
            warnings.simplefilter("ignore")
            return x509.load_pem_x509_certificates(SYSTEM_TRUST.read_bytes())
    except (OSError, ValueError):
        return []


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return cert.version == x509.Version.v1    # old v1 roots carry no extensions


def check_files(cert_path: Path, key_path: Path, host: str, now: dt.datetime | None = None) -> CertInfo:
    """`files` mode: the key matches the certificate, the chain is complete, nothing in it
    is expired, and the certificate names the URL's host. One KitError line per failure."""
    now = now or dt.datetime.now(dt.UTC)
    chain = _load_chain(cert_path)
    leaf = chain[0]
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise KitError(f"tls.key: {key_path} cannot be read ({exc.strerror})") from None
    except (ValueError, TypeError):
        raise KitError(f"tls.key: {key_path} is not an unencrypted PEM private key") from None
    public = leaf.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo) != public:
        raise KitError(f"tls.key: {key_path} does not match the certificate in {cert_path} (its public key "
                       "differs): give the key the certificate was issued for")
    if leaf.issuer == leaf.subject:
        raise KitError(f"tls.cert: {cert_path} is self-signed ({leaf.subject.rfc4514_string()}): browsers refuse "
                       "it; give your CA's certificate, or use tls.mode self-signed for a trial")
    current, roots, seen, path = leaf, None, {leaf.fingerprint(hashes.SHA256())}, [leaf]
    while current.issuer != current.subject:
        issuer = next((c for c in chain if c is not current and _issued_by(current, c)), None)
        if issuer is None:
            roots = roots if roots is not None else system_roots()
            if any(_issued_by(current, root) for root in roots):
                break
            raise KitError(f"tls.cert: {cert_path}: the chain is incomplete: nothing in it, nor in this machine's "
                           f"trusted roots, issued {current.subject.rfc4514_string()}; append the intermediate "
                           "certificate(s) your CA gave you (fullchain.pem)")
        if not _is_ca(issuer):
            raise KitError(f"tls.cert: {cert_path}: {issuer.subject.rfc4514_string()} signed "
                           f"{current.subject.rfc4514_string()} but is not a CA certificate")
        fingerprint = issuer.fingerprint(hashes.SHA256())
        if fingerprint in seen:     # cross-signed certificates that issued each other
            break
        seen.add(fingerprint)
        path.append(issuer)
        current = issuer
    for cert in path:   # the path to the root: an extra expired cross-sign in the file is harmless
        if cert.not_valid_after_utc <= now:
            raise KitError(f"tls.cert: {cert_path}: {cert.subject.rfc4514_string()} expired on "
                           f"{cert.not_valid_after_utc:%Y-%m-%d}: renew it with your CA")
        if cert.not_valid_before_utc > now:
            raise KitError(f"tls.cert: {cert_path}: {cert.subject.rfc4514_string()} is not valid before "
                           f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check this machine's clock)")
    if not names_host(leaf, host):
        shown = ", ".join(info(leaf).names) or leaf.subject.rfc4514_string()
        raise KitError(f"tls.cert: {cert_path} is for {shown}, not for {host} (the url's host): give the "
                       "certificate of this site's name")
    return info(leaf)


def self_signed(host: str, days: int = SELF_SIGNED_DAYS) -> tuple[bytes, bytes]:
    """A trial certificate for the URL's host: (certificate PEM, key PEM). Browsers warn."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "the kit (self-signed trial)")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([_general_name(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def describe_pem(pem: bytes) -> CertInfo:
    return info(x509.load_pem_x509_certificates(pem)[0])


def served(address: str, port: int, server_name: str, timeout: float = 10) -> CertInfo:
    """The certificate the edge serves for a name (SNI), read without trusting it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((address, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=server_name) as conn:
            der = conn.getpeercert(binary_form=True)
    except OSError as exc:
        raise KitError(f"no TLS answer at {address}:{port} for {server_name} ({exc})") from None
    if not der:
        raise KitError(f"{address}:{port} sent no certificate for {server_name}")
    return info(x509.load_der_x509_certificate(der))


# --- the site CA (hosts target: PostgreSQL and Redis links between machines) --------------------

def make_ca(site_name: str, days: int = 3650) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"kit site CA ({site_name})")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def issue(ca_cert_pem: bytes, ca_key_pem: bytes, names: list[str], days: int = 825) -> tuple[bytes, bytes]:
    """A server certificate from the site CA for the given names (addresses or DNS names)."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)
