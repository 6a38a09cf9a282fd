"""Keys made where they are held: ``fedlego certs request`` at a hospital makes the site's signing and
node-authentication key pairs in its own folder and writes ``request.json`` with the public keys
only; ``fedlego certs sign`` at the consortium's CA adds that site (its public keys, trusted-sites,
the SuperLink's node list) and says which two public files go back to the hospital."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedlego import __version__
from fedlego.certs import CertsReport, check_site_name, ec_key_file, make_consortium, signing_pair, write_public
from fedlego.common.signing import public_key_pem

REQUEST_NAME = "request.json"
RETURNED_FILES = ("ca.pem", "coordinator.pub")
"""What the CA sends back to a hospital after signing its request (public files)."""


class RequestError(ValueError):
    """A certificate request that cannot be signed, with the reason."""


@dataclass
class SiteRequest:
    """A hospital's public keys, as sent to the consortium's CA."""

    site: str
    signing_public_key: str
    node_auth_public_key: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready fields (with the fedlego version that made them)."""
        return {**self.__dict__, "fedlego_version": __version__}

    @classmethod
    def read(cls, path: Path) -> SiteRequest:
        """A request file, every field checked (RequestError naming the file and field)."""
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RequestError(f"{path}: not a readable request ({error})") from error
        if not isinstance(values, dict):
            raise RequestError(f"{path}: a request is a JSON object")
        fields = {}
        for name in ("site", "signing_public_key", "node_auth_public_key"):
            if not isinstance(values.get(name), str) or not values[name].strip():
                raise RequestError(f"{path}: field {name!r} is missing or not text")
            fields[name] = values[name].strip()
        request = cls(**fields)
        try:
            check_site_name(request.site)
        except ValueError as error:
            raise RequestError(f"{path}: field 'site': {error}") from error
        request.keys(path)
        return request

    def keys(self, where: Path | str) -> tuple[Ed25519PublicKey, ec.EllipticCurvePublicKey]:
        """The parsed public keys (RequestError when one is not the kind fedlego uses)."""
        try:
            signing = serialization.load_pem_public_key(self.signing_public_key.encode())
        except ValueError as error:
            raise RequestError(f"{where}: field 'signing_public_key' is not a PEM public key ({error})") from error
        if not isinstance(signing, Ed25519PublicKey):
            raise RequestError(f"{where}: field 'signing_public_key' must be an Ed25519 key")
        try:
            auth = serialization.load_ssh_public_key(self.node_auth_public_key.encode())
        except (ValueError, UnsupportedAlgorithm) as error:
            raise RequestError(
                f"{where}: field 'node_auth_public_key' is not an OpenSSH public key ({error})"
            ) from error
        if not isinstance(auth, ec.EllipticCurvePublicKey) or auth.curve.name != "secp256r1":
            raise RequestError(f"{where}: field 'node_auth_public_key' must be an EC P-256 key")
        return signing, auth


def make_request(folder: Path, site: str) -> tuple[Path, CertsReport]:
    """At the hospital: the site's key pairs in ``folder`` (private keys 0600, kept when they
    exist) and ``folder/request.json`` with the public keys only."""
    check_site_name(site)
    report = CertsReport()
    signing = signing_pair(folder, report).public_key()
    auth = ec_key_file(folder / "node-auth", report, encoding="openssh")
    public = auth.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    write_public(folder / "node-auth.pub", public + b"\n", report)
    request = SiteRequest(site, public_key_pem(signing), public.decode())
    path = folder / REQUEST_NAME
    write_public(path, (json.dumps(request.to_dict(), indent=2) + "\n").encode(), report)
    return path, report


def sign_request(consortium: Path, request_path: Path) -> tuple[Path, CertsReport]:
    """At the CA: add the requesting site to ``consortium`` (public keys only); returns the site's
    folder there, whose ``RETURNED_FILES`` go back to the hospital. A site already registered with
    other keys is refused (remove its folder to replace them on purpose)."""
    if not (consortium / "ca" / "ca.key").is_file():
        raise RequestError(f"{consortium}: no consortium CA here (ca/ca.key); make it with `fedlego certs --out`")
    request = SiteRequest.read(request_path)
    folder = consortium / "sites" / request.site
    wanted = {"signing.pub": request.signing_public_key.strip(), "node-auth.pub": request.node_auth_public_key.strip()}
    for name, text in wanted.items():
        present = folder / name
        if present.exists() and present.read_text().strip() != text:
            raise RequestError(
                f"site {request.site} is registered already with another {name}; "
                f"remove {folder} to replace its keys on purpose"
            )
    report = CertsReport()
    for name, text in wanted.items():
        write_public(folder / name, (text + "\n").encode(), report)
    made = make_consortium(consortium, [request.site])
    report.created += made.created
    report.kept += made.kept
    return folder, report
