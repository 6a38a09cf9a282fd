"""Predicting with a trained model package on a site's data; no labels needed.

:func:`predict_folder` loads a merged or fused model package (the ``merged.pb`` / ``fused.pb`` a
run writes) or a single block package (``block-<modality>.pb``), checks it (schema version,
content hash, tensors, and the Ed25519 signature unless verification is explicitly skipped),
reads the model's modalities from a site folder (any non-empty subset of them), transforms them
with the preprocessing fitted at training time and stored in each block (never refitted on the
data predicted), and returns one row per patient: ``patient_id``, the ``modalities`` used, and
``risk`` plus ``survival_at_<cut>`` (survival) or ``p_<class>`` (classification).

Errors are ``ValueError`` subclasses naming the file, modality or field at fault: ``PackageError``
(package), ``SiteDataError`` (data files) and :class:`PredictionError` (everything else).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from torch import nn

from fedlego.common.data.dataset import ModalityData
from fedlego.common.data.errors import SiteDataError
from fedlego.common.data.kinds import modality_kind
from fedlego.common.data.preprocess import Preprocessor, preprocessor_from_dict
from fedlego.common.data.sitefolder import read_site_modalities
from fedlego.common.data.tensors import TensorSet
from fedlego.common.lego import LegoBlock
from fedlego.common.packaging import (
    PackageError,
    check_block_package,
    model_from_package,
    package_task,
    parse_block_package,
    parse_model_package,
)
from fedlego.common.signing import COORDINATOR, load_public_key, verify_signature
from fedlego.common.tasks import SurvivalTask, Task
from fedlego.common.training import Forward, predict
from fedlego.common.workflow import unimodal_forward
from fedlego.proto.fedlego_pb2 import BlockPackage, ModelPackage


class PredictionError(ValueError):
    """A prediction that cannot be made, naming the file, modality or field at fault."""


class PredictionWarning(UserWarning):
    """Something to know about a prediction that still goes ahead (unverified package, skipped patients)."""


@dataclass
class LoadedModel:
    """A checked package, ready to predict: the model, its blocks by modality, its task, and how
    to call it on a multimodal input (``forward``; None: call the model itself)."""

    source: str
    model: nn.Module
    blocks: dict[str, LegoBlock]
    task: Task
    forward: Forward | None


def _parse(data: bytes, source: str) -> ModelPackage | BlockPackage:
    """A merged or fused model package, else a block package, else an error."""
    for parse, is_package in (
        (parse_model_package, lambda p: p.kind in ("merged", "fused")),
        (parse_block_package, lambda p: bool(p.modality)),
    ):
        try:
            package = parse(data, source)
        except PackageError:
            continue
        if is_package(package):
            return package
    raise PackageError(f"{source}: not a fedlego model or block package")


def load_model(
    path: Path | str,
    coordinator_key: Path | str | Ed25519PublicKey | None = None,
    *,
    unverified: bool = False,
) -> LoadedModel:
    """Load and check a model (or block) package.

    Schema version, content hash and tensors are always checked. The signature is checked with
    ``coordinator_key`` (the coordinator's ``signing.pub``, or for a block a site uploaded, that
    site's): model packages must be signed by the coordinator, block packages by the site they
    name (``coordinator`` for blocks averaged by FedAvg). Without a key, ``unverified=True`` must
    be passed explicitly; a :class:`PredictionWarning` then says the signature was not checked.
    """
    source = str(path)
    if coordinator_key is not None and unverified:
        raise PredictionError(f"{source}: give a public key to verify the package or skip verification, not both")
    if coordinator_key is None and not unverified:
        raise PredictionError(
            f"{source}: a public key is needed to verify the package's signature "
            "(or skip verification explicitly: --unverified, unverified=True)"
        )
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise PredictionError(f"{source}: cannot read the package ({error.strerror or error})") from error
    package = _parse(data, source)
    try:
        if coordinator_key is None:
            warnings.warn(f"{source}: signature NOT verified (skipped on request)", PredictionWarning, stacklevel=2)
        else:
            key = coordinator_key if isinstance(coordinator_key, Ed25519PublicKey) else load_public_key(coordinator_key)
            signer = package.site if isinstance(package, BlockPackage) else COORDINATOR
            verify_signature(package, {signer: key}, package.run_id, expected_signer=signer)
        if isinstance(package, BlockPackage):
            block = check_block_package(package).eval()
            return LoadedModel(source, block, {block.modality: block}, package_task(package), unimodal_forward(block))
        model = model_from_package(package)
        tasks = {package_task(p) for p in package.blocks}
        if len(tasks) > 1:
            raise PackageError(f"blocks disagree on the task: {[t.to_dict() for t in tasks]}")
    except PackageError as error:
        raise PackageError(f"{source}: {error}") from error
    return LoadedModel(source, model, dict(model.blocks.items()), tasks.pop(), None)


def _preprocessor(block: LegoBlock, data: ModalityData) -> Preprocessor:
    """The block's fitted preprocessing, checked against the data's kind (and time-series variables)."""
    if not block.preprocessing:
        raise PredictionError(f"block {block.modality!r}: the package carries no preprocessing state")
    try:
        preprocessor = preprocessor_from_dict(block.preprocessing)
        fitted = preprocessor.fitted
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise PredictionError(f"block {block.modality!r}: unusable preprocessing state ({error})") from error
    if preprocessor.kind != data.kind:
        raise SiteDataError(
            data.source,
            f"modality '{data.name}' is {data.kind} data, the model's block was trained on {preprocessor.kind}",
        )
    for warning in modality_kind(data.kind).prediction_warnings(data, fitted):
        warnings.warn(warning, PredictionWarning, stacklevel=3)
    return preprocessor


def _survival_column(cut: float, unit: str | None, digits: int) -> str:
    return f"survival_at_{cut:.{digits}g}" + (f"_{unit}" if unit else "")


def survival_columns(task: SurvivalTask) -> list[str]:
    """``survival_at_<time>_<unit>`` per cut point (4 significant digits unless two would read the
    same; no unit suffix when the run's task does not state one)."""
    for digits in (4, 10):
        names = [_survival_column(cut, task.time_unit, digits) for cut in task.cut_points]
        if len(set(names)) == len(names):
            break
    return names


def score_columns(task: Task) -> dict[str, str]:
    """The score columns ``fedlego predict`` writes for ``task``, each with what it holds."""
    patients = {"patient_id": "the patient's id in the site folder", "modalities": "the modalities the row used"}
    if isinstance(task, SurvivalTask):
        unit = task.time_unit or "time units of the training labels (the run did not state the unit)"
        columns = {"risk": "predicted risk: higher means an earlier event expected (only the order is meaningful)"}
        for name, cut in zip(survival_columns(task), task.cut_points, strict=True):
            columns[name] = f"predicted probability of no event by time {cut:.10g} ({unit})"
        return patients | columns
    if task.n_classes == 2:
        return patients | {"p_0": "predicted probability of label 0", "p_1": "predicted probability of label 1"}
    return patients | {f"p_{k}": f"predicted probability of class {k}" for k in range(task.n_classes)}


def _score_columns(task: Task, logits: torch.Tensor) -> dict[str, object]:
    """``risk`` and ``survival_at_<time>_<unit>`` (survival) or ``p_<class>`` (classification)."""
    scores = task.scores(logits)
    if isinstance(task, SurvivalTask):
        survival = torch.cumprod(torch.sigmoid(-logits), dim=1).numpy()  # the curve SurvivalTask.scores sums
        columns: dict[str, object] = {"risk": scores}
        columns |= {name: survival[:, k] for k, name in enumerate(survival_columns(task))}
        return columns
    if task.n_classes == 2:
        return {"p_0": 1.0 - scores, "p_1": scores}
    return {f"p_{k}": scores[:, k] for k in range(task.n_classes)}


def predict_modalities(model: LoadedModel, modalities: Mapping[str, ModalityData]) -> pd.DataFrame:
    """Predictions for every patient holding at least one of the model's modalities in
    ``modalities`` (others are ignored), in patient id order. Patients left with no usable data
    (e.g. time series of unseen variables only) are skipped with a :class:`PredictionWarning`.
    ``frame.attrs["columns"]`` describes each column (:func:`score_columns`)."""
    usable = {m: data for m, data in modalities.items() if m in model.blocks}
    if not usable:
        raise PredictionError(
            f"{model.source}: none of the model's modalities {sorted(model.blocks)} is in the data "
            f"(it holds {sorted(modalities)})"
        )
    preprocessors = {m: _preprocessor(model.blocks[m], data) for m, data in usable.items()}
    ids = sorted(set().union(*(data.patient_ids() for data in usable.values())))
    inputs, present = {}, {}
    for m, preprocessor in preprocessors.items():
        tensors, mask = preprocessor.transform(usable[m], ids)
        inputs[m], present[m] = tensors, torch.as_tensor(mask, dtype=torch.bool)
    data = TensorSet(ids, inputs, present, {}).restrict(sorted(usable))
    skipped = len(ids) - len(data)
    if not len(data):
        raise PredictionError(f"none of the {len(ids)} patients has usable data for the model's modalities")
    if skipped:
        warnings.warn(
            f"{skipped} of {len(ids)} patients have no usable data for the model's modalities: no prediction for them",
            PredictionWarning,
            stacklevel=2,
        )
    logits = predict(model.model, data, model.forward)
    used = ["+".join(m for m in sorted(data.present) if data.present[m][row]) for row in range(len(data))]
    frame = pd.DataFrame({"patient_id": data.ids, "modalities": used, **_score_columns(model.task, logits)})
    frame.attrs["columns"] = score_columns(model.task)  # what each column holds (``fedlego predict``'s sidecar)
    return frame


def predict_folder(
    model_path: Path | str,
    data_path: Path | str,
    *,
    coordinator_key: Path | str | Ed25519PublicKey | None = None,
    unverified: bool = False,
) -> pd.DataFrame:
    """Predictions of a model package for the patients of a site folder (labels not needed).

    The package is loaded with :func:`load_model` (signature verified with ``coordinator_key``
    unless ``unverified``); the folder's modalities the model uses are read with
    ``read_site_modalities`` and predicted with :func:`predict_modalities`."""
    model = load_model(model_path, coordinator_key, unverified=unverified)
    return predict_modalities(model, read_site_modalities(Path(data_path), set(model.blocks)))
