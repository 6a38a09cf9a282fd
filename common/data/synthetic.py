"""Synthetic multimodal cohorts with a known ground truth, for tests and controlled benchmarks.

Generative model (all draws from one ``seed``):

- Each modality ``m`` has its own latent factors ``z_m ~ N(0, I_2)`` per patient, so modalities
  carry complementary (independent) signal.
- True linear predictor ``eta = sum_m signal_m * (w_m . z_m)`` with ``w_m`` a random unit
  vector; ``signal_m = 0`` makes modality ``m`` pure noise with respect to the outcome.
- Observed data are noisy, mildly nonlinear functions of ``z_m``:

  - ``tabular``: ``n_features`` columns ``A z + 0.5 tanh(B z) + noise``;
  - ``timeseries``: 1 to ``max_visits`` (8) irregular visits in the first year (``time`` in
    days), ``n_features`` variables whose level and slope depend on ``z``, each measured at a
    visit with probability ``observed`` (1; at least one per visit); long format
    ``id, time, variable, value``;
  - ``image``: 16x16 ``uint8`` noise image with a Gaussian blob whose brightness depends on
    ``z[0]`` and width on ``z[1]`` (``n_features`` is ignored);
  - ``bags``: 2-12 instances of ``n_features`` each; about 30 % of them ("key instances") are
    shifted by ``C z``.

- Outcome: ``survival`` = exponential times with hazard ``exp(eta) / 1000`` per day and
  independent exponential censoring calibrated to about 30 %; ``binary`` = Bernoulli of
  ``sigmoid(eta)``; ``multiclass`` = softmax of class-specific predictors
  ``eta_c = sum_m signal_m * (W_m[c] . z_m)``.
- ``oracle_score`` (Bayes-optimal score from the latent factors): ``eta`` for survival and
  binary; for multiclass the log-odds of class 1 versus the rest,
  ``eta_1 - logsumexp(eta_c, c != 1)`` (the optimal one-vs-rest score for class 1).
  ``modality_oracle_scores`` (survival and binary): each modality's term
  ``signal_m * (w_m . z_m)`` of ``eta``, the ceiling of a model that sees that modality alone.
- Missingness: each patient lacks modality ``m`` with probability ``missing_rate``; a patient
  who would lack every modality gets one back at random.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .dataset import MODALITY_KINDS, TASK_KINDS, Labels, ModalityData, MultimodalDataset

LATENT_DIM = 2
IMAGE_SIZE = 16
MAX_VISITS = 8
MAX_BAG = 12
KEY_INSTANCE_FRACTION = 0.3
BASE_HAZARD_PER_DAY = 1.0 / 1000.0
CENSORING_RATE = 0.3
SOURCE = "synthetic"


@dataclass(frozen=True)
class SyntheticModality:
    """One synthetic modality: its name, kind, outcome signal strength and missing rate."""

    name: str
    kind: str
    signal: float
    missing_rate: float = 0.0
    n_features: int = 16
    max_visits: int = MAX_VISITS
    """``timeseries``: most visits of a patient (drawn uniformly from 1 to this)."""
    observed: float = 1.0
    """``timeseries``: probability that a variable is measured at a visit (sparse labs)."""

    def __post_init__(self) -> None:
        if self.kind not in MODALITY_KINDS:
            raise ValueError(f"unknown modality kind {self.kind!r}; valid: {list(MODALITY_KINDS)}")
        if not 0.0 <= self.missing_rate < 1.0:
            raise ValueError(f"missing_rate must be in [0, 1), got {self.missing_rate}")
        if self.n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {self.n_features}")
        if self.max_visits < 1 or not 0.0 < self.observed <= 1.0:
            raise ValueError(f"need max_visits >= 1 and observed in (0, 1], got {self.max_visits}, {self.observed}")


def default_synthetic_modalities(n: int) -> list[SyntheticModality]:
    """``n`` modalities cycling tabular, timeseries, image, bags with decreasing signal.

    Modality ``i`` is named ``<kind>_<i>``, has signal ``1.5 * 0.6**i`` and missing rate 0.2.
    """
    features = {"tabular": 16, "timeseries": 4, "image": 1, "bags": 8}
    specs = []
    for i in range(n):
        kind = MODALITY_KINDS[i % len(MODALITY_KINDS)]
        specs.append(SyntheticModality(f"{kind}_{i}", kind, 1.5 * 0.6**i, 0.2, features[kind]))
    return specs


def _unit(rng: np.random.Generator, size: int) -> np.ndarray:
    vector = rng.normal(size=size)
    return vector / np.linalg.norm(vector)


def _tabular(spec: SyntheticModality, z: np.ndarray, ids: list[str], rng: np.random.Generator) -> ModalityData:
    a = rng.normal(size=(spec.n_features, LATENT_DIM))
    b = rng.normal(size=(spec.n_features, LATENT_DIM))
    values = z @ a.T + 0.5 * np.tanh(z @ b.T) + rng.normal(scale=0.5, size=(len(ids), a.shape[0]))
    columns = [f"{spec.name}_{j}" for j in range(spec.n_features)]
    table = pd.DataFrame(values, index=pd.Index(ids, name="id"), columns=columns)
    return ModalityData(spec.name, "tabular", SOURCE, table=table)


def _timeseries(spec: SyntheticModality, z: np.ndarray, ids: list[str], rng: np.random.Generator) -> ModalityData:
    n_vars = spec.n_features
    level_w = rng.normal(size=(n_vars, LATENT_DIM))
    slope_w = rng.normal(size=(n_vars, LATENT_DIM))
    counts = rng.integers(1, spec.max_visits + 1, size=len(ids))
    patient = np.repeat(np.arange(len(ids)), counts)
    times = rng.uniform(0.0, 365.0, size=len(patient))
    level = np.tanh(z @ level_w.T)[patient]  # (visits, variables)
    slope = (z @ slope_w.T)[patient]
    values = level + slope * times[:, None] / 365.0
    values = values + rng.normal(scale=0.3, size=values.shape)
    table = pd.DataFrame(
        {
            "id": np.repeat(np.asarray(ids, dtype=object)[patient], n_vars),
            "time": np.repeat(times, n_vars),
            "variable": np.tile([f"{spec.name}_v{j}" for j in range(n_vars)], len(patient)),
            "value": values.reshape(-1),
        }
    )
    if spec.observed < 1.0:
        measured = rng.random(values.shape) < spec.observed
        measured[np.arange(len(patient)), rng.integers(n_vars, size=len(patient))] = True
        table = table[measured.reshape(-1)]
    table = table.sort_values(["id", "time", "variable"]).reset_index(drop=True)
    return ModalityData(spec.name, "timeseries", SOURCE, table=table)


def _images(spec: SyntheticModality, z: np.ndarray, ids: list[str], rng: np.random.Generator) -> ModalityData:
    grid = np.arange(IMAGE_SIZE, dtype=float)
    rows, cols = np.meshgrid(grid, grid, indexing="ij")
    arrays: dict[str, np.ndarray] = {}
    for i, pid in enumerate(ids):
        centre = IMAGE_SIZE / 2 - 0.5 + rng.uniform(-3.0, 3.0, size=2)
        width = 2.0 + 0.8 * np.tanh(z[i, 1])
        brightness = 100.0 + 80.0 * np.tanh(0.8 * z[i, 0])
        distance2 = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2
        image = rng.normal(60.0, 15.0, size=rows.shape)
        image += brightness * np.exp(-distance2 / (2.0 * width**2))
        arrays[pid] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return ModalityData(spec.name, "image", SOURCE, arrays=arrays)


def _bags(spec: SyntheticModality, z: np.ndarray, ids: list[str], rng: np.random.Generator) -> ModalityData:
    shift_w = 1.5 * rng.normal(size=(spec.n_features, LATENT_DIM)) / np.sqrt(LATENT_DIM)
    arrays: dict[str, np.ndarray] = {}
    for i, pid in enumerate(ids):
        size = int(rng.integers(2, MAX_BAG + 1))
        bag = rng.normal(size=(size, spec.n_features))
        n_key = max(1, round(KEY_INSTANCE_FRACTION * size))
        key = rng.choice(size, size=n_key, replace=False)
        bag[key] += z[i] @ shift_w.T
        arrays[pid] = bag.astype(np.float32)
    return ModalityData(spec.name, "bags", SOURCE, arrays=arrays)


_GENERATORS = {"tabular": _tabular, "timeseries": _timeseries, "image": _images, "bags": _bags}


def _censoring_rate(hazards: np.ndarray, target: float) -> float:
    """Exponential censoring rate ``c`` with mean ``P(C < T) = c / (c + hazard)`` == target."""
    low, high = np.log(hazards.min() * 1e-4), np.log(hazards.max() * 1e4)
    for _ in range(100):
        mid = 0.5 * (low + high)
        rate = np.exp(mid)
        if np.mean(rate / (rate + hazards)) < target:
            low = mid
        else:
            high = mid
    return float(np.exp(0.5 * (low + high)))


def _survival_labels(eta: np.ndarray, ids: list[str], rng: np.random.Generator) -> pd.DataFrame:
    hazards = BASE_HAZARD_PER_DAY * np.exp(eta)
    event_time = rng.exponential(1.0 / hazards)
    censor_time = rng.exponential(1.0 / _censoring_rate(hazards, CENSORING_RATE), size=len(ids))
    time = np.maximum(np.minimum(event_time, censor_time), 1e-3)
    event = (event_time <= censor_time).astype(int)
    return pd.DataFrame({"time": time, "event": event}, index=pd.Index(ids, name="id"))


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    top = x.max(axis=axis, keepdims=True)
    return np.squeeze(top, axis=axis) + np.log(np.exp(x - top).sum(axis=axis))


def _outcome(
    task: str, scores: np.ndarray, ids: list[str], rng: np.random.Generator
) -> tuple[pd.DataFrame, np.ndarray]:
    """Labels table and oracle score from ``scores`` ((n,) or (n, K) for multiclass)."""
    index = pd.Index(ids, name="id")
    if task == "survival":
        return _survival_labels(scores, ids, rng), scores
    if task == "binary":
        label = (rng.random(len(ids)) < 1.0 / (1.0 + np.exp(-scores))).astype(int)
        return pd.DataFrame({"label": label}, index=index), scores
    probs = np.exp(scores - _logsumexp(scores, axis=1)[:, None])
    label = np.array([rng.choice(scores.shape[1], p=p) for p in probs])
    oracle = scores[:, 1] - _logsumexp(np.delete(scores, 1, axis=1), axis=1)
    return pd.DataFrame({"label": label}, index=index), oracle


def _presence(specs: Sequence[SyntheticModality], n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, M) boolean availability; every patient keeps at least one modality."""
    rates = np.array([s.missing_rate for s in specs])
    present = rng.random((n, len(specs))) >= rates
    for row in np.flatnonzero(~present.any(axis=1)):
        present[row, rng.integers(len(specs))] = True
    return present


def _as_spec(spec: SyntheticModality | dict[str, Any]) -> SyntheticModality:
    return spec if isinstance(spec, SyntheticModality) else SyntheticModality(**spec)


def make_synthetic(
    n_patients: int = 300,
    modalities: Sequence[SyntheticModality | dict[str, Any]] | None = None,
    task: str = "survival",
    n_classes: int = 3,
    seed: int = 0,
) -> MultimodalDataset:
    """A synthetic cohort following the generative model in the module docstring.

    ``modalities`` defaults to ``default_synthetic_modalities(4)``; dicts are accepted as
    ``SyntheticModality`` keyword arguments. Patient ids are ``P0000``, ``P0001``, ...
    Deterministic for a given ``seed``.
    """
    specs = [_as_spec(s) for s in (modalities or default_synthetic_modalities(4))]
    if task not in TASK_KINDS:
        raise ValueError(f"unknown task {task!r}; valid: {list(TASK_KINDS)}")
    if len({s.name for s in specs}) != len(specs):
        raise ValueError("synthetic modality names must be unique")
    if n_patients < 2 or (task == "multiclass" and n_classes < 2):
        raise ValueError("need n_patients >= 2 and n_classes >= 2")
    ids = [f"P{i:04d}" for i in range(n_patients)]
    outcome_seq, missing_seq, *modality_seqs = np.random.SeedSequence(seed).spawn(len(specs) + 2)
    width = n_classes if task == "multiclass" else 1
    scores = np.zeros((n_patients, width))
    present = _presence(specs, n_patients, np.random.default_rng(missing_seq))
    data: dict[str, ModalityData] = {}
    parts: dict[str, np.ndarray] = {}
    for m, (spec, sequence) in enumerate(zip(specs, modality_seqs, strict=True)):
        rng = np.random.default_rng(sequence)
        z = rng.normal(size=(n_patients, LATENT_DIM))
        weights = np.stack([_unit(rng, LATENT_DIM) for _ in range(width)])
        parts[spec.name] = spec.signal * z @ weights.T
        scores += parts[spec.name]
        keep = np.flatnonzero(present[:, m])
        data[spec.name] = _GENERATORS[spec.kind](spec, z[keep], [ids[i] for i in keep], rng)
    scores = scores if task == "multiclass" else scores[:, 0]
    table, oracle = _outcome(task, scores, ids, np.random.default_rng(outcome_seq))
    summary = ", ".join(f"{s.name} ({s.kind}, signal {s.signal:g}, missing {s.missing_rate:g})" for s in specs)
    return MultimodalDataset(
        name="synthetic",
        labels=Labels(task, table, SOURCE),  # type: ignore[arg-type]
        modalities=data,
        description=f"Synthetic {task} cohort, seed {seed}, {n_patients} patients: {summary}.",
        oracle_score=pd.Series(oracle, index=pd.Index(ids, name="id"), name="oracle"),
        modality_oracle_scores=None
        if task == "multiclass"
        else pd.DataFrame({name: part[:, 0] for name, part in parts.items()}, index=pd.Index(ids, name="id")),
    )
