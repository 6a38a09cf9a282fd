"""Ed25519 signatures on packages, and the coordinator's list of trusted signers.

A signature covers the package's content hash, the signer's name and the run id, so a package
cannot be altered, attributed to another site, or replayed into another run without detection.
Block packages must be signed by the site named in them; merged and fused model packages by the
coordinator.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedlego.common.packaging import PackageError, content_hash
from fedlego.proto.fedlego_pb2 import BlockPackage, ModelPackage

ALGORITHM = "ed25519"
DOMAIN = b"fedlego-package-signature-v1"
COORDINATOR = "coordinator"


def _signed_message(package: BlockPackage | ModelPackage, signer: str) -> bytes:
    parts = [DOMAIN, content_hash(package), signer.encode(), package.run_id.encode()]
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def sign_package(package: BlockPackage | ModelPackage, key: Ed25519PrivateKey, signer: str) -> None:
    """Set the package's content hash and sign it as ``signer`` (in place)."""
    package.content_hash = content_hash(package)
    package.signature.signer = signer
    package.signature.algorithm = ALGORITHM
    package.signature.value = key.sign(_signed_message(package, signer))


def _describe(package: BlockPackage | ModelPackage) -> str:
    if isinstance(package, BlockPackage):
        return f"block package of site {package.site!r}, modality {package.modality!r}"
    return f"{package.kind or 'model'} package"


def verify_signature(
    package: BlockPackage | ModelPackage,
    trusted: Mapping[str, Ed25519PublicKey],
    run_id: str,
    expected_signer: str | None = None,
) -> None:
    """Refuse, with the reason, a package that is unsigned, signed by an unknown or unexpected
    signer, signed for another run, or whose signature does not match its content."""
    where = _describe(package)
    if not package.HasField("signature") or not package.signature.value:
        raise PackageError(f"{where}: unsigned")
    signer = package.signature.signer
    if package.signature.algorithm != ALGORITHM:
        raise PackageError(f"{where}: signature algorithm {package.signature.algorithm!r} is not {ALGORITHM}")
    if signer not in trusted:
        raise PackageError(f"{where}: signed by unknown site {signer!r} (not in the trusted-sites file)")
    if expected_signer is not None and signer != expected_signer:
        raise PackageError(f"{where}: signed by {signer!r}, but the package claims to come from {expected_signer!r}")
    if package.content_hash != content_hash(package):
        raise PackageError(f"{where}: content hash does not match the content (tampered or corrupted)")
    if package.run_id != run_id:
        raise PackageError(f"{where}: made for run {package.run_id!r}, not this run {run_id!r} (replayed?)")
    try:
        trusted[signer].verify(package.signature.value, _signed_message(package, signer))
    except InvalidSignature as error:
        raise PackageError(f"{where}: bad signature for signer {signer!r}") from error


def generate_signing_key() -> Ed25519PrivateKey:
    """A new Ed25519 signing key."""
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM of a private key (unencrypted: protect the file with 0600 permissions)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: Ed25519PublicKey) -> str:
    """SubjectPublicKeyInfo PEM of a public key."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file, with a clear error otherwise."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"{path}: cannot read an Ed25519 private key ({error})") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def _public_key(text: str, where: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(text.encode())
    except ValueError as error:
        raise ValueError(f"{where}: not a PEM public key ({error})") from error
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{where}: not an Ed25519 public key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (e.g. ``coordinator/signing.pub``)."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the public key ({error})") from error
    return _public_key(text, str(path))


def load_trusted_sites(path: Path) -> dict[str, Ed25519PublicKey]:
    """The coordinator's trusted signers: a JSON file ``{"signers": {name: public key PEM}}``
    (site names, plus ``coordinator`` for model packages)."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read the trusted-sites file ({error})") from error
    signers = document.get("signers") if isinstance(document, dict) else None
    if not isinstance(signers, dict) or not signers:
        raise ValueError(f"{path}: field 'signers' must map signer names to public keys")
    return {name: _public_key(str(pem), f"{path}: signer {name!r}") for name, pem in signers.items()}


def write_trusted_sites(signers: Mapping[str, Ed25519PublicKey], path: Path) -> Path:
    """Write a trusted-sites file (public keys only)."""
    document = {"signers": {name: public_key_pem(key) for name, key in sorted(signers.items())}}
    Path(path).write_text(json.dumps(document, indent=2) + "\n")
    return Path(path)
