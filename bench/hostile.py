"""Hostile block packages against the coordinator's real checks: a trusted hospital of a signed
federation on bundled TCGA-ACC sends, instead of its honest block, one mutated at random (and
re-hashed and re-signed with its own key, as a malicious site would), of several kinds.

Each trial is a whole federation (merge and evaluation through the real ClientApp handlers, in
process; the honest sites' blocks are trained once and replayed). Its verdict:
- ``refused``: the coordinator refused the package with a reason (the run went on without it);
- ``accepted, harmless``: accepted, and every site's metrics of the merged model equal the honest
  run's (the mutation changed nothing the model computes);
- ``poisoned``: accepted, and the merged model differs (its metrics moved, are not finite, or an
  honest site could not evaluate it): the hostile site changed the consortium's model;
- ``crashed``: the run ended on an unexpected exception (or one escaped ``Federation.run``).
"""

from __future__ import annotations

import copy
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedlego.certs import make_consortium
from fedlego.common.config import RunConfig
from fedlego.common.packaging import content_hash, parse_block_package, serialize
from fedlego.common.signing import load_signing_key, sign_package
from fedlego.inprocess import InProcessTransport
from fedlego.proto.fedlego_pb2 import BlockPackage
from fedlego.server.orchestrator import Federation

SITES = ["clinical", "rna", "paired-0"]
JSON_FIELDS = ("architecture_json", "task_json", "preprocessing_json")
HOSTILE_VALUES: list[Any] = [
    None, True, -1, 0, 2**63, 2**70, 1e308, float("nan"), float("inf"), "", "x" * 10_000,
    [], {}, [10**6, 10**6, 10**6], "os:system", [[[[[[[[[[1]]]]]]]]]],
]  # fmt: skip

Mutation = Callable[[BlockPackage, random.Random], "tuple[BlockPackage | bytes, str]"]
"""Rewrites a package (in place, or into other bytes); returns it and what exactly it changed."""


@dataclass
class Trial:
    """One hostile package and what the coordinator made of it."""

    kind: str
    what: str
    verdict: str
    reason: str = ""
    detail: str = ""


@dataclass
class HostileReport:
    """Trials by kind, with the honest run's metric."""

    honest_metric: float
    target: str
    trials: list[Trial] = field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        """Per kind: tried, and how many of each verdict."""
        rows = []
        for kind in dict.fromkeys(t.kind for t in self.trials):
            counts = Counter(t.verdict for t in self.trials if t.kind == kind)
            rows.append({"kind": kind, "tried": sum(counts.values()), **counts})
        return rows


# --------------------------------------------------------------------------- mutations


def _paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value[:20]):
            yield from _paths(child, (*prefix, index))


def _set(document: Any, path: tuple, value: Any, delete: bool = False) -> Any:
    if not path:
        return value
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return document


def _json_edit(package: BlockPackage, rng: random.Random, delete: bool) -> tuple[BlockPackage, str]:
    name = rng.choice([f for f in JSON_FIELDS if getattr(package, f)])
    document = json.loads(getattr(package, name))
    paths = [p for p in _paths(document) if p] if delete else list(_paths(document))
    path = rng.choice(paths)
    value = copy.deepcopy(rng.choice(HOSTILE_VALUES))
    setattr(package, name, json.dumps(_set(document, path, value, delete)))
    where = name + "".join(f"[{step!r}]" for step in path)
    return package, f"{where} removed" if delete else f"{where} = {json.dumps(value)[:40]}"


def json_value(package: BlockPackage, rng: random.Random) -> tuple[BlockPackage, str]:
    """A random field of a JSON document replaced by a hostile value (type, size, NaN, nesting)."""
    return _json_edit(package, rng, delete=False)


def json_delete(package: BlockPackage, rng: random.Random) -> tuple[BlockPackage, str]:
    """A random key or list item of a JSON document removed."""
    return _json_edit(package, rng, delete=True)


MANY_CATEGORIES = [{"name": "c", "categories": [str(i) for i in range(200_000)]}]
OVERSIZE = {
    "50 MB preprocessing": lambda p: setattr(p, "preprocessing_json", json.dumps({"kind": "x" * 50_000_000})),
    "10^6-number list": lambda p: _with_fit(p, "median", [0.0] * 1_000_000),
    "200k categories": lambda p: _with_fit(p, "categorical", MANY_CATEGORIES),
    "nesting depth 10^5": lambda p: setattr(p, "architecture_json", "[" * 100_000 + "]" * 100_000),
}


def _with_fit(package: BlockPackage, key: str, value: Any) -> None:
    state = json.loads(package.preprocessing_json)
    state.setdefault("fit", {})[key] = value
    package.preprocessing_json = json.dumps(state)


AMPLIFY = {
    "head_dim 10^7": ("head_dim", 10**7),
    "steps 10^9": ("steps", 10**9),
    "encoder width 10^7": ("encoder.kwargs.width", 10**7),
    "example shape 10^9": ("encoder.example", {"x": [2, 10**9]}),
    "unknown field": ("latent_channels", 10**6),
}
CONTRACT = {"contract channels 10^6": ("channels", 10**6), "contract dim 10^6": ("dim", 10**6)}


def _amplify(package: BlockPackage, path: str, value: Any) -> None:
    architecture = json.loads(package.architecture_json)
    parent = architecture
    *steps, last = path.split(".")
    for step in steps:
        parent = parent.setdefault(step, {})
    parent[last] = value
    package.architecture_json = json.dumps(architecture)


def tensor_edit(package: BlockPackage, rng: random.Random) -> tuple[BlockPackage, str]:
    """One tensor with a wrong shape, dtype, length, non-finite values, or removed/duplicated."""
    tensor = rng.choice([t for t in package.tensors if t.dtype.startswith("float")])
    action = rng.choice(["shape", "huge-shape", "dtype", "truncate", "nan", "inf", "remove", "duplicate"])
    if action == "shape":
        tensor.shape[0] = tensor.shape[0] + 1 if len(tensor.shape) else 1
    elif action == "huge-shape":
        tensor.shape[:] = [2**31, 2**31]
    elif action == "dtype":
        tensor.dtype = rng.choice(["float64", "int8", "object", "complex128"])
    elif action == "truncate":
        tensor.data = tensor.data[: len(tensor.data) // 2]
    elif action in ("nan", "inf"):
        values = np.frombuffer(tensor.data, dtype=tensor.dtype).copy()
        values[rng.randrange(len(values))] = np.nan if action == "nan" else np.inf
        tensor.data = values.tobytes()
    elif action == "remove":
        package.tensors.remove(tensor)
    else:
        package.tensors.add().CopyFrom(tensor)
    return package, f"{action} of tensor {tensor.name}"


def _scaled(package: BlockPackage, factor: float) -> BlockPackage:
    for tensor in package.tensors:
        if tensor.dtype.startswith("float"):
            values = np.frombuffer(tensor.data, dtype=tensor.dtype) * factor
            tensor.data = values.astype(tensor.dtype).tobytes()
    return package


def _head_flipped(package: BlockPackage) -> BlockPackage:
    """The output layers negated: the latent head's (its normalisation left alone: negating both
    would cancel) and the direct head's (``direct``: the block's prediction from its tokens)."""
    for tensor in package.tensors:
        output = tensor.name.startswith("direct.") or (tensor.name.startswith("head.") and "norm" not in tensor.name)
        if output and tensor.dtype.startswith("float"):
            tensor.data = (-np.frombuffer(tensor.data, dtype=tensor.dtype)).tobytes()
    return package


def _fixed(edit: Callable[[BlockPackage, random.Random], Any]) -> Mutation:
    """A mutation from an edit made in place (or returning other bytes)."""

    def mutation(package: BlockPackage, rng: random.Random) -> tuple[BlockPackage | bytes, str]:
        changed = edit(package, rng)
        return (changed if isinstance(changed, bytes) else package), ""

    return mutation


def mutations(trials_per_kind: int) -> list[tuple[str, str, Mutation, bool]]:
    """(kind, what, mutation, re-signed by the hostile site) for every hostile package tried."""
    tried: list[tuple[str, str, Mutation, bool]] = []
    for _ in range(trials_per_kind):
        tried.append(("JSON values", "random field -> hostile value", json_value, True))
        tried.append(("JSON structure", "random key removed", json_delete, True))
        tried.append(("tensors", "shape/dtype/bytes/non-finite/missing", tensor_edit, True))
    for what, edit in OVERSIZE.items():
        tried.append(("sizes", what, _fixed(lambda p, r, edit=edit: edit(p)), True))
    for what, (path, value) in AMPLIFY.items():
        tried.append(("amplification", what, _fixed(lambda p, r, a=path, v=value: _amplify(p, a, v)), True))
    for what, (name, value) in CONTRACT.items():
        tried.append(("amplification", what, _fixed(lambda p, r, n=name, v=value: setattr(p.contract, n, v)), True))
    identity = {
        "n_samples x1000": lambda p, r: setattr(p, "n_samples", p.n_samples * 1000),
        "claims another site": lambda p, r: setattr(p, "site", "paired-0"),
        "another run (replay)": lambda p, r: setattr(p, "run_id", "run-000000000000"),
        "undeclared modality": lambda p, r: setattr(p, "modality", "rna"),
    }
    tried += [("identity", what, _fixed(edit), True) for what, edit in identity.items()]
    tried.append(("signature", "changed after signing", _fixed(lambda p, r: p.metrics.update({"x": 1.0})), False))
    tried.append(("signature", "unsigned", _fixed(lambda p, r: p.ClearField("signature")), False))
    tried.append(("bytes", "truncated protobuf", _fixed(lambda p, r: serialize(p)[: len(serialize(p)) // 3]), False))
    tried.append(("bytes", "random bytes", _fixed(lambda p, r: r.randbytes(4096)), False))
    sabotage = {
        "weights x1000": lambda p, r: _scaled(p, 1000.0),
        "weights x0": lambda p, r: _scaled(p, 0.0),
        "head negated (inverted risk)": lambda p, r: _head_flipped(p),
    }
    tried += [("valid but sabotaged", what, _fixed(edit), True) for what, edit in sabotage.items()]
    return tried


# --------------------------------------------------------------------------- the federation


class Replaying(InProcessTransport):
    """Block replies trained once and replayed; ``hostile`` rewrites one site's package."""

    cached: dict | None = None
    hostile: Callable[[dict], None] | None = None

    def exchange(self, message_type, requests, timeout, waiting=None, received=None):
        if message_type != "train.block":
            return super().exchange(message_type, requests, timeout, waiting)
        if self.cached is None:
            self.cached = super().exchange(message_type, requests, timeout, waiting)
        replies = copy.deepcopy(self.cached)
        if self.hostile is not None:
            self.hostile(replies)
        return replies


def _per_site(results: dict) -> dict:
    merge = (results.get("metrics") or {}).get("merge") or {}
    return {m: {s: v["metric"] for s, v in e["per_site"].items()} for m, e in merge.items()}


def _pooled(results: dict) -> float:
    merge = (results.get("metrics") or {}).get("merge") or {}
    value = (merge.get("merge") or {}).get("pooled")
    return float("nan") if value is None else float(value)


def run_hostile(root: Path, trials_per_kind: int = 10, seed: int = 0, log: Callable[[str], None] = print):
    """Every hostile package of :func:`mutations` against a signed TCGA-ACC federation."""
    make_consortium(root / "certs", SITES)
    config = {
        "dataset": "tcga-acc",
        "modalities": "clinical,rna",
        "block-epochs": 10,
        "patience": 5,
        "block-rounds": 0,
        "fuse-rounds": 0,
        # TCGA-ACC's sites hold fewer than 10 test events: at the default min-cell no site reports a
        # metric, and no verdict could tell a harmless package from a poisoned one
        "min-cell": 1,
        "trusted-sites": str(root / "certs" / "coordinator" / "trusted-sites.json"),
        "coordinator-key": str(root / "certs" / "coordinator" / "signing.key"),
    }
    settings = RunConfig.from_flat(config)
    node_configs = {
        index: {
            "partition-id": index,
            "num-partitions": len(SITES),
            "signing-key": str(root / "certs" / "sites" / site / "signing.key"),
            "coordinator-public-key": str(root / "certs" / "sites" / site / "coordinator.pub"),
        }
        for index, site in enumerate(SITES)
    }
    transport = Replaying(config, len(SITES), node_configs=node_configs)
    federation = Federation(transport, settings, log=lambda _: None)
    honest = federation.run().to_dict()
    if honest["status"] != "completed":
        raise RuntimeError(f"the honest run did not complete: {honest.get('error')}")
    honest_metric = _pooled(honest)
    # The hostile site: the one whose clinical block the honest merge kept.
    target_site = federation.models.block_packages["clinical"].site
    node = 1000 + SITES.index(target_site)
    key = load_signing_key(root / "certs" / "sites" / target_site / "signing.key")
    report = HostileReport(honest_metric, f"{target_site}/clinical")
    rng = random.Random(seed)
    for kind, what, mutation, resign in mutations(trials_per_kind):
        details: list[str] = []

        def hostile(replies, mutation=mutation, resign=resign, details=details):
            config_ = replies[node].payload.config
            index = config_["modalities"].index("clinical")
            changed, detail = mutation(parse_block_package(config_["packages"][index]), rng)
            details.append(detail)
            if isinstance(changed, BlockPackage):
                if resign:
                    changed.content_hash = content_hash(changed)
                    sign_package(changed, key, target_site)
                changed = serialize(changed)
            config_["packages"][index] = changed

        transport.hostile = hostile
        trial = _verdict(kind, what, transport, settings, honest, target_site)
        trial.detail = details[0] if details else ""
        report.trials.append(trial)
        log(f"  {kind:<20} {what:<40} {trial.verdict:<10} {trial.detail[:60]}")
    return report


def _verdict(kind, what, transport, settings, honest: dict, target_site) -> Trial:
    try:
        results = Federation(transport, settings, log=lambda _: None).run().to_dict()
    except Exception as error:  # an escape is exactly what this benchmark looks for
        return Trial(kind, what, "crashed", f"{type(error).__name__}: {error}"[:300])
    if results["status"] == "failed" and str(results.get("error", "")).startswith("unexpected"):
        return Trial(kind, what, "crashed", results["error"][:300])
    refusal = next((r for r in results["refused"] if r["site"] == target_site), None)
    if refusal is not None:
        return Trial(kind, what, "refused", refusal["reason"].splitlines()[0][:300])
    metric, honest_metric = _pooled(results), _pooled(honest)
    evaluation_failures = [f for f in results["failures"] if f["phase"].startswith("evaluate")]
    effect = f"pooled merge c-index {metric:.3f} (honest {honest_metric:.3f})"
    if evaluation_failures or not math.isfinite(metric) or _per_site(results) != _per_site(honest):
        return Trial(kind, what, "poisoned", effect)
    return Trial(kind, what, "accepted, harmless", effect)
