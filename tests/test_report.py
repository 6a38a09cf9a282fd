"""The run report (server/report.py): written next to results.json by every federation, self-contained
(embedded PNGs, no external resource), escaped, complete, and re-rendered offline by ``fedlego report``."""

import base64
import dataclasses
import html
import io
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from fedlego.cli import main
from fedlego.client.simulated import simulated_scenario
from fedlego.common.config import RunConfig
from fedlego.common.data.presets import run_cohort
from fedlego.inprocess import InProcessTransport
from fedlego.server import recorder
from fedlego.server.orchestrator import Federation
from fedlego.server.report import write_report
from fedlego.server.results import Refusal, RunResults
from fedlego_bench.screenshot import chromium, rendered_text, screenshot
from tests.test_federation import SMALL, Tampering

FAST = {**SMALL, "fuse-rounds": 1}
PNG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def federate(
    run_config: dict, out: Path, transport: type[InProcessTransport] = InProcessTransport, **faults
) -> RunResults:
    """Run a federation in process into ``out`` (one site per scenario site)."""
    config = {**run_config, "out-dir": str(out)}
    settings = RunConfig.from_flat(config)
    n_sites = len(simulated_scenario(settings, run_cohort(settings)).sites)
    return Federation(transport(config, n_sites, **faults), settings, log=lambda _: None).run()


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory) -> tuple[RunResults, str]:
    """A completed run with FedAvg block rounds and central DP on the fuse rounds."""
    out = tmp_path_factory.mktemp("dp-run")
    results = federate({**FAST, "fuse-dp-noise": 1.0}, out)
    assert results.status == "completed"
    return results, (out / "report.html").read_text()


@pytest.fixture(scope="module")
def tampered_run(tmp_path_factory) -> tuple[RunResults, str]:
    """A run with a refused (tampered) package, no fuse rounds and no DP."""
    out = tmp_path_factory.mktemp("tampered-run")
    results = federate({**SMALL, "block-rounds": 0, "fuse-rounds": 0}, out, transport=Tampering)
    assert results.status == "completed" and results.refused
    return results, (out / "report.html").read_text()


def test_the_report_is_written_next_to_results_json_with_embedded_pngs(dp_run):
    results, text = dp_run
    out = Path(results.config["out-dir"])
    assert (out / "results.json").exists() and (out / "report.html").exists()
    images = PNG.findall(text)
    assert len(images) == 5  # outcome curves, models, rounds, bytes, wall time
    for data in images:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        assert image.format == "PNG" and image.width > 300
        image.verify()


def test_the_report_is_self_contained(dp_run, tampered_run):
    for _, text in (dp_run, tampered_run):
        assert "http://" not in text and "https://" not in text
        assert "<script" not in text.lower() and "<link" not in text.lower()
        assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', text))


def test_the_report_shows_every_site_phase_model_and_round(dp_run):
    results, text = dp_run
    for site in results.sites:
        assert html.escape(site) in text
    for phase in results.phases:
        assert f"<td>{html.escape(phase)}</td>" in text
    for models in results.metrics.values():
        for model, entry in models.items():
            assert f"<td>{html.escape(model)}</td>" in text
            assert f"{entry.weighted_mean:.3f}" in text
    assert set(results.rounds) == {"block:tabular_0", "block:timeseries_1", "fuse"}
    assert all(f"<td>{name}</td>" in text for name in results.rounds)
    assert results.run_id in text and results.audit_head in text and results.finished_at in text
    assert "Refused packages: none." in text and "Failed sites: none." in text


def test_the_report_opens_with_the_model_to_use_its_interval_and_its_warnings(dp_run):
    results, text = dp_run
    summary = text.split('<section class="summary"')[1].split("</section>")[0]
    fuse = results.metrics["fuse"]["fuse"]
    assert "Model to use: the fused model" in summary
    assert f"{fuse.pooled:.2f} (95 % interval {fuse.pooled_low:.2f} to {fuse.pooled_high:.2f})" in summary
    rests = f"It rests on {fuse.n} test patients at {len(fuse.per_site)} sites ({fuse.pairs} comparable pairs)"
    assert rests in summary
    assert "chance (0.5)" in summary and "Best single modality, block:" in summary
    order = [text.index(title) for title in ("Summary", "Outcome curves", "Metrics per phase", "Run details")]
    assert order == sorted(order)
    assert "<b>Glossary</b>" in text and "pooled pairs" in text


def test_the_outcome_curves_rest_on_risk_sets_of_at_least_min_cell(dp_run):
    results, text = dp_run
    curve = results.curves["fuse"]
    assert curve["kind"] == "survival" and curve["sites"] >= 1
    min_cell = int(results.config["min-cell"])
    for counts in curve["groups"].values():
        assert counts["at_risk"] and all(n >= min_cell for n in counts["at_risk"])
    assert 'alt="Kaplan-Meier curves by predicted risk group"' in text


@pytest.mark.skipif(
    chromium() is None and os.environ.get("CI") != "true", reason="chromium not installed (make browser installs it)"
)
def test_a_person_sees_the_summary_first_in_chromium(dp_run, tmp_path):
    results, _ = dp_run
    page = Path(results.config["out-dir"]) / "report.html"
    body = rendered_text(page).split("<body>", 1)[1]
    assert body.index("Model to use") < body.index("Outcome curves") < body.index("Metrics per phase")
    image = Image.open(screenshot(page, tmp_path / "top.png", width=1200, height=900)).convert("RGB")
    assert image.size == (1200, 900)
    top = image.crop((0, 0, 1200, 450))
    summary_box = sum(n for n, colour in top.getcolors(maxcolors=2**20) if colour == (245, 248, 252))
    assert summary_box > 50_000  # the summary's tinted box fills much of the first screen
    assert len(image.getcolors(maxcolors=2**20)) > 50  # text and a figure, not a blank page


def test_the_header_shows_the_run_settings(dp_run):
    results, text = dp_run
    for key in ("layout", "block-rounds", "fuse-rounds", "weighting"):
        assert f"<td>setting {key}</td><td>{html.escape(str(results.config[key]))}</td>" in text
    site, source = next(iter(results.data.items()))
    assert f"{site}: bundled {source['dataset']}" in text  # the data each site used


def test_dp_budget_or_dp_off(dp_run, tampered_run):
    results, text = dp_run
    assert f"{results.privacy.fuse.epsilon:.3f}" in text and "Blocks: DP off." in text
    assert "DP off: no block and no fuse round" not in text
    _, text = tampered_run
    assert "DP off: no block and no fuse round was trained with DP." in text


def test_refused_packages_with_reasons_and_a_run_without_fuse_rounds(tampered_run):
    results, text = tampered_run
    refusal = results.refused[0]
    assert html.escape(refusal.reason) in text and "Refused packages: none." not in text
    assert "No fuse rounds (fuse-rounds = 0" in text
    assert len(PNG.findall(text)) == 4  # no rounds to plot
    assert "Model to use: the merged model" in text and "was refused" in text.split("Outcome curves")[0]


def test_strings_from_the_results_are_escaped(dp_run, tmp_path):
    results, _ = dp_run
    evil = "<script>alert(1)</script>$x$"
    document = RunResults.from_json(results.to_json().replace("paired-0", evil))
    document.refused = [Refusal(site=evil, modality="m", reason="bad <img src=x onerror=alert(1)>")]
    document.resumed = 1
    text = write_report(document, tmp_path).read_text()
    assert "<script>" not in text and "<img src=x" not in text
    assert html.escape(evil) in text and "bad &lt;img src=x onerror=alert(1)&gt;" in text
    assert "1 time(s)" in text


def test_a_report_from_results_missing_sections_still_renders(dp_run, tmp_path):
    results, _ = dp_run
    document = dataclasses.replace(
        results, metrics={}, rounds={}, phases={}, privacy=None, sites={}, status=None, finished_at=None
    )
    text = write_report(document, tmp_path).read_text()
    assert "No evaluation finished." in text and "status: interrupted" in text and not PNG.findall(text)
    assert "not recorded" in text and "No site described itself." in text


def test_a_failed_run_gets_a_report_with_its_error(tmp_path):
    results = federate({**FAST, "min-responses": 3}, tmp_path, silent={("query.describe", 2)})
    assert results.status == "failed"
    text = (tmp_path / "report.html").read_text()
    assert "status: failed" in text and html.escape(results.error) in text


def test_a_report_failure_never_loses_results_json(tmp_path, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(recorder, "write_report", broken)
    config = {**FAST, "min-responses": 3, "out-dir": str(tmp_path)}
    logged: list[str] = []
    transport = InProcessTransport(config, 3, silent={("query.describe", 2)})
    Federation(transport, RunConfig.from_flat(config), log=logged.append).run()
    assert RunResults.read(tmp_path / "results.json").status == "failed"
    assert not (tmp_path / "report.html").exists()
    assert "report not written: RuntimeError: renderer broke" in logged


def test_fedlego_report_re_renders_offline(dp_run, tmp_path, capsys):
    results, original = dp_run
    results_json = Path(results.config["out-dir"]) / "results.json"
    assert RunResults.read(results_json) == results
    assert main(["report", str(results_json), "--out", str(tmp_path / "copy")]) == 0
    assert f"report in {tmp_path / 'copy' / 'report.html'}" in capsys.readouterr().out
    rendered = (tmp_path / "copy" / "report.html").read_text()
    assert len(PNG.findall(rendered)) == len(PNG.findall(original))
    assert html.escape(results.run_id) in rendered
    assert main(["report", str(tmp_path / "missing.json")]) == 2
