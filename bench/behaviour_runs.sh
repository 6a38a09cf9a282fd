#!/usr/bin/env bash
# The runs a behaviour-unchanged refactor is checked on (see bench/compare.py):
#   bench/behaviour_runs.sh CHECKOUT OUT
# runs, with CHECKOUT's own .venv, the demo federation, a synthetic federation with block FedAvg
# (two sites per modality, validation weighting, FedProx fuse), a 2-fold centralized PBC run and
# the benchmark suite's quick mode, into OUT/{demo,syn,central,bench-quick}. Then
#   python bench/compare.py OUT_BEFORE OUT_AFTER
set -uo pipefail
ROOT=$(cd "$1" && pwd); OUT=$2; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
cd "$ROOT"
F=$ROOT/.venv/bin/fedlego
"$F" simulate --dataset tcga-acc --overlap 1 --set weighting=samples --out "$OUT/demo" > "$OUT/demo.log" 2>&1
"$F" simulate --dataset synthetic --sites-per-modality 2 --set synthetic-modalities=2 --set block-epochs=6 \
  --set weighting=validation --set fuse-aggregation=fedprox --out "$OUT/syn" > "$OUT/syn.log" 2>&1
"$F" centralized --dataset pbc --folds 2 --epochs 6 --weighting uniform --out "$OUT/central" > "$OUT/central.log" 2>&1
.venv/bin/python bench/suite.py --quick --out "$OUT/bench-quick" > "$OUT/bench.log" 2>&1
