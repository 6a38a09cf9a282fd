#!/usr/bin/env bash
# make gpu-check: the CUDA path once, in a few minutes, on a machine with one GPU and a CUDA build
# of torch in the venv: block training, block FedAvg rounds and fuse rounds of a simulated
# federation on CUDA (three sites sharing the GPU), then the same on CPU for the times. Writes
# runs/gpu-check/gpu-check.json. It has not run yet (no GPU machine so far): see the README.
set -euo pipefail
cd "$(dirname "$0")/.."
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
PY=${PY:-.venv/bin/python}
FEDLEGO=${FEDLEGO:-.venv/bin/fedlego}
OUT=${OUT:-runs/gpu-check}
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu-check: torch sees no CUDA device (a CPU build, or no GPU)")'
rm -rf "$OUT" && mkdir -p "$OUT"
settings=(--set synthetic-patients=600 block-rounds=2 fuse-rounds=2 min-cell=5)
"$FEDLEGO" simulate --dataset synthetic "${settings[@]}" device=cuda --gpu-fraction 0.3 --out "$OUT/cuda"
"$FEDLEGO" simulate --dataset synthetic "${settings[@]}" device=cpu --out "$OUT/cpu"
"$PY" - "$OUT" <<'PYTHON'
import json, sys, torch
from pathlib import Path
out = Path(sys.argv[1])
runs = {d: json.loads((out / d / "results.json").read_text()) for d in ("cuda", "cpu")}
for device, run in runs.items():
    assert run["status"] == "completed", f"{device}: {run.get('error')}"
record = {
    "gpu": torch.cuda.get_device_name(0),
    "wall_seconds": {d: r["wall_seconds"] for d, r in runs.items()},
    "merge": {d: r["metrics"]["merge"]["merge"]["pooled"] for d, r in runs.items()},
}
(out / "gpu-check.json").write_text(json.dumps(record, indent=2) + "\n")
print(json.dumps(record, indent=2))
PYTHON
