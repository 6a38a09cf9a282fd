"""The benchmark suite's quality section runs end to end (smoke size) and writes a page whose
figures exist; the ablation helpers behave as documented."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedlego.common.centralized import CentralizedConfig
from fedlego.common.data.scenarios import dataset_splits
from fedlego.common.data.synthetic import default_synthetic_modalities, make_synthetic
from fedlego.common.data.tensors import TensorSet, task_for
from fedlego_bench import quality
from fedlego_bench.quality import disjoint_paired_models, drop_modalities, quick_config
from fedlego_bench.repeated import corrected_t_interval

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _tensor_set(n: int, modalities: list[str]) -> TensorSet:
    return TensorSet(
        [f"P{i}" for i in range(n)],
        {m: {"x": torch.randn(n, 3)} for m in modalities},
        {m: torch.ones(n, dtype=torch.bool) for m in modalities},
        {"time": torch.rand(n), "event": torch.ones(n, dtype=torch.int64)},
    )


def test_drop_modalities_keeps_one_per_patient_and_hides_about_the_rate() -> None:
    data = _tensor_set(2000, ["a", "b", "c"])
    hidden = drop_modalities(data, 0.6, np.random.default_rng(0))
    held = torch.stack([hidden.present[m] for m in "abc"], dim=1)
    assert bool(held.any(dim=1).all())
    assert 0.3 < 1 - held.float().mean().item() < 0.6  # 60% hidden, then one restored where all were hidden
    assert drop_modalities(data, 0.0, np.random.default_rng(0)).present["a"].all()
    assert hidden.inputs is data.inputs and data.present["a"].all()  # the original is untouched


def test_the_disjoint_paired_hospital_trains_no_block_and_fine_tunes_under_the_blocks_task(monkeypatch) -> None:
    """The hospital is half of the paired training patients, none of whom the blocks saw; the
    scenario's task is fitted on the blocks' training patients (its survival time bins differ
    from the full split's, which an earlier version wrongly fine-tuned with)."""
    dataset = make_synthetic(120, default_synthetic_modalities(2), seed=3)
    config = quick_config(CentralizedConfig("synthetic", list(dataset.modalities)))
    split = dataset_splits(dataset, n_folds=1, seed=0)[0]
    scenario = disjoint_paired_models(dataset, config, split)
    complete = set(dataset.complete_case_ids(config.modalities))
    paired = [i for i in split.train if i in complete]
    hospital = set(scenario.hospital.ids)
    assert len(hospital) == len(paired) // 2 and hospital <= set(paired)
    assert hospital.isdisjoint(scenario.models.train.ids)
    assert set(scenario.models.train.ids) | hospital == set(split.train)
    own = task_for(dataset.labels, list(scenario.models.train.ids)).to_dict()
    assert scenario.models.task.to_dict() == own
    assert own != task_for(dataset.labels, split.train).to_dict()
    seen = {}

    def recording_fuse(blocks, train, validation, task, fuse, merge):
        seen.update(train=list(train.ids), task=task.to_dict(), validation=validation)
        return None, None

    monkeypatch.setattr(quality, "fuse_blocks", recording_fuse)
    scenario.fuse(config.fuse, config.merge)
    assert seen["task"] == own and set(seen["train"]) == hospital
    assert list(seen["validation"].ids) == list(scenario.models.paired_validation.ids)


def test_quick_suite_writes_page_json_and_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    command = [
        sys.executable,
        str(BENCH / "suite.py"),
        "--quick",
        "--sections",
        "quality",
        "--datasets",
        "synthetic",
        "--out",
        str(out),
    ]
    subprocess.run(command, check=True, timeout=600)
    document = json.loads((out / "results.json").read_text())
    synthetic = document["quality"]["synthetic"]
    models = synthetic["summary"]["models"]
    for name in ["merge", "fuse", "ensemble", "cox-early", "cox-late", "early-fusion", "attention-fusion"]:
        assert 0.0 <= models[name]["mean"] <= 1.0, name
    assert set(synthetic["summary"]["missing_at_test"]) == {"0.0", "0.2", "0.4", "0.6", "0.8"}
    assert set(synthetic["summary"]["overlap"]) == {"0.0", "0.5", "1.0"}
    assert set(synthetic["summary"]["merge_weighting"]) == {"uniform", "samples", "validation"}
    fuse_modes = synthetic["summary"]["fuse_modes"]
    assert set(fuse_modes) == {"merge", "stack", "weave"}
    disjoint = synthetic["summary"]["disjoint_paired"]
    assert {"best block", "merge", "fuse (merge)", "fuse (stack)", "fuse (weave)"} <= set(disjoint)
    assert "### Paired patients that trained no block" in (out / "README.md").read_text()
    assert fuse_modes["merge"]["metric"]["mean"] == models["fuse"]["mean"]  # the default is the table's fuse
    page = (out / "README.md").read_text()
    assert "Smoke run" in page and "| LegoMerge |" in page and "### LegoFuse topologies" in page
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    assert linked and set(linked) <= set(document["figures"])
    for name in document["figures"]:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 200


def test_quick_repeated_and_block_ceiling_pages(tmp_path: Path) -> None:
    """The stand-alone repeated-CV and block-ceiling benchmarks run (smoke size) and write their
    pages and documents."""
    repeated = [sys.executable, str(BENCH / "repeated.py"), "--quick", "--datasets", "synthetic", "--bootstrap", "20"]
    subprocess.run([*repeated, "--jobs", "1", "--out", str(tmp_path)], check=True, timeout=600)
    document = json.loads((tmp_path / "repeated.json").read_text())
    differences = document["summary"]["synthetic"]["differences"]
    expected = {"fuse - merge", "merge - best-block", "merge - cox-late", "block:bags_3 - plain:bags_3"}
    expected |= {"merge-validation - merge", "disjoint-fuse - disjoint-merge"}
    expected |= {"merge - attention-fusion", "merge - fedavg-early-fusion"}
    assert expected <= set(differences)
    assert all(cell["low"] <= cell["high"] for cell in differences.values() if np.isfinite(cell["low"]))
    assert all(np.isnan(cell["t_low"]) for cell in differences.values())  # one split: no t-interval
    assert "| LegoMerge |" in (tmp_path / "repeated.md").read_text()
    ceiling = [sys.executable, str(BENCH / "block_ceiling.py"), "--quick", "--patients", "120", "--out", str(tmp_path)]
    subprocess.run(ceiling, check=True, timeout=600)
    summary = json.loads((tmp_path / "block-ceiling.json").read_text())["sizes"][0]["summary"]
    assert set(summary) == {"tabular_0", "timeseries_1", "image_2", "bags_3"}
    assert all(0.0 <= s["oracle"] <= 1.0 for s in summary.values())


def test_the_corrected_resampled_t_interval_is_wider_than_the_plain_one():
    """Nadeau & Bengio's correction: sd x sqrt(1/J + 0.15/0.70) instead of sd / sqrt(J); no
    spread, no width; one split, no interval."""
    differences = [0.02, -0.01, 0.05, 0.00, 0.03, 0.01, -0.02, 0.04]
    values = np.asarray(differences)
    cell = corrected_t_interval(differences)
    half = 2.364624 * values.std(ddof=1) * np.sqrt(1 / 8 + 0.15 / 0.70)  # t(0.975, 7)
    assert np.isclose(cell["t_high"] - values.mean(), half, rtol=1e-5)
    assert np.isclose(values.mean() - cell["t_low"], half, rtol=1e-5)
    plain = 2.364624 * values.std(ddof=1) / np.sqrt(8)
    assert half > 1.5 * plain
    assert corrected_t_interval([0.01] * 5) == pytest.approx({"t_low": 0.01, "t_high": 0.01})
    assert all(np.isnan(v) for v in corrected_t_interval([0.3]).values())


def _processes_mentioning(needle: bytes) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes() or needle in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_cost_section_records_runs_that_time_out_and_still_renders(tmp_path: Path, monkeypatch) -> None:
    from fedlego_bench import cost, cost_page

    monkeypatch.setitem(cost.TIMEOUT, "simulate", 1.0)
    monkeypatch.setitem(cost.TIMEOUT, "centralized", 1.0)
    monkeypatch.setitem(cost.TIMEOUT, "scaling", 1.0)
    work = tmp_path / "work"
    document = cost.run_cost(work, quick=True, log=lambda message: None)
    statuses = [run["status"] for run in document["runs"]]
    assert statuses and all(status.startswith("failed: timed out") for status in statuses), statuses
    page = cost_page.cost_markdown(document)
    assert "failed: timed out" in page
    figures = cost_page.cost_figures(document, tmp_path)
    assert set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)) <= set(figures)
    for name in figures:
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG"
    assert _processes_mentioning(str(work).encode()) == []  # every process the runs started has ended


def test_kept_sections_come_from_the_earlier_run_and_say_so() -> None:
    from fedlego_bench.suite import keep_sections

    earlier = {
        "command": "python bench/suite.py",
        "date": "2026-11-30",
        "wall_seconds": {"quality": 700.0, "cost": 800.0, "total": 1500.0},
        "quality": {"old": 1},
        "cost": {"runs": [1]},
    }
    document = {"command": "python bench/suite.py --sections quality", "date": "2026-12-01", "quality": {"new": 1}}
    keep_sections(document, earlier, ["quality"])
    assert document["quality"] == {"new": 1} and document["cost"] == {"runs": [1]}
    assert document["kept_sections"] == {
        "cost": {"command": "python bench/suite.py", "date": "2026-11-30", "seconds": 800.0}
    }
    again = {"command": "later", "date": "2026-12-02", "quality": {"newer": 1}}
    keep_sections(again, document | {"wall_seconds": {"quality": 1.0}}, ["quality"])
    assert again["kept_sections"]["cost"]["date"] == "2026-11-30"  # the cost figures' own run, not the last one
