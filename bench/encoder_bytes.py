"""Bytes on the wire with a realistic encoder size: adapters by reference, full blocks, end-to-end FedAvg.

    python bench/encoder_bytes.py --out docs/benchmarks [--quick]

A synthetic cohort (300 patients) with a wide omics table (4,000 features) and a lab series is
cut into three hospitals: one holding omics, one holding labs, one holding both (paired). The
omics encoder is the reference SNN at width 2,048 (about 12.4 M parameters) with fixed random
"pre-trained" weights (a cost measurement: their quality does not matter). Three federations run
in this process over the real ClientApp handlers and Flower records (``tests``' in-process
transport), and the coordinator counts the payload bytes sent to and received from each site in
each phase (``results.json`` ``phases[...].bytes``), as in every run:

- **adapters by reference**: the omics encoder frozen, its weights in every party's model store;
  only adapters travel (block packages, block FedAvg, LegoFuse rounds);
- **full blocks**: the same encoder trained as part of the block (classic LegoMerge); whole
  blocks travel, LegoFuse rounds exchange the fusion parameters (encoders frozen in fuse);
- **end-to-end FedAvg**: the same block phase, then the same fuse rounds with
  ``freeze-encoders = false``: FedAvg of the whole multimodal model, encoders included, with the
  paired site every round (the end-to-end model here is LegoFuse's default topology; no separate early-fusion
  network is trained).

Same seeds, fold, epochs and rounds in all three. Writes ``OUT/encoder-bytes.json`` and
``OUT/encoder-bytes.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fedlego.common.config import RunConfig
from fedlego.common.data.scenarios import build_scenario, dataset_splits
from fedlego.common.data.sitefolder import write_site_folder
from fedlego.common.data.synthetic import SyntheticModality, make_synthetic
from fedlego.common.encoders import SNN
from fedlego.common.model_store import STORE_ENV, save_weights
from fedlego.inprocess import InProcessTransport
from fedlego.server.orchestrator import Federation
from fedlego_bench.standalone import command_line, write_page

VARIANTS = {
    "adapters by reference": {"frozen": True},
    "full blocks": {"frozen": False},
    "end-to-end FedAvg": {"frozen": False, "freeze-encoders": False},
}


def make_sites(work: Path, features: int, width: int, patients: int) -> tuple[list[Path], Path, int]:
    """Site folders of the cohort and the omics encoder's weights file; returns its parameter count."""
    modalities = [
        SyntheticModality("omics", "tabular", 1.0, 0.0, features),
        SyntheticModality("labs", "timeseries", 0.8),
    ]
    dataset = make_synthetic(patients, modalities, task="survival", seed=0)
    scenario = build_scenario(dataset, paired_sites=1, paired_fraction=0.4, seed=0)
    split = dataset_splits(dataset, n_folds=1, seed=0)[0]
    folders = [write_site_folder(dataset, site, split, work / "sites" / site.name) for site in scenario.sites]
    torch.manual_seed(0)
    encoder = SNN(features, width=width, dropout=0.0)
    weights = work / "omics-encoder.safetensors"
    save_weights(encoder, weights)
    return folders, weights, sum(p.numel() for p in encoder.parameters())


def name_encoder(folders: list[Path], weights: Path, features: int, width: int, frozen: bool) -> None:
    for folder in folders:
        manifest = json.loads((folder / "site.json").read_text())
        if "omics" in manifest["modalities"]:
            manifest["modalities"]["omics"]["encoder"] = {
                "name": "snn", "kwargs": {"in_features": features, "width": width, "dropout": 0.0},
                "weights": str(weights), "frozen": frozen,
            }  # fmt: skip
            (folder / "site.json").write_text(json.dumps(manifest))


def run_variant(folders: list[Path], settings: dict[str, Any]) -> dict[str, Any]:
    from fedlego.client import app

    app._SITES.clear()  # the site folders changed between variants
    config = {"site-folders": ",".join(str(f) for f in folders), **settings}
    start = time.perf_counter()
    results = Federation(
        InProcessTransport(config, len(folders)), RunConfig.from_flat(config), log=lambda _: None
    ).run()
    if results.status != "completed":
        raise RuntimeError(f"federation {settings} ended {results.status}: {results.error}")
    per_site: dict[str, dict[str, int]] = {}
    for phase, record in results.phases.items():
        for site, traffic in record.bytes.items():
            per_site.setdefault(site, {})[phase] = traffic.sent + traffic.received
    return {
        "per_site_phase_bytes": per_site,
        "per_site_total": {site: sum(v.values()) for site, v in per_site.items()},
        "total": sum(sum(v.values()) for v in per_site.values()),
        "merge": {m: e.weighted_mean for m, e in results.metrics.get("merge", {}).items()},
        "fuse": {m: e.weighted_mean for m, e in results.metrics.get("fuse", {}).items()},
        "fuse_trainable_parameters": results.rounds["fuse"].trainable if "fuse" in results.rounds else None,
        "wall_seconds": time.perf_counter() - start,
    }


def markdown(document: dict[str, Any]) -> str:
    variants = document["variants"]
    sites = sorted({s for v in variants.values() for s in v["per_site_total"]})
    mib = 1024 * 1024
    lines = [
        f"# Bytes on the wire with a {document['encoder_parameters'] / 1e6:.1f} M-parameter encoder",
        "",
        f"`{document['command']}` on {document['date']} ({document['wall_seconds'] / 60:.1f} min). "
        f"{document['patients']} synthetic patients, omics {document['features']} features, omics encoder "
        f"{document['encoder_parameters']:,} parameters; {document['settings']}. Payload bytes sent + received per "
        "site, counted by the coordinator in each phase (MiB). See bench/encoder_bytes.py.",
        "",
        "| variant | " + " | ".join(sites) + " | total | merge c-index | fuse c-index |",
        "|---|" + "---|" * (len(sites) + 3),
    ]
    for name, v in variants.items():
        cells = [f"{v['per_site_total'].get(s, 0) / mib:.2f}" for s in sites]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {v['total'] / mib:.2f} | {v['merge'].get('merge', float('nan')):.3f} "
            f"| {v['fuse'].get('fuse', float('nan')):.3f} |"
        )
    by_ref, e2e = variants["adapters by reference"]["total"], variants["end-to-end FedAvg"]["total"]
    full = variants["full blocks"]["total"]
    lines += [
        "",
        f"End-to-end FedAvg moves {e2e / by_ref:.1f}x the bytes of adapters by reference, full blocks "
        f"{full / by_ref:.1f}x. Per phase (MiB):",
        "",
    ]
    phases = sorted({p for v in variants.values() for s in v["per_site_phase_bytes"].values() for p in s})
    lines += ["| variant | site | " + " | ".join(phases) + " |", "|---|---|" + "---|" * len(phases)]
    for name, v in variants.items():
        for site in sites:
            row = v["per_site_phase_bytes"].get(site, {})
            lines.append(f"| {name} | {site} | " + " | ".join(f"{row.get(p, 0) / mib:.3f}" for p in phases) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--quick", action="store_true", help="a small encoder: checks the path, not the figures")
    args = parser.parse_args(argv)
    features, width, patients = (200, 64, 120) if args.quick else (4000, 2048, 300)
    settings = {"block-epochs": 3, "patience": 3, "block-rounds": 1, "block-local-epochs": 1, "fuse-rounds": 2,
                "fuse-local-epochs": 1, "latent-channels": 16, "latent-dim": 32}  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedlego-bytes-") as folder:
        work = Path(folder)
        os.environ[STORE_ENV] = str(work / "store")
        folders, weights, parameters = make_sites(work, features, width, patients)
        variants = {}
        for name, variant in VARIANTS.items():
            print(f"{name} ...", file=sys.stderr, flush=True)
            name_encoder(folders, weights, features, width, variant["frozen"])
            extra = {k: v for k, v in variant.items() if k != "frozen"}
            variants[name] = run_variant(folders, {**settings, **extra})
    document = {
        "command": command_line("encoder_bytes.py", argv),
        "date": datetime.date.today().isoformat(),
        "patients": patients,
        "features": features,
        "encoder_parameters": parameters,
        "settings": ", ".join(f"{k}={v}" for k, v in settings.items()),
        "variants": variants,
        "wall_seconds": time.perf_counter() - start,
    }
    write_page(args.out, "encoder-bytes", document, markdown)


if __name__ == "__main__":
    main()
