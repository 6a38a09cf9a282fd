"""Keys the way hospitals hold them: a hospital makes its own keys and sends a request with public
keys only; the CA signs it; server names are added to the required ones and a certificate with other
names is re-issued without touching site keys; renewal keeps every key; expiry is shown and checked."""

from __future__ import annotations

import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedlego import certs as certs_module
from fedlego.cert_requests import RETURNED_FILES, RequestError, make_request, sign_request
from fedlego.cert_status import expiry_problems, folder_status
from fedlego.certs import REQUIRED_SERVER_NAMES, certificate_names, make_consortium
from fedlego.cli import main
from fedlego.common.signing import load_signing_key, load_trusted_sites
from fedlego.deploy import DeploymentError, check_site_certs


def _keys(folder):
    names = ("ca.key", "server.key", "signing.key", "node-auth")
    return {p: p.read_bytes() for p in folder.rglob("*") if p.name in names and p.is_file()}


def _certificate(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_explicit_server_names_are_added_and_changed_names_reissue_only_the_certificate(tmp_path):
    make_consortium(tmp_path, ["clinical"], ["fl.example.org"])
    first = _certificate(tmp_path / "superlink" / "server.pem")
    assert first.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "fl.example.org"
    assert set(REQUIRED_SERVER_NAMES) <= set(certificate_names(first))
    keys = _keys(tmp_path)
    make_consortium(tmp_path, [])  # no names given: the certificate is kept as it is
    assert _certificate(tmp_path / "superlink" / "server.pem").serial_number == first.serial_number
    make_consortium(tmp_path, [], ["fl.example.org", "10.0.0.5"])
    second = _certificate(tmp_path / "superlink" / "server.pem")
    assert second.serial_number != first.serial_number and "10.0.0.5" in certificate_names(second)
    assert second.public_key().public_numbers() == first.public_key().public_numbers()  # same server key
    assert _keys(tmp_path) == keys  # no key was touched


def test_a_hospital_makes_its_keys_and_the_ca_signs_its_request(tmp_path):
    consortium, hospital = tmp_path / "consortium", tmp_path / "hospital"
    make_consortium(consortium, ["clinical"])
    request, _ = make_request(hospital, "rna")
    sent = json.loads(request.read_text())
    assert "PRIVATE" not in request.read_text() and set(sent) >= {"site", "signing_public_key", "node_auth_public_key"}
    folder, _ = sign_request(consortium, request)
    assert not [p for p in folder.iterdir() if p.name in ("signing.key", "node-auth")]  # no private key at the CA
    trusted = load_trusted_sites(consortium / "coordinator" / "trusted-sites.json")
    own = load_signing_key(hospital / "signing.key").public_key()
    assert trusted["rna"].public_bytes_raw() == own.public_bytes_raw()
    registered = (consortium / "coordinator" / "node-auth" / "rna.pub").read_text().strip()
    assert registered == (hospital / "node-auth.pub").read_text().strip()
    for name in RETURNED_FILES:
        (hospital / name).write_bytes((folder / name).read_bytes())
    assert check_site_certs(hospital) == hospital.resolve()  # a complete site folder for `fedlego site`
    make_consortium(consortium, [])  # completing the consortium later makes no key for a requested site
    assert not (folder / "signing.key").exists()
    assert load_trusted_sites(consortium / "coordinator" / "trusted-sites.json")["rna"].public_bytes_raw() == (
        own.public_bytes_raw()
    )


def test_a_request_with_other_keys_for_a_registered_site_is_refused(tmp_path):
    make_consortium(tmp_path / "consortium", ["clinical"])
    sign_request(tmp_path / "consortium", make_request(tmp_path / "a", "rna")[0])
    with pytest.raises(RequestError, match="registered already"):
        sign_request(tmp_path / "consortium", make_request(tmp_path / "b", "rna")[0])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"site": "../etc"}, "site"),
        ({"site": 3}, "site"),
        ({"signing_public_key": "not a key"}, "signing_public_key"),
        ({"node_auth_public_key": "ssh-rsa AAAA"}, "node_auth_public_key"),
        ({"node_auth_public_key": None}, "node_auth_public_key"),
    ],
)
def test_a_malformed_request_names_the_field(tmp_path, change, field):
    make_consortium(tmp_path / "consortium", [])
    request, _ = make_request(tmp_path / "hospital", "rna")
    values = {**json.loads(request.read_text()), **change}
    request.write_text(json.dumps(values))
    with pytest.raises(RequestError, match=field):
        sign_request(tmp_path / "consortium", request)


def test_a_request_with_a_signing_key_of_the_wrong_kind_is_refused(tmp_path):
    make_consortium(tmp_path / "consortium", [])
    request, _ = make_request(tmp_path / "hospital", "rna")
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    request.write_text(json.dumps({**json.loads(request.read_text()), "signing_public_key": pem}))
    with pytest.raises(RequestError, match="Ed25519"):
        sign_request(tmp_path / "consortium", request)


def test_renewal_keeps_every_key_and_old_certificates_still_verify(tmp_path, monkeypatch):
    monkeypatch.setattr(certs_module, "VALID_DAYS", 10)
    make_consortium(tmp_path, ["clinical"])
    warnings, errors = expiry_problems(tmp_path)
    assert not errors and {w.split(" expires")[0] for w in warnings} >= {str(tmp_path / "superlink" / "server.pem")}
    old_ca, keys = _certificate(tmp_path / "ca" / "ca.pem"), _keys(tmp_path)
    monkeypatch.setattr(certs_module, "VALID_DAYS", 825)
    make_consortium(tmp_path, [], renew=True)
    assert expiry_problems(tmp_path) == ([], [])
    assert _keys(tmp_path) == keys
    new_ca = _certificate(tmp_path / "ca" / "ca.pem")
    assert new_ca.serial_number != old_ca.serial_number and new_ca.subject == old_ca.subject
    server = _certificate(tmp_path / "superlink" / "server.pem")
    server.verify_directly_issued_by(new_ca)
    assert (tmp_path / "sites" / "clinical" / "ca.pem").read_bytes() == (tmp_path / "ca" / "ca.pem").read_bytes()


def test_an_expired_certificate_is_refused_before_a_run_and_shown_by_status(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(certs_module, "VALID_DAYS", 0)
    make_consortium(tmp_path, ["clinical"])
    assert all(s.days_left < 0 for s in folder_status(tmp_path))
    with pytest.raises(DeploymentError, match="expired"):
        check_site_certs(tmp_path / "sites" / "clinical")
    assert main(["certs", "status", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "EXPIRED" in out and "site clinical: keys made here" in out


def test_certs_actions_say_what_they_need(tmp_path, capsys):
    assert main(["certs", "request", "--out", str(tmp_path)]) != 0
    assert main(["certs", "sign", "--out", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "needs --out and one --site" in err and "needs --out and --request" in err
