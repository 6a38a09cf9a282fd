"""In-memory form of a site's (or a whole dataset's) data, as read from the documented formats.

Patient ids are always strings. Every table is keyed by patient id; nothing here is a tensor yet:
turning raw data into tensors is the job of the fitted preprocessors in ``preprocess.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

TaskKind = Literal["survival", "binary", "multiclass"]
TASK_KINDS: tuple[str, ...] = ("survival", "binary", "multiclass")


@dataclass
class ModalityData:
    """Raw data of one modality, held as its kind says (``common.data.kinds``); the built-in kinds:

    - ``tabular``: ``table`` is a wide DataFrame indexed by patient id (index name ``id``), one
      row per patient, one column per feature (numeric or categorical).
    - ``timeseries``: ``table`` is a long DataFrame with columns ``id, time, variable, value``.
    - ``image``: ``arrays`` maps patient id -> array of shape (H, W) or (H, W, C).
    - ``bags``: ``arrays`` maps patient id -> instance-feature matrix of shape (instances, F).

    ``source`` names where the data came from (a file path or a dataset name) so that errors can
    point at it.
    """

    name: str
    kind: str
    source: str
    table: pd.DataFrame | None = None
    arrays: dict[str, np.ndarray] | None = None

    def patient_ids(self) -> list[str]:
        """Sorted ids of the patients that have this modality."""
        from .kinds import modality_kind  # the kinds build ModalityData: imported on use

        return modality_kind(self.kind).patient_ids(self)

    def subset(self, ids: list[str] | set[str]) -> ModalityData:
        """The same modality restricted to the given patients (absent ids are ignored)."""
        from .kinds import modality_kind

        return modality_kind(self.kind).subset(self, set(ids))


@dataclass
class Labels:
    """Outcomes per patient: ``table`` is indexed by patient id (index name ``id``).

    - ``survival``: columns ``time`` (float, > 0) and ``event`` (0/1).
    - ``binary``: column ``label`` (0/1).
    - ``multiclass``: column ``label`` (integers 0..K-1).
    """

    task: TaskKind
    table: pd.DataFrame
    source: str
    time_unit: str | None = None
    """Survival: the unit of ``time`` (``fedlego.common.tasks.TIME_UNITS``; None: not stated)."""

    def patient_ids(self) -> list[str]:
        """Sorted ids of the labelled patients."""
        return sorted(map(str, self.table.index))

    @property
    def n_classes(self) -> int:
        """Number of classes (2 for binary, 0 for survival)."""
        if self.task == "survival":
            return 0
        if self.task == "binary":
            return 2
        return int(self.table["label"].max()) + 1

    def subset(self, ids: list[str] | set[str]) -> Labels:
        """Labels of the given patients only."""
        keep = set(ids)
        table = self.table.loc[[i for i in self.table.index if i in keep]]
        return Labels(self.task, table, self.source, self.time_unit)


@dataclass
class MultimodalDataset:
    """A labelled cohort with one or more modalities (any patient may lack any modality)."""

    name: str
    labels: Labels
    modalities: dict[str, ModalityData]
    description: str = ""
    oracle_score: pd.Series | None = field(default=None)
    """For synthetic data: the Bayes-optimal score per patient id (higher = higher risk / more
    likely positive class); None for real data."""
    modality_oracle_scores: pd.DataFrame | None = field(default=None)
    """For synthetic survival or binary data: per modality (column), the part of the true linear
    predictor that modality carries, per patient id: the best score a model of that modality
    alone can rank by (its ceiling). None otherwise."""

    def patient_ids(self) -> list[str]:
        """Labelled patients holding at least one modality."""
        with_data: set[str] = set()
        for modality in self.modalities.values():
            with_data.update(modality.patient_ids())
        return [i for i in self.labels.patient_ids() if i in with_data]

    def complete_case_ids(self, modalities: list[str] | None = None) -> list[str]:
        """Labelled patients holding every one of ``modalities`` (default: all)."""
        names = modalities if modalities is not None else list(self.modalities)
        ids = set(self.labels.patient_ids())
        for name in names:
            ids &= set(self.modalities[name].patient_ids())
        return sorted(ids)

    def subset(self, ids: list[str] | set[str], modalities: list[str] | None = None) -> MultimodalDataset:
        """The cohort restricted to some patients and (optionally) some modalities."""
        names = modalities if modalities is not None else list(self.modalities)
        oracle, parts = None, None
        if self.oracle_score is not None:
            oracle = self.oracle_score[self.oracle_score.index.isin(set(ids))]
        if self.modality_oracle_scores is not None:
            parts = self.modality_oracle_scores
            parts = parts.loc[parts.index.isin(set(ids)), [n for n in names if n in parts.columns]]
        return MultimodalDataset(
            name=self.name,
            labels=self.labels.subset(ids),
            modalities={n: self.modalities[n].subset(ids) for n in names},
            description=self.description,
            oracle_score=oracle,
            modality_oracle_scores=parts,
        )
