"""``fedlego certs``: the keys and certificates a consortium needs, made with ``cryptography``.

Layout under the output folder (each private key 0600 in its owner's folder only):

    ca/ca.key, ca/ca.pem                       certificate authority
    superlink/server.key, server.pem, ca.pem    the coordinator's TLS certificate (with SANs)
    coordinator/signing.key, signing.pub        signs merged and fused models
    coordinator/trusted-sites.json              every signer's public key (sites + coordinator)
    coordinator/node-auth/<site>.pub            SuperNode public keys to register at the SuperLink
    sites/<site>/node-auth, node-auth.pub       SuperNode authentication key pair (EC P-256, OpenSSH)
    sites/<site>/signing.key, signing.pub       the site's package signing key pair (Ed25519)
    sites/<site>/ca.pem                         to verify the SuperLink's certificate
    sites/<site>/coordinator.pub                to verify the models the coordinator signs

Re-running adds what is missing (e.g. a new site) and never overwrites an existing key; a server
certificate whose names differ from those asked for is re-issued with the same key. A site that made
its own keys (``fedlego certs request`` at the hospital, ``fedlego certs sign`` here; see
``fedlego.cert_requests``) has only its public keys in ``sites/<site>``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedlego.common.signing import (
    COORDINATOR,
    load_public_key,
    load_signing_key,
    private_key_pem,
    public_key_pem,
    write_trusted_sites,
)

VALID_DAYS = 825
REQUIRED_SERVER_NAMES = ("127.0.0.1", "localhost")
"""Names the SuperLink's certificate always holds: ``fedlego superlink`` registers node keys and
``fedlego run`` on the coordinator's machine reach it locally."""


@dataclass
class CertsReport:
    """What ``make_consortium`` created and what it found already there."""

    created: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


def _write_private(path: Path, data: bytes, report: CertsReport) -> bool:
    """Write a private key with 0600 permissions, unless one exists (then keep it)."""
    if path.exists():
        report.kept.append(path)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    report.created.append(path)
    return True


def write_public(path: Path, data: bytes, report: CertsReport) -> None:
    """Write a public file (certificate, public key) when it is missing or differs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_bytes() == data:
        return
    path.write_bytes(data)
    report.created.append(path)


def _load_private(path: Path):
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def ec_key_file(path: Path, report: CertsReport, encoding: str = "pem") -> ec.EllipticCurvePrivateKey:
    """An EC P-256 private key at ``path`` (created if missing, 0600; PEM or OpenSSH)."""
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        private_format = (
            serialization.PrivateFormat.OpenSSH if encoding == "openssh" else (serialization.PrivateFormat.PKCS8)
        )
        _write_private(
            path, key.private_bytes(serialization.Encoding.PEM, private_format, serialization.NoEncryption()), report
        )
        return key
    report.kept.append(path)
    if encoding == "openssh":
        return serialization.load_ssh_private_key(path.read_bytes(), password=None)
    return _load_private(path)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedlego consortium"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _current_names(out: Path) -> list[str]:
    """The names of the SuperLink certificate already there (none before the first run)."""
    path = out / "superlink" / "server.pem"
    return certificate_names(x509.load_pem_x509_certificate(path.read_bytes())) if path.exists() else []


def _ca(folder: Path, report: CertsReport, renew: bool = False) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The CA key and certificate (a renewed certificate keeps the key and subject, so that
    certificates it signed before still verify)."""
    key = ec_key_file(folder / "ca.key", report)
    cert_path = folder / "ca.pem"
    if cert_path.exists() and not renew:
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedlego consortium CA"))
        .issuer_name(_name("fedlego consortium CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM), report)
    return key, cert


def _alternative_names(names: Sequence[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def server_names(explicit: Sequence[str]) -> list[str]:
    """The SuperLink certificate's names: those given (the first is its common name), then the
    required local ones."""
    names = list(dict.fromkeys(explicit))
    return names + [name for name in REQUIRED_SERVER_NAMES if name not in names]


def certificate_names(certificate: x509.Certificate) -> list[str]:
    """The IP addresses and DNS names of a certificate's subject alternative names."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in names.get_values_for_type(x509.IPAddress)] + names.get_values_for_type(x509.DNSName)


def _server_certificate(
    folder: Path, ca_key, ca_cert: x509.Certificate, names: Sequence[str], report: CertsReport, renew: bool = False
) -> None:
    """The SuperLink's certificate: kept when it holds exactly ``names`` (and ``renew`` is off),
    else issued again for the same key."""
    key = ec_key_file(folder / "server.key", report)
    cert_path = folder / "server.pem"
    if cert_path.exists() and not renew:
        existing = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if sorted(certificate_names(existing)) == sorted(names):
            report.kept.append(cert_path)
            return
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(_alternative_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM), report)


def signing_pair(folder: Path, report: CertsReport) -> Ed25519PrivateKey:
    """The Ed25519 signing key of ``folder`` (created if missing) and its public file."""
    path = folder / "signing.key"
    if path.exists():
        report.kept.append(path)
        key = load_signing_key(path)
    else:
        key = Ed25519PrivateKey.generate()
        _write_private(path, private_key_pem(key), report)
    write_public(folder / "signing.pub", public_key_pem(key.public_key()).encode(), report)
    return key


def site_keys(folder: Path, report: CertsReport) -> tuple[Ed25519PublicKey, bytes]:
    """A site's public signing key and OpenSSH node-auth public key: read from the public files of
    a site that made its own keys (no private key here), else from (new or kept) key pairs."""
    requested = not (folder / "signing.key").exists() and (folder / "signing.pub").is_file()
    if requested and (folder / "node-auth.pub").is_file():
        signing = load_public_key(folder / "signing.pub")
        return signing, (folder / "node-auth.pub").read_bytes().strip()
    signing = signing_pair(folder, report).public_key()
    auth = ec_key_file(folder / "node-auth", report, encoding="openssh")
    public = auth.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return signing, public


def check_site_name(site: str) -> str:
    """A site name usable as a folder and signer name (ValueError otherwise)."""
    if not site or "/" in site or site.startswith(".") or site == COORDINATOR:
        raise ValueError(f"invalid site name {site!r}")
    return site


def make_consortium(
    out: Path, sites: Sequence[str], explicit_server_names: Sequence[str] = (), renew: bool = False
) -> CertsReport:
    """Create (or complete) the consortium's keys and certificates under ``out``. The SuperLink's
    certificate holds ``explicit_server_names`` plus ``REQUIRED_SERVER_NAMES``; with ``renew`` the
    CA and server certificates are issued again for their same keys (site keys are never touched)."""
    for site in sites:
        check_site_name(site)
    report = CertsReport()
    ca_key, ca_cert = _ca(out / "ca", report, renew)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    names = server_names(explicit_server_names or _current_names(out))
    _server_certificate(out / "superlink", ca_key, ca_cert, names, report, renew)
    write_public(out / "superlink" / "ca.pem", ca_pem, report)
    signers = {COORDINATOR: signing_pair(out / "coordinator", report).public_key()}
    existing = sorted(p.name for p in (out / "sites").iterdir()) if (out / "sites").exists() else []
    for site in sorted(set(sites) | set(existing)):
        folder = out / "sites" / site
        signers[site], public = site_keys(folder, report)
        write_public(folder / "node-auth.pub", public + b"\n", report)
        write_public(out / "coordinator" / "node-auth" / f"{site}.pub", public + b"\n", report)
        write_public(folder / "ca.pem", ca_pem, report)
        write_public(folder / "coordinator.pub", public_key_pem(signers[COORDINATOR]).encode(), report)
    trusted = out / "coordinator" / "trusted-sites.json"
    write_trusted_sites(signers, trusted)
    report.created.append(trusted)
    return report
