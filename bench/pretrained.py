"""A frozen pre-trained encoder plus a trained adapter against a LegoBlock trained from scratch.

    python bench/pretrained.py --out docs/benchmarks [--quick]

For every tabular modality of the bundled data sets and each of 5 patient-level folds: the
reference SNN encoder is pre-trained as a denoising autoencoder (``fedlego pretrain``'s code) on the
fold's training patients holding that modality, **without their labels**, early-stopped on the
validation patients' reconstruction error; the block then trains only its adapter (latent array,
cross-attention updates, head) on top of the frozen encoder. The block from scratch trains
everything. Same preprocessing, architecture, training settings and early stopping on validation
loss. Both are scored on the fold's test patients holding the modality (c-index or AUC); the
paired per-fold difference (frozen - scratch) is given with a 95 % t-interval. The pre-training
data are the block's own training patients (no outside cohort is bundled), so this measures
frozen self-supervised features against end-to-end training, not the gain from a larger cohort.

Writes ``OUT/pretrained.json`` and ``OUT/pretrained.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedlego.common.data.kinds.tabular import TabularKind
from fedlego.common.data.scenarios import dataset_splits
from fedlego.common.data.tensors import fit_preprocessors, make_tensor_set, task_for
from fedlego.common.model_store import STORE_ENV, save_weights
from fedlego.common.pretraining import PretrainConfig, pretrain_tabular_encoder
from fedlego.common.workflow import scores_of, train_block, unimodal_forward
from fedlego_bench.quality import load_benchmark_dataset, metric, quick_config
from fedlego_bench.standalone import command_line, write_page
from fedlego_bench.weighting import paired_difference

DATASETS = ("tcga-acc", "pbc", "synthetic")


def fold_record(dataset, config, split, modality: str, work: Path, quick: bool) -> dict[str, Any]:
    """Scratch and frozen-pretrained blocks of one modality on one fold, scored on its test patients."""
    task = task_for(dataset.labels, split.train)
    preprocessors = fit_preprocessors(dataset, split.train, config.preprocessing)
    train = make_tensor_set(dataset, preprocessors, split.train).restrict([modality])
    validation = make_tensor_set(dataset, preprocessors, split.validation).restrict([modality])
    test = make_tensor_set(dataset, preprocessors, split.test).restrict([modality])
    state = preprocessors[modality].to_dict()
    kind = dataset.modalities[modality].kind
    scratch, _ = train_block(modality, kind, train, validation, task, config.model, config.training, state)
    pretraining = PretrainConfig(
        width=config.model.encoder_width, dropout=config.model.dropout, epochs=20 if quick else 200, seed=split.fold
    )
    features = train.inputs[modality]["x"]
    encoder, report = pretrain_tabular_encoder(features, validation.inputs[modality]["x"], pretraining)
    weights = work / f"{modality}-fold{split.fold}.safetensors"
    save_weights(encoder, weights)
    choice = {
        "name": "snn",
        "kwargs": {"in_features": int(features.shape[1]), "width": pretraining.width, "dropout": pretraining.dropout},
        "weights": str(weights),
        "frozen": True,
    }
    frozen, _ = train_block(
        modality, kind, train, validation, task, config.model, config.training, state, encoder=choice
    )
    scores = {
        name: metric(task, scores_of(block, test, task, unimodal_forward(block)), test)
        for name, block in (("scratch", scratch), ("frozen", frozen))
    }
    trainable = {
        name: sum(p.numel() for p in block.parameters() if p.requires_grad)
        for name, block in (("scratch", scratch), ("frozen", frozen))
    }
    return {"fold": split.fold, "n_test": len(test), "metric": scores, "trainable": trainable,
            "features": int(features.shape[1]), "pretrain_best_epoch": report.best_epoch}  # fmt: skip


def markdown(document: dict[str, Any]) -> str:
    lines = [
        "# Frozen pre-trained encoder + adapter vs block from scratch",
        "",
        f"`{document['command']}` on {document['date']} ({document['wall_seconds'] / 60:.1f} min); "
        f"{document['folds']} patient-level folds. Test c-index (survival) or AUC, mean over folds; paired "
        "difference frozen - scratch with a 95 % t-interval over folds. Pre-training: denoising autoencoder on the "
        "fold's training patients' features, labels unused (see bench/pretrained.py).",
        "",
        "| data set / modality | features | scratch | frozen + adapter | frozen - scratch | trainable parameters "
        "(scratch / frozen) |",
        "|---|---|---|---|---|---|",
    ]
    for row in document["rows"]:
        d = row["difference"]
        lines.append(
            f"| {row['dataset']} / {row['modality']} | {row['features']} | {row['scratch']:.3f} | {row['frozen']:.3f} "
            f"| {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] | {row['trainable_scratch']:,} / "
            f"{row['trainable_frozen']:,} |"
        )
    overall = document["overall"]
    lines += [
        "",
        f"All modalities and folds together: frozen - scratch {overall['mean']:+.3f} "
        f"[{overall['low']:+.3f}, {overall['high']:+.3f}] (n={overall['n']} paired folds).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--quick", action="store_true", help="one fold, tiny models: checks the path, not the science")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows, differences = [], []
    with tempfile.TemporaryDirectory(prefix="fedlego-pretrained-") as folder:
        work = Path(folder)
        os.environ[STORE_ENV] = str(work / "store")  # the frozen blocks' weights go to a throw-away store
        for name in DATASETS:
            dataset, config = load_benchmark_dataset(name)
            if args.quick:
                config = quick_config(config)
            splits = dataset_splits(dataset, n_folds=1 if args.quick else config.n_folds, seed=config.seed)
            for modality in [m for m in config.modalities if dataset.modalities[m].kind == TabularKind.name]:
                records = []
                for split in splits:
                    print(f"{name}/{modality}: fold {split.fold + 1}", file=sys.stderr, flush=True)
                    records.append(fold_record(dataset, config, split, modality, work, args.quick))
                diffs = [r["metric"]["frozen"] - r["metric"]["scratch"] for r in records]
                differences += diffs
                rows.append(
                    {
                        "dataset": name,
                        "modality": modality,
                        "features": records[0]["features"],
                        "scratch": sum(r["metric"]["scratch"] for r in records) / len(records),
                        "frozen": sum(r["metric"]["frozen"] for r in records) / len(records),
                        "difference": paired_difference(diffs),
                        "trainable_scratch": records[0]["trainable"]["scratch"],
                        "trainable_frozen": records[0]["trainable"]["frozen"],
                        "folds": records,
                    }
                )  # fmt: skip
    document = {
        "command": command_line("pretrained.py", argv),
        "date": datetime.date.today().isoformat(),
        "folds": 1 if args.quick else 5,
        "rows": rows,
        "overall": paired_difference(differences),
        "wall_seconds": time.perf_counter() - start,
    }
    write_page(args.out, "pretrained", document, markdown)


if __name__ == "__main__":
    main()
