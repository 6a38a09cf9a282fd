"""``fedlego simulate`` end to end on Flower's simulation engine (Ray), then no process left."""

import json

import pytest

from fedlego.cli import main
from fedlego.launcher import processes_with_home

pytestmark = pytest.mark.timeout(600)


def test_simulate_runs_every_phase_and_stops_what_it_started(tmp_path, capsys):
    code = main(
        [
            "simulate",
            "--dataset",
            "synthetic",
            "--fuse-rounds",
            "1",
            "--block-rounds",
            "1",
            "--set",
            "synthetic-patients=120",
            "--set",
            "synthetic-modalities=2",
            "--set",
            "block-epochs=3",
            "--set",
            "latent-channels=8",
            "--set",
            "latent-dim=16",
            "--out",
            str(tmp_path),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "completed"
    assert len(results["sites"]) == 3
    assert {"merge", "fuse"} <= set(results["metrics"])
    assert "phase describe" in printed and "merge" in printed and "status completed" in printed
    assert (tmp_path / "packages" / "fused.pb").exists()
    report = (tmp_path / "report.html").read_text()  # the ServerApp process wrote the run report too
    assert results["run_id"] in report and "data:image/png;base64," in report
    assert f"report in {tmp_path / 'report.html'}" in printed
    assert processes_with_home(tmp_path.resolve() / ".flower" / "home") == []


def test_simulate_rejects_unknown_run_config_keys(tmp_path, capsys):
    assert main(["simulate", "--dataset", "synthetic", "--set", "nonsense=1", "--out", str(tmp_path)]) == 2
    assert "nonsense" in capsys.readouterr().err
