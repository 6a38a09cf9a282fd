"""Package signatures: every refusal path, and the trusted-sites file."""

import json

import pytest
import torch

from fedlego.common.config import ModelConfig
from fedlego.common.lego import LegoMerge
from fedlego.common.packaging import PackageError, block_to_package, content_hash, merged_to_package
from fedlego.common.signing import (
    COORDINATOR,
    generate_signing_key,
    load_trusted_sites,
    sign_package,
    verify_signature,
    write_trusted_sites,
)
from fedlego.common.tasks import SurvivalTask
from fedlego.common.workflow import build_block

TASK = SurvivalTask((1.0,))
KEYS = {"clinical": generate_signing_key(), "rna": generate_signing_key(), COORDINATOR: generate_signing_key()}
TRUSTED = {name: key.public_key() for name, key in KEYS.items()}


def package(site="clinical", run_id="run-A"):
    config = ModelConfig(latent_channels=4, latent_dim=8, encoder_width=8, head_dim=4)
    block = build_block("clinical", "tabular", {"x": torch.randn(2, 5)}, TASK, config)
    return block_to_package(block, TASK, site=site, run_id=run_id)


def signed(site="clinical", run_id="run-A", signer=None):
    p = package(site, run_id)
    sign_package(p, KEYS[signer or site], signer or site)
    return p


def test_a_signed_package_verifies():
    verify_signature(signed(), TRUSTED, "run-A", expected_signer="clinical")


def test_unsigned_is_refused():
    with pytest.raises(PackageError, match="unsigned"):
        verify_signature(package(), TRUSTED, "run-A")


def test_bad_signature_is_refused():
    p = signed()
    p.signature.value = bytes(64)
    with pytest.raises(PackageError, match="bad signature"):
        verify_signature(p, TRUSTED, "run-A")


def test_unknown_site_is_refused():
    p = package(site="intruder")
    sign_package(p, generate_signing_key(), "intruder")
    with pytest.raises(PackageError, match="unknown site 'intruder'"):
        verify_signature(p, TRUSTED, "run-A")


def test_a_site_cannot_sign_for_another():
    p = signed(site="clinical", signer="rna")  # rna's key, clinical's name in the package
    with pytest.raises(PackageError, match="signed by 'rna', but the package claims to come from 'clinical'"):
        verify_signature(p, TRUSTED, "run-A", expected_signer=p.site)


def test_a_package_replayed_from_another_run_is_refused():
    p = signed(run_id="run-OLD")
    with pytest.raises(PackageError, match="replayed"):
        verify_signature(p, TRUSTED, "run-A")
    p.run_id = "run-A"  # relabelling breaks the hash; re-hashing breaks the signature
    with pytest.raises(PackageError, match="content hash"):
        verify_signature(p, TRUSTED, "run-A")
    p.content_hash = content_hash(p)
    with pytest.raises(PackageError, match="bad signature"):
        verify_signature(p, TRUSTED, "run-A")


def test_tampered_content_is_refused():
    p = signed()
    p.n_samples += 1000
    with pytest.raises(PackageError, match="content hash"):
        verify_signature(p, TRUSTED, "run-A")


def test_model_packages_are_signed_by_the_coordinator():
    config = ModelConfig(latent_channels=4, latent_dim=8, encoder_width=8, head_dim=4)
    block = build_block("clinical", "tabular", {"x": torch.randn(2, 5)}, TASK, config)
    model = merged_to_package(LegoMerge([block]), {"clinical": signed()}, "run-A")
    sign_package(model, KEYS[COORDINATOR], COORDINATOR)
    verify_signature(model, TRUSTED, "run-A", expected_signer=COORDINATOR)
    with pytest.raises(PackageError, match="claims to come from 'coordinator'"):
        sign_package(model, KEYS["rna"], "rna")
        verify_signature(model, TRUSTED, "run-A", expected_signer=COORDINATOR)


def test_trusted_sites_file_round_trip_and_errors(tmp_path):
    path = write_trusted_sites(TRUSTED, tmp_path / "trusted.json")
    loaded = load_trusted_sites(path)
    assert set(loaded) == set(TRUSTED)
    verify_signature(signed(), loaded, "run-A")
    (tmp_path / "bad.json").write_text(json.dumps({"signers": {"x": "not a key"}}))
    with pytest.raises(ValueError, match="signer 'x'"):
        load_trusted_sites(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(ValueError, match="'signers'"):
        load_trusted_sites(tmp_path / "empty.json")
