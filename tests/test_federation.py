"""The federation's phases with the real ClientApp handlers, in process (no Ray, no gRPC):
results, bytes, packages, failures, refusals, and equivalence with the centralized pipeline."""

import json
import math
from pathlib import Path

import pytest
import torch

from fedlego.certs import make_consortium
from fedlego.client.runtime import SiteRuntime
from fedlego.client.simulated import simulated_scenario
from fedlego.common.config import RunConfig
from fedlego.common.data.presets import run_cohort
from fedlego.common.data.scenarios import dataset_splits
from fedlego.common.data.sitefolder import write_site_folder
from fedlego.common.data.tensors import fit_preprocessors, make_tensor_set
from fedlego.common.lego import LegoMerge
from fedlego.common.packaging import (
    block_from_package,
    content_hash,
    model_from_package,
    parse_block_package,
    parse_model_package,
    serialize,
)
from fedlego.common.protocol import Payload
from fedlego.common.signing import load_trusted_sites, verify_signature
from fedlego.common.tasks import task_from_dict
from fedlego.common.workflow import train_block
from fedlego.inprocess import InProcessTransport
from fedlego.server.audit import verify_log
from fedlego.server.orchestrator import Federation
from fedlego.server.phases import MergePhase

SMALL = {
    "min-cell": 1,  # sites of 50 patients: disclosure control would withhold most figures (tested in test_disclosure)
    "dataset": "synthetic",
    "synthetic-patients": 160,
    "synthetic-modalities": 2,
    "block-epochs": 4,
    "patience": 2,
    "block-rounds": 1,
    "block-local-epochs": 1,
    "fuse-rounds": 2,
    "latent-channels": 8,
    "latent-dim": 16,
}


def run(run_config: dict, out: Path | None = None, **faults) -> tuple[dict, InProcessTransport]:
    config = {**run_config, **({"out-dir": str(out)} if out else {})}
    settings = RunConfig.from_flat(config)
    n_sites = len(simulated_scenario(settings, run_cohort(settings)).sites)
    transport = InProcessTransport(config, n_sites, **faults)
    return Federation(transport, settings, log=lambda _: None).run().to_dict(), transport


@pytest.fixture(scope="module")
def completed(tmp_path_factory):
    out = tmp_path_factory.mktemp("federation")
    results, transport = run(SMALL, out)
    return results, transport, out


def test_run_goes_through_every_phase(completed):
    results, _transport, out = completed
    assert results["status"] == "completed"
    assert set(results["sites"]) == {"tabular_0", "timeseries_1", "paired-0"}
    assert {"describe", "block", "merge", "evaluate-merge", "fuse", "evaluate-fuse"} <= set(results["phases"])
    assert any(name.startswith("block-fedavg:") for name in results["phases"])
    # phases are timed apart: the merge, which runs the block FedAvg rounds, does not count their time
    phases = results["phases"]
    fedavg = sum(p["seconds"] for name, p in phases.items() if name.startswith("block-fedavg:"))
    assert phases["merge"]["seconds"] <= phases["merge"]["ended"] - phases["merge"]["started"] - fedavg + 0.05
    assert sum(p["seconds"] for p in phases.values()) <= results["wall_seconds"]
    assert set(results["metrics"]["merge"]) == {"merge", "block:tabular_0", "block:timeseries_1"}
    merge = results["metrics"]["merge"]["merge"]
    assert set(merge["per_site"]) == set(results["sites"])  # every site evaluates with what it has
    assert merge["pairs"] > 0 and 0.0 <= merge["pooled"] <= 1.0  # comparable pairs pooled over sites
    assert merge["pooled_low"] < merge["pooled"] < merge["pooled_high"]  # with its jackknife interval
    assert merge["n"] == sum(s["n"] for s in merge["per_site"].values())
    assert "fuse" in results["metrics"]["fuse"]
    assert results["rounds"]["fuse"]["participants"] == [["paired-0"]] * 3
    assert json.loads((out / "results.json").read_text())["run_id"] == results["run_id"]


def test_sites_describe_counts_never_ids(completed):
    results, _, _ = completed
    text = json.dumps(results["sites"])
    assert "P0" not in text  # synthetic patient ids look like P0001
    assert results["sites"]["paired-0"]["modalities"] == ["tabular_0", "timeseries_1"]


def test_bytes_are_counted_per_site_and_phase_and_fuse_sends_the_model_once(completed):
    results, _, _ = completed
    block = results["phases"]["block"]["bytes"]
    assert all(v["received"] > 10_000 for v in block.values())  # packages came back
    fuse_sent = results["phases"]["fuse"]["bytes"]["paired-0"]["sent"]
    fused_size = (Path(results["config"]["out-dir"]) / "packages" / "fused.pb").stat().st_size
    fusion_bytes = 4 * results["rounds"]["fuse"]["trainable"]
    # round 0 carries the fused model package, the 2 later rounds only the fusion parameters
    assert fused_size + 2 * fusion_bytes < fuse_sent < fused_size + 2 * fusion_bytes + 20_000


def test_packages_are_saved_and_load(completed):
    results, _, out = completed
    merged = model_from_package(parse_model_package((out / "packages" / "merged.pb").read_bytes()))
    assert isinstance(merged, LegoMerge) and set(merged.blocks) == {"tabular_0", "timeseries_1"}
    fused = model_from_package(parse_model_package((out / "packages" / "fused.pb").read_bytes()))
    assert fused.parameter_counts()["trainable"] < fused.parameter_counts()["total"]
    for modality in merged.blocks:
        package = parse_block_package((out / "packages" / f"block-{modality}.pb").read_bytes())
        assert package.site.startswith("fedavg:")  # both the unimodal and the paired site hold it
    assert set(results["rounds"]) == {"block:tabular_0", "block:timeseries_1", "fuse"}
    uploads = sorted(p.name for p in (out / "packages" / "uploads").iterdir())
    assert uploads == [
        "paired-0-tabular_0.pb",
        "paired-0-timeseries_1.pb",
        "tabular_0-tabular_0.pb",
        "timeseries_1-timeseries_1.pb",
    ]


def test_a_crashing_site_is_recorded_and_the_run_goes_on():
    results, _ = run(SMALL, crash={("train.block", 0)})
    assert results["status"] == "completed"
    failure = results["failures"][0]
    assert failure["phase"] == "block" and "crashed" in failure["reason"]
    assert set(results["metrics"]["merge"]) >= {"merge"}


def test_a_silent_site_times_out_and_the_run_goes_on():
    results, _ = run(SMALL, silent={("evaluate.models", 1)})
    assert results["status"] == "completed"
    assert any("no reply" in f["reason"] and f["phase"] == "evaluate-merge" for f in results["failures"])
    assert "timeseries_1" not in results["metrics"]["merge"]["merge"]["per_site"]


def test_too_few_answers_stop_the_run_cleanly(tmp_path):
    results, _ = run({**SMALL, "min-responses": 3}, tmp_path, silent={("query.describe", 2)})
    assert results["status"] == "failed"
    assert "phase describe: only 2 of 3 sites answered, 3 needed" in results["error"]
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "failed"


def test_no_valid_block_fails_with_the_reasons():
    everywhere = {("train.block", i) for i in range(3)}
    results, _ = run(SMALL, crash=everywhere)
    assert results["status"] == "failed"


class Tampering(InProcessTransport):
    """Flips a byte in the packages one site uploads."""

    def exchange(self, message_type, requests, timeout, waiting=None, received=None):
        replies = super().exchange(message_type, requests, timeout, waiting)  # altered after the fact: no arrivals
        if message_type == "train.block":
            payload: Payload = replies[1000].payload
            tampered = []
            for value in payload.config["packages"]:
                data = bytearray(value)
                data[-50] ^= 0xFF
                tampered.append(bytes(data))
            payload.config["packages"] = tampered
        return replies


def test_a_tampered_package_is_refused_and_the_merge_uses_the_rest():
    config = {**SMALL, "block-rounds": 0}
    settings = RunConfig.from_flat(config)
    transport = Tampering(config, 3)
    results = Federation(transport, settings, log=lambda _: None).run().to_dict()
    assert results["status"] == "completed"
    refused = results["refused"]
    assert refused and refused[0]["site"] == "tabular_0"
    assert results["merged_modalities"] == ["tabular_0", "timeseries_1"]  # the paired site still has both


def test_a_single_site_federation_does_not_hang():
    results, _ = run({**SMALL, "layout": "pooled", "block-rounds": 0})
    assert results["status"] == "completed"
    assert list(results["sites"]) == ["pooled"]


def test_federated_blocks_and_merge_equal_the_centralized_ones(tmp_path):
    """One site per modality holding every patient with it: same folds, seeds and bins give the
    same blocks as the centralized pipeline, and the same merge."""
    config = {**SMALL, "paired-sites": 0, "overlap": 1.0, "block-rounds": 0, "fuse-rounds": 0, "fold": 1}
    results, _ = run(config, tmp_path)
    assert results["status"] == "completed"
    settings = RunConfig.from_flat(config)
    dataset = run_cohort(settings)
    split = dataset_splits(dataset, n_folds=2, seed=settings.seed)[1]
    task = task_from_dict(results["task"])
    preprocessors = fit_preprocessors(dataset, split.train)
    train = make_tensor_set(dataset, preprocessors, split.train)
    validation = make_tensor_set(dataset, preprocessors, split.validation)
    central = {}
    for modality, data in dataset.modalities.items():
        central[modality], _ = train_block(
            modality,
            data.kind,
            train,
            validation,
            task,
            settings.model,
            settings.training,
            preprocessors[modality].to_dict(),
        )
        package = parse_block_package((tmp_path / "packages" / f"block-{modality}.pb").read_bytes())
        federated = block_from_package(package)
        for name, value in central[modality].state_dict().items():
            torch.testing.assert_close(federated.state_dict()[name], value, rtol=1e-5, atol=1e-6)
        assert federated.n_samples == central[modality].n_samples
    merged = model_from_package(parse_model_package((tmp_path / "packages" / "merged.pb").read_bytes()))
    reference = LegoMerge(central, settings.merge.latent_merge, settings.merge.head_merge, settings.merge.weighting)
    for name, value in reference.head.state_dict().items():
        torch.testing.assert_close(merged.head.state_dict()[name], value, rtol=1e-5, atol=1e-6)


SITES = ["tabular_0", "timeseries_1", "paired-0"]


def signed_run(tmp_path, certified=SITES, unsigned=(), check_models=True, coordinator_signs=True):
    """A run whose sites sign with keys from ``fedlego certs`` (only ``certified`` sites get keys)."""
    make_consortium(tmp_path / "certs", certified)
    config = {**SMALL, "trusted-sites": str(tmp_path / "certs" / "coordinator" / "trusted-sites.json")}
    if coordinator_signs:
        config["coordinator-key"] = str(tmp_path / "certs" / "coordinator" / "signing.key")
    node_configs = {}
    for index, site in enumerate(SITES):
        node_config = {"partition-id": index, "num-partitions": 3}
        folder = tmp_path / "certs" / "sites" / (site if site in certified else certified[0])
        if site not in unsigned:
            node_config["signing-key"] = str(folder / "signing.key")
        if check_models:
            node_config["coordinator-public-key"] = str(folder / "coordinator.pub")
        node_configs[index] = node_config
    return run(config, tmp_path / "run", node_configs=node_configs)[0]


def test_signed_federation_verifies_every_package(tmp_path):
    results = signed_run(tmp_path)
    assert results["status"] == "completed" and results["refused"] == []
    assert results["signatures"] == {"required": True, "models_signed": True}
    trusted = load_trusted_sites(tmp_path / "certs" / "coordinator" / "trusted-sites.json")
    for name in ("merged.pb", "fused.pb"):
        package = parse_model_package((tmp_path / "run" / "packages" / name).read_bytes())
        verify_signature(package, trusted, results["run_id"], expected_signer="coordinator")


def test_unsigned_and_wrongly_signed_packages_are_refused(tmp_path):
    # timeseries_1 sends unsigned packages; paired-0 is not in the trusted-sites file and signs
    # with tabular_0's key under its own name
    results = signed_run(tmp_path, certified=["tabular_0", "timeseries_1"], unsigned=("timeseries_1",))
    assert results["status"] == "incomplete"  # the run lacks the timeseries modality: not "completed"
    assert results["gaps"] == ["modality timeseries_1: no block of it entered the merge"]
    assert "allow-partial" in results["error"]
    reasons = {(r["site"], r["modality"]): r["reason"] for r in results["refused"]}
    assert "unsigned" in reasons[("timeseries_1", "timeseries_1")]
    assert "unknown site 'paired-0'" in reasons[("paired-0", "tabular_0")]
    assert results["merged_modalities"] == ["tabular_0"]


def test_a_run_waits_for_every_registered_site_and_names_them(tmp_path):
    """min-sites 0 (the default) waits for every signer of trusted-sites: with one registered site
    that never connects, the run fails after wait-timeout naming the registered sites; with an
    explicit min-sites it runs without it, recorded as incomplete."""
    certified = [*SITES, "st-elsewhere"]
    make_consortium(tmp_path / "certs", certified)
    config = {**SMALL, "trusted-sites": str(tmp_path / "certs" / "coordinator" / "trusted-sites.json")}
    node_configs = {
        i: {
            "partition-id": i,
            "num-partitions": 3,
            "signing-key": str(tmp_path / "certs" / "sites" / s / "signing.key"),
        }
        for i, s in enumerate(SITES)
    }
    waited, _ = run({**config, "wait-timeout": 1}, tmp_path / "waited", node_configs=node_configs)
    assert waited["status"] == "failed"
    assert "only 3 of 4 sites connected" in waited["error"] and "st-elsewhere" in waited["error"]
    started, _ = run({**config, "min-sites": 3}, tmp_path / "started", node_configs=node_configs)
    assert started["status"] == "incomplete"
    assert started["gaps"] == ["registered site st-elsewhere took no part"]


def test_sites_refuse_models_the_coordinator_did_not_sign(tmp_path):
    results = signed_run(tmp_path, coordinator_signs=False)
    assert results["status"] == "failed"
    assert all("unsigned" in f["reason"] for f in results["failures"])


class CoordinatorCrash(BaseException):
    """Stands for the coordinator process dying: like a kill, nothing in the coordinator catches it
    (it ends any unexpected ``Exception`` as a failed run)."""


class CrashingTransport(InProcessTransport):
    """Dies (like a killed coordinator) when asked to send the given fuse round."""

    crash_at_fuse_round: int = -1

    def exchange(self, message_type, requests, timeout, waiting=None, received=None):
        if message_type == "train.fuse":
            round_index = next(iter(requests.values())).config["round"]
            if round_index == self.crash_at_fuse_round:
                raise CoordinatorCrash
        return super().exchange(message_type, requests, timeout, waiting, received)


def test_a_killed_coordinator_resumes_from_its_checkpoint(tmp_path):
    config = {**SMALL, "fuse-rounds": 3, "out-dir": str(tmp_path)}
    settings = RunConfig.from_flat(config)
    first = CrashingTransport(config, 3)
    first.crash_at_fuse_round = 2
    with pytest.raises(CoordinatorCrash):
        Federation(first, settings, log=lambda _: None).run().to_dict()
    assert ("train.block", 0) in first.calls
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["completed"] == ["block", "block-fedavg", "merge", "evaluate-merge"]
    assert len(state["progress"]["fuse"]["history"]) == 2

    second = InProcessTransport(config, 3)  # a fresh coordinator; sites lost their fuse state too
    results = Federation(second, settings, log=lambda _: None).run().to_dict()
    assert results["status"] == "completed" and results["resumed"] == 1
    kinds = {kind for kind, _ in second.calls}
    assert "train.block" not in kinds and "train.blockround" not in kinds  # finished work not redone
    fuse_rounds = [c for c in second.calls if c[0] == "train.fuse"]
    assert len(fuse_rounds) == 2  # rounds 2 and 3 only
    assert len(results["rounds"]["fuse"]["validation_loss"]) == 4
    fuse = results["rounds"]["fuse"]
    counts = list(zip(fuse["validation_patients"], fuse["validation_events"], strict=True))
    assert len(counts) == 4 and all(p > 0 and 0 <= e <= p for p, e in counts)  # kept across the resume
    events = [json.loads(line)["event"] for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert events[0] == "run-started" and "run-resumed" in events and events[-1] == "run-completed"
    assert events[events.index("run-resumed") - 1] == "attempt-unfinished"  # the killed attempt, on record
    assert verify_log(tmp_path / "audit.jsonl", results["audit_head"]).ok


def test_a_run_resumed_without_a_site_keeps_its_task(tmp_path):
    """The time bins come from the sites' quantiles: resumed without a site, the describe phase
    would agree on other bins than the finished blocks were trained on; the run's task is kept."""
    config = {**SMALL, "fuse-rounds": 3, "out-dir": str(tmp_path)}
    settings = RunConfig.from_flat(config)
    first = CrashingTransport(config, 3)
    first.crash_at_fuse_round = 2
    with pytest.raises(CoordinatorCrash):
        Federation(first, settings, log=lambda _: None).run()
    task = json.loads((tmp_path / "results.json").read_text())["task"]
    without_one = {0: {"partition-id": 0, "num-partitions": 3}, 1: {"partition-id": 2, "num-partitions": 3}}
    lines: list[str] = []
    results = Federation(InProcessTransport(config, 2, node_configs=without_one), settings, log=lines.append).run()
    assert results.status == "completed", results.error
    assert results.task == task and results.resumed == 1
    assert any("keeping the run's task" in line for line in lines)


class DiesMidBlock(InProcessTransport):
    """Dies (like a killed coordinator) once the first site's block upload has arrived."""

    def exchange(self, message_type, requests, timeout, waiting=None, received=None):
        if message_type != "train.block":
            return super().exchange(message_type, requests, timeout, waiting, received)

        def then_die(reply):
            received(reply)
            raise CoordinatorCrash

        return super().exchange(message_type, requests, timeout, waiting, then_die)


def test_a_coordinator_killed_mid_block_asks_only_the_sites_that_had_not_uploaded(tmp_path):
    config = {**SMALL, "fuse-rounds": 1, "out-dir": str(tmp_path)}
    settings = RunConfig.from_flat(config)
    with pytest.raises(CoordinatorCrash):
        Federation(DiesMidBlock(config, 3), settings, log=lambda _: None).run()
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    first_site = state["progress"]["block"]["answered"]
    assert state["completed"] == [] and len(first_site) == 1
    kept = tmp_path / "packages" / "uploads" / f"{first_site[0]}-{state['progress']['block']['accepted'][0][1]}.pb"
    kept_hash = parse_block_package(kept.read_bytes()).content_hash

    second = InProcessTransport(config, 3)
    results = Federation(second, settings, log=lambda _: None).run().to_dict()
    assert results["status"] == "completed" and results["resumed"] == 1
    assert [index for kind, index in second.calls if kind == "train.block"] == [1, 2]  # site 0 not asked again
    events = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    verified = [e for e in events if e["event"] == "package-verified" and e["site"] == first_site[0]]
    assert verified and verified[-1]["content_hash"] == kept_hash.hex()  # its upload went into the merge
    received = [(e["site"], e["modality"]) for e in events if e["event"] == "package-received"]
    described = sum(len(site["modalities"]) for site in results["sites"].values())
    assert len(received) == len(set(received)) == described  # every upload once, none twice
    assert "attempt-unfinished" in [e["event"] for e in events]


def test_a_checkpoint_of_another_run_is_not_resumed(tmp_path):
    run(SMALL, tmp_path)
    results, _ = run({**SMALL, "seed": 5}, tmp_path)
    assert results["status"] == "failed" and "holds a checkpoint of run" in results["error"]


def test_the_audit_log_records_packages_refusals_merge_and_rounds(completed):
    _, _, out = completed
    entries = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    events = [e["event"] for e in entries]
    assert events.count("package-received") == 4 and events.count("package-verified") == 4
    assert {"merged", "fedavg-round", "fuse-round", "fused", "run-completed"} <= set(events)
    received = next(e for e in entries if e["event"] == "package-received")
    assert len(received["sha256"]) == 64 and received["site"]


class SiteDiesMidFuse(InProcessTransport):
    """Site ``dead`` stops answering from fuse round 1 on (a process killed mid-fuse)."""

    dead: int = 3

    def exchange(self, message_type, requests, timeout, waiting=None, received=None):
        if message_type == "train.fuse" and next(iter(requests.values())).config["round"] >= 1:
            self.silent.add((message_type, self.dead))
        return super().exchange(message_type, requests, timeout, waiting, received)


def test_a_site_lost_mid_fuse_leaves_the_rounds_to_the_others(tmp_path):
    config = {**SMALL, "paired-sites": 2, "fuse-rounds": 2, "out-dir": str(tmp_path)}
    settings = RunConfig.from_flat(config)
    transport = SiteDiesMidFuse(config, 4)
    results = Federation(transport, settings, log=lambda _: None).run().to_dict()
    assert results["status"] == "incomplete"
    assert results["gaps"] == ["paired site paired-1 is missing from the last fuse round"]
    assert results["rounds"]["fuse"]["participants"] == [["paired-0", "paired-1"], ["paired-0"], ["paired-0"]]
    assert [f["site"] for f in results["failures"] if f["phase"] == "fuse"] == ["paired-1"]  # not waited for again
    assert (tmp_path / "packages" / "fused.pb").exists()
    allowed = {**config, "allow-partial": True, "out-dir": str(tmp_path / "allowed")}
    accepted = Federation(SiteDiesMidFuse(allowed, 4), RunConfig.from_flat(allowed), log=lambda _: None).run()
    assert accepted.status == "completed" and accepted.gaps == results["gaps"]


def test_a_run_whose_only_paired_site_never_answers_the_fuse_keeps_the_merge(tmp_path):
    config = {**SMALL, "fuse-rounds": 2, "out-dir": str(tmp_path)}
    paired = 2  # node of paired-0 (sites: tabular_0, timeseries_1, paired-0)
    logged: list[str] = []
    transport = InProcessTransport(config, 3, silent={("train.fuse", paired)})
    results = Federation(transport, RunConfig.from_flat(config), log=logged.append).run().to_dict()
    assert results["status"] == "incomplete" and "fuse" not in results["metrics"] and "merge" in results["metrics"]
    assert results["rounds"]["fuse"]["cut_short"].startswith("round 0: phase fuse: only 0 of 1 sites answered")
    assert results["gaps"] == [f"fuse rounds cut short, {results['rounds']['fuse']['cut_short']}"]
    assert any("no fused model (the merged model stands)" in line for line in logged)
    assert not (tmp_path / "packages" / "fused.pb").exists() and (tmp_path / "packages" / "merged.pb").exists()


def test_a_run_that_loses_too_many_sites_mid_fuse_keeps_the_rounds_it_finished(tmp_path):
    """min-responses = 2 and one of the two paired sites vanishes after round 0: no round is
    aggregated from fewer than 2 sites; the rounds stop, the best finished round is kept, the
    fused model is still evaluated, and the run is incomplete with the reason on record."""
    config = {**SMALL, "paired-sites": 2, "fuse-rounds": 2, "min-responses": 2, "out-dir": str(tmp_path)}
    settings = RunConfig.from_flat(config)
    logged: list[str] = []
    results = Federation(SiteDiesMidFuse(config, 4), settings, log=logged.append).run().to_dict()
    fuse = results["rounds"]["fuse"]
    assert results["status"] == "incomplete" and "set allow-partial = true to accept" in results["error"]
    assert fuse["cut_short"] == "round 1: phase fuse: only 1 of 2 sites answered, 2 needed"
    assert fuse["participants"] == [["paired-0", "paired-1"]] and len(fuse["validation_loss"]) == 1
    assert results["gaps"] == [f"fuse rounds cut short, {fuse['cut_short']}"]
    assert any("fuse rounds cut short" in line and "keeping round 0" in line for line in logged)
    assert "fuse" in results["metrics"] and (tmp_path / "packages" / "fused.pb").exists()
    report = (tmp_path / "report.html").read_text()
    assert "Missing from this run: fuse rounds cut short, round 1: phase fuse: only 1 of 2 sites answered" in report


def test_a_site_with_invalid_data_reports_file_and_column_and_sends_nothing(tmp_path):
    """A deployed site whose folder fails validation answers with the reason only."""
    settings = RunConfig.from_flat(SMALL)
    dataset = run_cohort(settings)
    scenario = simulated_scenario(settings, dataset)
    split = dataset_splits(dataset, n_folds=1, seed=0)[0]
    folder = write_site_folder(dataset, scenario.sites[0], split, tmp_path / "site")
    table = (folder / "tabular_0.csv").read_text().splitlines()
    table[3] = table[3].rsplit(",", 1)[0] + ",not-a-number"
    (folder / "tabular_0.csv").write_text("\n".join(table) + "\n")
    node_configs = {0: {"data-dir": str(folder)}}
    results, transport = run({**SMALL, "out-dir": str(tmp_path / "run")}, node_configs=node_configs)
    failure = next(f for f in results["failures"] if f["phase"] == "describe")
    assert "tabular_0.csv" in failure["reason"] and "column" in failure["reason"]
    assert results["status"] == "completed"  # the other sites go on
    assert ("train.block", 0) not in transport.calls  # the broken site is never asked for weights


def test_every_model_field_set_in_the_run_config_reaches_the_sites_blocks(tmp_path):
    config = {**SMALL, "steps": 1, "heads": 2, "head-dim": 8, "encoder-width": 24, "dropout": 0.0}
    results, _ = run({**config, "block-rounds": 0, "fuse-rounds": 0}, tmp_path)
    assert results["status"] == "completed"
    merged = parse_model_package((tmp_path / "packages" / "merged.pb").read_bytes())
    for block in merged.blocks:
        architecture = json.loads(block.architecture_json)
        assert (architecture["steps"], architecture["heads"], architecture["head_dim"]) == (1, 2, 8)
        assert architecture["encoder"]["kwargs"]["width"] == 24 and architecture["dropout"] == 0.0
    assert results["config"]["steps"] == 1 and results["config"]["encoder-width"] == 24


class OldSite(InProcessTransport):
    """Site 0 answers with another protocol version (an incompatible fedlego installed there)."""

    def exchange(self, message_type, requests, timeout, waiting=None, received=None):
        replies = super().exchange(message_type, requests, timeout, waiting)  # altered after the fact: no arrivals
        if 1000 in replies and replies[1000].payload is not None:
            replies[1000].payload.config["protocol"] = 99
        return replies


def test_a_site_speaking_another_protocol_version_is_left_out_with_the_reason():
    config = {**SMALL, "block-rounds": 0}
    results = Federation(OldSite(config, 3), RunConfig.from_flat(config), log=lambda _: None).run().to_dict()
    assert results["status"] == "completed"
    (failure,) = [f for f in results["failures"] if f["phase"] == "describe"]
    assert "protocol version 99" in failure["reason"] and failure["site"] == "node-1000"
    assert "tabular_0" not in results["sites"] and len(results["sites"]) == 2


def test_an_unexpected_error_ends_the_run_as_failed_on_record(tmp_path, monkeypatch):
    """A bug (here a KeyError raised by the merge) still ends the run: status failed with the
    reason in results.json, a run-failed audit entry, and a log that verifies."""

    def broken_merge(self, federation):
        raise KeyError("architecture")

    monkeypatch.setattr(MergePhase, "run", broken_merge)
    results, _ = run({**SMALL, "block-rounds": 0, "fuse-rounds": 0}, tmp_path)
    assert results["status"] == "failed"
    assert results["error"] == "unexpected KeyError: 'architecture'"
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["status"] == "failed" and "KeyError" in written["error"]
    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert entries[-1]["event"] == "run-failed" and "KeyError" in entries[-1]["reason"]
    assert verify_log(tmp_path / "audit.jsonl", results["audit_head"]).ok


class Overclaiming(InProcessTransport):
    """Site 0 (tabular_0) re-hashes its package claiming 1000 x its patients; site 1 (timeseries_1)
    adds a copy of its block under a modality it never described."""

    def exchange(self, message_type, requests, timeout, waiting=None, received=None):
        replies = super().exchange(message_type, requests, timeout, waiting)  # altered after the fact: no arrivals
        if message_type == "train.block":
            inflated = parse_block_package(replies[1000].payload.config["packages"][0])
            inflated.n_samples *= 1000
            inflated.content_hash = content_hash(inflated)
            replies[1000].payload.config["packages"] = [serialize(inflated)]
            extra = replies[1001].payload.config
            extra["modalities"] = [*extra["modalities"], "tabular_0"]
            extra["packages"] = [*extra["packages"], extra["packages"][0]]
        return replies


def test_a_site_can_upload_only_what_it_described():
    config = {**SMALL, "block-rounds": 0, "fuse-rounds": 0}
    settings = RunConfig.from_flat(config)
    transport = Overclaiming(config, len(simulated_scenario(settings, run_cohort(settings)).sites))
    results = Federation(transport, settings, log=lambda _: None).run().to_dict()
    assert results["status"] == "completed"
    reasons = {(r["site"], r["modality"]): r["reason"] for r in results["refused"]}
    assert "differs from the" in reasons[("tabular_0", "tabular_0")]
    assert "was not described by the site" in reasons[("timeseries_1", "tabular_0")]
    assert results["merged_modalities"] == ["tabular_0", "timeseries_1"]  # the honest paired site's blocks


def _poisoning_run(monkeypatch, aggregation: str) -> tuple[dict, str, str]:
    """Three unimodal sites per modality; the first site claims 10^9 training patients, returns its
    trained parameters x -10 and lies about validation: the start is bad (10), what it poisoned
    is perfect (0). (x -1000 no longer fools FedAvg: the honest sites' loss of that model, about
    4e8 through the blocks' direct linear heads, outweighs even 10^9 claimed patients.)"""
    config = {**SMALL, "sites-per-modality": 3, "paired-sites": 0, "fuse-rounds": 0, "round-aggregation": aggregation}
    settings = RunConfig.from_flat(config)
    target = simulated_scenario(settings, run_cohort(settings)).sites[0]
    honest_round = SiteRuntime.block_round

    def poisoned_round(self, block, task, train_config, proximal_mu=0.0):
        reply = honest_round(self, block, task, train_config, proximal_mu)
        if self.name == target.name:
            reply.n_train = reply.n_validation = 10**9
            reply.validation_loss_before = 10.0 if train_config.epochs > 0 else 0.0
            if train_config.epochs > 0:
                reply.state = {k: -10 * v if v.is_floating_point() else v for k, v in reply.state.items()}
        return reply

    monkeypatch.setattr(SiteRuntime, "block_round", poisoned_round)
    results, _ = run(config)
    return results, target.name, target.modalities[0]


def test_what_one_poisoned_site_can_do_to_fedavg_and_cannot_do_to_a_robust_round(monkeypatch):
    dragged, _, modality = _poisoning_run(monkeypatch, "mean")
    # FedAvg: the poisoned parameters and the claimed count win, and its fake loss keeps that round
    assert dragged["rounds"][f"block:{modality}"]["kept_round"] == 1
    assert math.isnan(dragged["metrics"]["merge"][f"block:{modality}"]["weighted_mean"]) or (
        dragged["metrics"]["merge"][f"block:{modality}"]["weighted_mean"] < 0.65
    )
    robust, _, modality = _poisoning_run(monkeypatch, "median")
    assert robust["status"] == "completed"
    history = robust["rounds"][f"block:{modality}"]["validation_loss"]
    assert all(math.isfinite(v) and v < 10 for v in history)  # the honest majority's losses decide
    assert robust["metrics"]["merge"][f"block:{modality}"]["weighted_mean"] > 0.6


@pytest.mark.parametrize(
    "damage",
    [
        lambda state: {k: v.flatten() for k, v in state.items()},  # every parameter in the wrong shape
        lambda state: {k: torch.full_like(v, math.nan) if v.is_floating_point() else v for k, v in state.items()},
        lambda state: dict(list(state.items())[1:]),  # a parameter missing
    ],
    ids=["shape", "nan", "missing"],
)
def test_a_malformed_round_reply_costs_that_site_its_part_and_the_run_completes(monkeypatch, damage):
    config = {**SMALL, "sites-per-modality": 2, "paired-sites": 0, "fuse-rounds": 0}
    settings = RunConfig.from_flat(config)
    target = simulated_scenario(settings, run_cohort(settings)).sites[0]
    honest_round = SiteRuntime.block_round

    def damaged_round(self, block, task, train_config, proximal_mu=0.0):
        reply = honest_round(self, block, task, train_config, proximal_mu)
        if self.name == target.name and train_config.epochs > 0:
            reply.state = damage(reply.state)
        return reply

    monkeypatch.setattr(SiteRuntime, "block_round", damaged_round)
    results, _ = run(config)
    assert results["status"] == "completed"
    refused = [f for f in results["failures"] if f["site"] == target.name]
    assert refused and all(f["phase"].startswith("block-fedavg:") for f in refused)
    assert all("round reply refused" in f["reason"] for f in refused)
    assert (
        len(results["rounds"][f"block:{target.modalities[0]}"]["validation_loss"]) == settings.rounds.block_rounds + 1
    )


def test_a_site_of_another_fedlego_version_is_refused_naming_both(monkeypatch):
    from fedlego import __version__

    config = {**SMALL, "allow-partial": True}
    target = simulated_scenario(RunConfig.from_flat(config), run_cohort(RunConfig.from_flat(config))).sites[0]
    honest_describe = SiteRuntime.describe

    def older_describe(self, n_bins=4):
        description = honest_describe(self, n_bins)
        if self.name == target.name:
            description.software = {**description.software, "fedlego": "0.0.9"}
        return description

    monkeypatch.setattr(SiteRuntime, "describe", older_describe)
    results, _ = run(config)
    assert results["status"] == "completed"
    [refusal] = [f for f in results["failures"] if f["phase"] == "describe"]
    assert refusal["site"] == target.name
    assert f"fedlego 0.0.9 at {target.name}, {__version__} at the coordinator" in refusal["reason"]
    assert all(site["software"]["fedlego"] == __version__ for site in results["sites"].values())
