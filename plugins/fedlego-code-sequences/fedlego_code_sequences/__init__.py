"""A fedlego modality-kind plugin: sequences of diagnosis/procedure codes, with their encoder.

Hospitals hold coded history (ICD-10 diagnoses, OPS/CPT procedures, ATC drugs) as a long table,
one row per code per patient and date. This distribution adds the kind ``codes`` and its reference
encoder ``code-sequence`` through two entry points (``fedlego.kinds``, ``fedlego.encoders``); with
it installed, ``"kind": "codes"`` works in ``site.json``, in ``fedlego simulate``, ``run`` and
``predict``, and the blocks it trains merge with any other kind's.

- **File**: CSV (or ``.csv.gz``) with columns ``id, time, code``: ``time`` in days since the
  patient's baseline, ``code`` the code as text.
- **Vocabulary** (the preprocessing state that travels in a block package): the ``max_codes``
  codes held by the most training patients, each by at least ``min_cell`` of them (the site's
  disclosure threshold), so no rare code leaves the site.
- **Encoder inputs**: ``codes`` (n, L) int64 (0 padding, 1 a code outside the vocabulary, 2+ the
  vocabulary), ``times`` (n, L) years before the patient's last code, ``mask`` (n, L): the
  patient's ``max_length`` most recent codes.
- **Encoder**: an embedding per code plus a linear embedding of its time, layer-normalised: one
  token per code, which the LegoBlock's latent array attends over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from fedlego.common.data.dataset import ModalityData
from fedlego.common.data.errors import SiteDataError
from fedlego.common.data.kinds import LongTableKind
from fedlego.common.data.preprocess import Preprocessor
from fedlego.common.disclosure import DisclosureError, below_threshold

if TYPE_CHECKING:
    from fedlego.common.data.synthetic import SyntheticModality

__all__ = ["CodePreprocessor", "CodeSequenceEncoder", "CodeSequenceKind"]

KIND = "codes"
COLUMNS = ("id", "time", "code")
PADDING, UNKNOWN, FIRST_CODE = 0, 1, 2
MAX_VOCABULARY = 1022
"""The most codes a vocabulary holds: the encoder has ``MAX_VOCABULARY + 2`` embeddings, so any
vocabulary fits without the encoder knowing its size."""
DAYS_PER_YEAR = 365.25


def _positive_int(value: Any, name: str, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ValueError(f"{name} must be an integer in [1, {high}], got {value!r}")
    return value


class CodePreprocessor(Preprocessor):
    """Vocabulary fitted on the training patients (codes held by at least ``min_cell`` of them,
    the ``max_codes`` most common); each patient's ``max_length`` most recent codes as ids."""

    kind = KIND

    def __init__(self, max_codes: int = 256, max_length: int = 64) -> None:
        super().__init__(
            max_codes=_positive_int(max_codes, "max_codes", MAX_VOCABULARY),
            max_length=_positive_int(max_length, "max_length", 4096),
        )

    @classmethod
    def fit_problem(cls, fit: dict[str, Any]) -> str | None:
        codes = fit.get("codes")
        if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
            return "fit.codes must be a list of text codes"
        if len(codes) > MAX_VOCABULARY or len(set(codes)) != len(codes):
            return f"fit.codes must hold at most {MAX_VOCABULARY} distinct codes"
        return None

    def fit(self, data: ModalityData, train_ids: Sequence[str], min_cell: int = 1) -> CodePreprocessor:
        assert data.table is not None
        holders = set(data.table["id"])
        ids = [i for i in dict.fromkeys(train_ids) if i in holders]
        if not ids:
            raise SiteDataError(data.source, f"modality '{data.name}': no training patient has codes")
        if len(ids) < min_cell:
            raise DisclosureError(
                data.source, f"modality '{data.name}': {below_threshold('training patients hold it', min_cell)}"
            )
        rows = data.table[data.table["id"].isin(ids)]
        patients = rows.groupby("code")["id"].nunique()
        common = sorted(
            ((code, count) for code, count in patients.items() if count >= min_cell), key=lambda kv: (-kv[1], kv[0])
        )
        self.state["fit"] = {"codes": [code for code, _ in common[: self.state["options"]["max_codes"]]]}
        return self

    def withhold(self, data: ModalityData, train_ids: Sequence[str], min_cell: int) -> ModalityData:
        """Codes held by fewer than ``min_cell`` training patients become unknown (as outside the
        vocabulary), whatever vocabulary the state holds."""
        assert data.table is not None
        if min_cell <= 1:
            return data
        table = data.table
        holders = table[table["id"].isin(set(train_ids))].groupby("code")["id"].nunique()
        common = table["code"].isin(holders.index[holders >= min_cell])
        kept = table.assign(code=table["code"].where(common, None))
        return ModalityData(data.name, data.kind, data.source, table=kept)

    def transform(self, data: ModalityData, ids: Sequence[str]) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        assert data.table is not None
        index = {code: FIRST_CODE + i for i, code in enumerate(self.fitted["codes"])}
        wanted = data.table[data.table["id"].isin(set(ids))].sort_values(["id", "time", "code"], kind="stable")
        groups = {pid: group for pid, group in wanted.groupby("id", sort=False)}
        present = np.array([i in groups for i in ids], dtype=bool)
        longest = max((len(groups[i]) for i in ids if i in groups), default=1)
        length = max(1, min(self.state["options"]["max_length"], longest))
        codes = np.zeros((len(ids), length), dtype=np.int64)
        times = np.zeros((len(ids), length), dtype=np.float32)
        mask = np.zeros((len(ids), length), dtype=np.float32)
        for row, pid in enumerate(ids):
            if not present[row]:
                continue
            recent = groups[pid].iloc[-length:]
            count = len(recent)
            codes[row, :count] = [index.get(code, UNKNOWN) for code in recent["code"]]
            days = recent["time"].to_numpy(dtype=float)
            times[row, :count] = (days - days[-1]) / DAYS_PER_YEAR
            mask[row, :count] = 1.0
        tensors = {"codes": torch.from_numpy(codes), "times": torch.from_numpy(times), "mask": torch.from_numpy(mask)}
        return tensors, present

    def describe(self) -> dict[str, list[int | None]]:
        return {"codes": [None], "times": [None], "mask": [None]}


class CodeSequenceEncoder(nn.Module):
    """codes, times, mask (b, L) -> one token per code (b, L, width) and its mask."""

    def __init__(self, n_codes: int = MAX_VOCABULARY + FIRST_CODE, width: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_codes, width, padding_idx=PADDING)
        self.time = nn.Linear(1, width)
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, codes: torch.Tensor, times: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        known = (codes >= 0) & (codes < self.embed.num_embeddings)
        codes = torch.where(known, codes, torch.full_like(codes, UNKNOWN))
        tokens = self.embed(codes) + self.time(times.unsqueeze(-1))
        return self.dropout(self.norm(tokens)), mask.bool()


class CodeSequenceKind(LongTableKind):
    """The ``codes`` kind: a long table ``id, time, code``."""

    name = KIND
    suffix = ".csv"
    preprocessor = CodePreprocessor
    inputs: ClassVar[Mapping[str, str]] = {
        "codes": "(n, L) int64: 0 padding, 1 outside the vocabulary, 2+ vocabulary codes",
        "times": "(n, L) float32: years before the patient's last code",
        "mask": "(n, L) float32: 1 for real codes",
    }

    def read(self, path: Path, name: str) -> ModalityData:
        file = str(path)
        if not path.is_file():
            raise SiteDataError(file, "file not found")
        if not path.name.lower().endswith((".csv", ".csv.gz")):
            raise SiteDataError(file, "expected a .csv or .csv.gz file of id, time, code")
        try:
            frame = pd.read_csv(path, dtype={"id": str, "code": str})
        except pd.errors.EmptyDataError:
            raise SiteDataError(file, "file is empty") from None
        except Exception as error:
            raise SiteDataError(file, f"cannot be read ({type(error).__name__}: {error})") from error
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise SiteDataError(file, f"columns {missing} missing (columns: {list(frame.columns)})")
        if frame.empty:
            raise SiteDataError(file, "file has no data rows")
        rows = np.arange(1, len(frame) + 1)
        for column in ("id", "code"):
            blank = (frame[column].isna() | (frame[column].astype(str).str.strip() == "")).to_numpy()
            if blank.any():
                raise SiteDataError(file, f"missing {column} values", column, rows[blank].tolist())
        time = pd.to_numeric(frame["time"], errors="coerce")
        bad = (time.isna() | ~np.isfinite(time.fillna(0.0))).to_numpy()
        if bad.any():
            raise SiteDataError(file, "time must be a number (days since baseline)", "time", rows[bad].tolist())
        table = pd.DataFrame(
            {"id": frame["id"].astype(str), "time": time.astype(float), "code": frame["code"].str.strip()}
        )
        return ModalityData(name, KIND, file, table=table)

    def write(self, data: ModalityData, path: Path) -> None:
        assert data.table is not None
        data.table.loc[:, list(COLUMNS)].to_csv(path, index=False)

    def reference_encoder(self, tensors: Mapping[str, torch.Tensor], width: int, dropout: float) -> tuple[str, dict]:
        return "code-sequence", {"width": width, "dropout": dropout}

    def synthesize(
        self, spec: SyntheticModality, z: np.ndarray, ids: list[str], rng: np.random.Generator, source: str
    ) -> ModalityData:
        """``n_features`` codes; 1 to ``max_visits`` visits in the first year of 1-3 codes each,
        drawn from a softmax whose logits depend on the patient's latent factors."""
        weights = 1.5 * rng.normal(size=(spec.n_features, z.shape[1]))
        names = np.array([f"{spec.name.upper()}{j:03d}" for j in range(spec.n_features)])
        rows = []
        for i, pid in enumerate(ids):
            logits = weights @ z[i]
            p = np.exp(logits - logits.max())
            p /= p.sum()
            for day in np.sort(rng.uniform(0.0, 365.0, size=int(rng.integers(1, spec.max_visits + 1)))):
                for code in rng.choice(names, size=int(rng.integers(1, 4)), p=p):
                    rows.append((pid, float(day), str(code)))
        return ModalityData(spec.name, KIND, source, table=pd.DataFrame(rows, columns=list(COLUMNS)))
