"""``fedlego certs``: a consortium's keys and certificates."""

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedlego.certs import make_consortium
from fedlego.common.signing import COORDINATOR, load_signing_key, load_trusted_sites


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    out = tmp_path_factory.mktemp("certs")
    make_consortium(out, ["clinical", "rna"], ["127.0.0.1", "localhost", "coordinator.example.org"])
    return out


def test_private_keys_are_0600_and_only_in_their_owners_folder(consortium):
    private = [
        p
        for p in consortium.rglob("*")
        if p.is_file() and p.name in ("ca.key", "server.key", "signing.key", "node-auth")
    ]
    assert len(private) == 2 + 1 + 2 * 2
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for site in ("clinical", "rna"):
        assert sorted(p.name for p in (consortium / "sites" / site).iterdir()) == [
            "ca.pem",
            "coordinator.pub",
            "node-auth",
            "node-auth.pub",
            "signing.key",
            "signing.pub",
        ]


def test_server_certificate_has_the_sans_and_is_signed_by_the_ca(consortium):
    ca = x509.load_pem_x509_certificate((consortium / "ca" / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((consortium / "superlink" / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert {"localhost", "coordinator.example.org"} <= set(names.get_values_for_type(x509.DNSName))


def test_node_auth_keys_are_ec_openssh_and_listed_for_registration(consortium):
    for site in ("clinical", "rna"):
        public = (consortium / "sites" / site / "node-auth.pub").read_text()
        assert public.startswith("ecdsa-sha2-nistp256 ")
        assert (consortium / "coordinator" / "node-auth" / f"{site}.pub").read_text() == public
        serialization.load_ssh_private_key((consortium / "sites" / site / "node-auth").read_bytes(), None)


def test_trusted_sites_lists_every_signer(consortium):
    trusted = load_trusted_sites(consortium / "coordinator" / "trusted-sites.json")
    assert set(trusted) == {"clinical", "rna", COORDINATOR}
    key = load_signing_key(consortium / "sites" / "rna" / "signing.key")
    assert trusted["rna"].public_bytes_raw() == key.public_key().public_bytes_raw()


def test_rerunning_keeps_every_key_and_adds_new_sites(consortium):
    before = {p: p.read_bytes() for p in consortium.rglob("*") if p.is_file() and "key" in p.name}
    report = make_consortium(consortium, ["clinical", "rna", "mirna"])
    for path, data in before.items():
        assert path.read_bytes() == data, f"{path} was overwritten"
    assert (consortium / "sites" / "mirna" / "signing.key").exists()
    assert any(p.name == "ca.key" for p in report.kept)
    assert set(load_trusted_sites(consortium / "coordinator" / "trusted-sites.json")) == {
        "clinical",
        "rna",
        "mirna",
        COORDINATOR,
    }


@pytest.mark.parametrize("name", ["", "../x", ".hidden", COORDINATOR])
def test_invalid_site_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="invalid site name"):
        make_consortium(tmp_path, [name])
