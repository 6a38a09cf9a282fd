"""Certificate expiry: ``fedlego certs status`` lists each certificate of a consortium or site folder
with its names and days left; the commands that use a certs folder (superlink, site, run) warn when
one expires within ``WARN_DAYS`` and refuse an expired one. ``fedlego certs renew`` re-issues them."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from fedlego.certs import certificate_names

WARN_DAYS = 30
"""A certificate that expires within this many days is warned about before every run."""
CERTIFICATES = ("ca/ca.pem", "superlink/ca.pem", "superlink/server.pem", "ca.pem")
"""Where certificates lie in a consortium folder (the first three) or a site's folder (the last)."""


@dataclass
class CertificateStatus:
    """One certificate file: its subject, names and how long it stays valid."""

    path: Path
    subject: str
    names: list[str]
    not_after: datetime.datetime

    @property
    def days_left(self) -> int:
        """Whole days until it expires (negative once expired)."""
        return (self.not_after - datetime.datetime.now(datetime.UTC)).days

    def line(self) -> str:
        """One line for a person: file, subject, names, expiry."""
        names = f" names {', '.join(self.names)};" if self.names else ""
        state = "EXPIRED" if self.days_left < 0 else f"{self.days_left} days left"
        return f"{self.path}: {self.subject};{names} valid until {self.not_after:%Y-%m-%d} ({state})"


def certificate_status(path: Path) -> CertificateStatus:
    """The status of one PEM certificate file (ValueError naming the file when it cannot be read)."""
    try:
        certificate = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable PEM certificate ({error})") from error
    return CertificateStatus(
        Path(path),
        certificate.subject.rfc4514_string(),
        certificate_names(certificate),
        certificate.not_valid_after_utc,
    )


def folder_status(folder: Path) -> list[CertificateStatus]:
    """Every certificate of a consortium folder or a site's folder."""
    return [certificate_status(folder / name) for name in CERTIFICATES if (folder / name).is_file()]


def expiry_problems(folder: Path, within_days: int = WARN_DAYS) -> tuple[list[str], list[str]]:
    """(warnings, errors): certificates expiring within ``within_days``, and expired ones."""
    warnings, errors = [], []
    for status in folder_status(folder):
        if status.days_left < 0:
            errors.append(f"{status.path} expired on {status.not_after:%Y-%m-%d}: renew it (`fedlego certs renew`)")
        elif status.days_left <= within_days:
            warnings.append(
                f"{status.path} expires in {status.days_left} days ({status.not_after:%Y-%m-%d}): "
                "renew it with `fedlego certs renew` and hand out the new ca.pem"
            )
    return warnings, errors


def site_registrations(consortium: Path) -> list[str]:
    """One line per site of a consortium folder: whether its keys were made here or at the site."""
    sites = consortium / "sites"
    lines = []
    for folder in sorted(p for p in sites.iterdir() if p.is_dir()) if sites.is_dir() else []:
        made = "keys made here (hand over the folder)" if (folder / "signing.key").exists() else "keys made at the site"
        lines.append(f"site {folder.name}: {made}")
    return lines
