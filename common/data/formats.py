"""Readers for the documented site file formats, with validation (see ``docs/data-formats.md``).

Every problem found in a file raises :class:`SiteDataError` naming the file and, where relevant,
the column and the offending rows (patient ids, or 1-based data row numbers for long tables).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .dataset import TASK_KINDS, Labels, ModalityData, MultimodalDataset
from .errors import SiteDataError

NUMERIC_FRACTION = 0.9
"""A text column is numeric (not categorical) when at least this fraction of its values parse."""
TIMESERIES_COLUMNS = ("id", "time", "variable", "value")
LABEL_COLUMNS = {"survival": ("time", "event"), "binary": ("label",), "multiclass": ("label",)}
TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


# --------------------------------------------------------------------------- table helpers


def _read_table(path: Path, id_column: str) -> pd.DataFrame:
    """A CSV/Parquet file as a DataFrame whose id column holds non-missing strings."""
    file = str(path)
    if not path.is_file():
        raise SiteDataError(file, "file not found")
    if not path.name.lower().endswith(TABLE_SUFFIXES):
        raise SiteDataError(file, f"unsupported file type (expected one of {TABLE_SUFFIXES})")
    try:
        if path.name.lower().endswith((".parquet", ".pq")):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype={id_column: str})
    except pd.errors.EmptyDataError:
        raise SiteDataError(file, "file is empty") from None
    except Exception as exc:
        raise SiteDataError(file, f"cannot be read ({type(exc).__name__}: {exc})") from exc
    if len(df) == 0:
        raise SiteDataError(file, "file has no data rows")
    df.columns = [str(c) for c in df.columns]
    if id_column not in df.columns:
        raise SiteDataError(file, f"id column missing (columns: {list(df.columns)})", id_column)
    ids = df[id_column]
    missing = (ids.isna() | (ids.astype(str).str.strip() == "")).to_numpy()
    if missing.any():
        rows = (np.flatnonzero(missing) + 1).tolist()
        raise SiteDataError(file, "missing patient ids", id_column, rows)
    df[id_column] = ids.astype(str)
    return df


def _index_by_id(df: pd.DataFrame, file: str, id_column: str) -> pd.DataFrame:
    """The table indexed by its (unique) id column, index named ``id``."""
    ids = df[id_column]
    duplicates = sorted(ids[ids.duplicated()].unique())
    if duplicates:
        raise SiteDataError(file, "duplicate patient ids", id_column, duplicates)
    table = df.set_index(id_column)
    table.index.name = "id"
    return table


def _require_columns(df: pd.DataFrame, file: str, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        found = list(df.columns)
        raise SiteDataError(file, f"required column missing (columns: {found})", ", ".join(missing))


def _to_numeric(values: pd.Series, file: str, column: str, rows: np.ndarray, required: bool = False) -> pd.Series:
    """``values`` as floats; non-numeric or infinite values (and, if required, missing) raise."""
    numbers = values if pd.api.types.is_numeric_dtype(values) else pd.to_numeric(values, errors="coerce")
    numbers = numbers.astype(float)
    bad = (numbers.isna() & values.notna()).to_numpy()
    if bad.any():
        examples = ", ".join(repr(v) for v in values[bad].unique()[:3])
        raise SiteDataError(file, f"non-numeric values ({examples})", column, rows[bad].tolist())
    infinite = np.isinf(numbers.to_numpy())
    if infinite.any():
        raise SiteDataError(file, "non-finite values (inf)", column, rows[infinite].tolist())
    if required and numbers.isna().any():
        raise SiteDataError(file, "missing values", column, rows[numbers.isna().to_numpy()].tolist())
    return numbers


def _feature_column(values: pd.Series, file: str, column: str, ids: np.ndarray) -> pd.Series:
    """A tabular feature: floats if numeric (or mostly numeric text), else strings (categorical)."""
    if pd.api.types.is_numeric_dtype(values):
        return _to_numeric(values, file, column, ids)
    present = values.notna()
    parsed = pd.to_numeric(values, errors="coerce")[present]
    if present.any() and parsed.notna().mean() >= NUMERIC_FRACTION:
        return _to_numeric(values, file, column, ids)
    return values.map(str, na_action="ignore").astype(object)


# --------------------------------------------------------------------------- modality readers


def read_tabular(path: str | Path, name: str, id_column: str = "id") -> ModalityData:
    """Read a wide table (one row per patient) from CSV, CSV.gz or Parquet.

    Numeric columns become floats; text columns are categorical unless at least 90% of their
    values parse as numbers, in which case the others are reported as errors.
    """
    path = Path(path)
    file = str(path)
    table = _index_by_id(_read_table(path, id_column), file, id_column)
    if table.shape[1] == 0:
        raise SiteDataError(file, f"no feature columns besides the id column '{id_column}'")
    ids = table.index.to_numpy()
    columns = {c: _feature_column(table[c], file, c, ids) for c in table.columns}
    return ModalityData(name, "tabular", file, table=pd.DataFrame(columns, index=table.index))


def read_timeseries(path: str | Path, name: str) -> ModalityData:
    """Read a long table with columns ``id, time, variable, value`` (CSV, CSV.gz or Parquet).

    ``time`` must be numeric and present (e.g. days since baseline); ``value`` must be numeric,
    and rows whose value is missing are dropped.
    """
    path = Path(path)
    file = str(path)
    df = _read_table(path, "id")
    _require_columns(df, file, TIMESERIES_COLUMNS)
    rows = np.arange(1, len(df) + 1)
    time = _to_numeric(df["time"], file, "time", rows, required=True)
    value = _to_numeric(df["value"], file, "value", rows)
    variable = df["variable"]
    if variable.isna().any():
        missing = variable.isna().to_numpy()
        raise SiteDataError(file, "missing variable names", "variable", rows[missing].tolist())
    table = pd.DataFrame({"id": df["id"], "time": time, "variable": variable.map(str), "value": value})
    table = table[value.notna()].reset_index(drop=True)
    if table.empty:
        raise SiteDataError(file, "no observed values (every value is missing)", "value")
    return ModalityData(name, "timeseries", file, table=table)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except Exception as exc:
        raise SiteDataError(str(path), f"cannot be read ({type(exc).__name__}: {exc})") from exc


def _check_source(path: Path, suffix: str) -> None:
    if not path.exists():
        raise SiteDataError(str(path), "file or folder not found")
    if not path.is_dir() and path.suffix.lower() != suffix:
        raise SiteDataError(str(path), f"expected a folder or a {suffix} file")


def _check_same_shape(arrays: dict[str, np.ndarray], file: str, what: str) -> None:
    """All arrays share the most common shape; the ids of the others are reported."""
    shapes = Counter(a.shape for a in arrays.values())
    common = shapes.most_common(1)[0][0]
    odd = sorted(i for i, a in arrays.items() if a.shape != common)
    if odd:
        found = sorted({arrays[i].shape for i in odd})
        raise SiteDataError(file, f"{what} shapes differ: most are {common}, also {found}", rows=odd)


def _read_image_file(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8).copy()


def _images_from_folder(folder: Path) -> tuple[dict[str, np.ndarray], str]:
    index_path = folder / "index.csv"
    file = str(index_path)
    table = _index_by_id(_read_table(index_path, "id"), file, "id")
    _require_columns(table, file, ("path",))
    if table["path"].isna().any():
        missing = table.index[table["path"].isna().to_numpy()].tolist()
        raise SiteDataError(file, "missing image paths", "path", missing)
    arrays: dict[str, np.ndarray] = {}
    not_found: list[str] = []
    unreadable: list[str] = []
    for patient, relative in table["path"].items():
        image_path = folder / str(relative)
        if not image_path.is_file():
            not_found.append(patient)
            continue
        try:
            arrays[patient] = _read_image_file(image_path)
        except OSError:
            unreadable.append(patient)
    if not_found:
        raise SiteDataError(file, "image files not found", "path", not_found)
    if unreadable:
        raise SiteDataError(file, "image files cannot be read as PNG/JPEG", "path", unreadable)
    return arrays, file


def _images_from_npz(path: Path) -> dict[str, np.ndarray]:
    file = str(path)
    contents = _load_npz(path)
    for key in ("ids", "images"):
        if key not in contents:
            raise SiteDataError(file, f"array '{key}' missing (arrays: {sorted(contents)})")
    ids, images = contents["ids"].astype(str), contents["images"]
    if ids.ndim != 1 or images.ndim not in (3, 4) or len(ids) != len(images):
        raise SiteDataError(
            file,
            f"expected 'ids' (N,) and 'images' (N,H,W) or (N,H,W,C), got {ids.shape} and {images.shape}",
        )
    if images.dtype != np.uint8:
        raise SiteDataError(file, f"'images' must be uint8 (0-255), got {images.dtype}")
    duplicates = sorted(i for i, n in Counter(ids.tolist()).items() if n > 1)
    if duplicates:
        raise SiteDataError(file, "duplicate patient ids in 'ids'", rows=duplicates)
    return {patient: images[k] for k, patient in enumerate(ids.tolist())}


def read_images(path: str | Path, name: str) -> ModalityData:
    """Read images: a folder with ``index.csv`` (``id, path``) and PNG/JPEG files, or an ``.npz``
    file with arrays ``ids`` and ``images`` (uint8). All images must share one shape."""
    path = Path(path)
    _check_source(path, ".npz")
    if path.is_dir():
        arrays, file = _images_from_folder(path)
    else:
        arrays, file = _images_from_npz(path), str(path)
    _check_same_shape(arrays, file, "image")
    return ModalityData(name, "image", str(path), arrays=arrays)


def _bags_from_folder(folder: Path) -> dict[str, np.ndarray]:
    files = sorted(folder.glob("*.npy"))
    if not files:
        raise SiteDataError(str(folder), "folder holds no <id>.npy files")
    arrays: dict[str, np.ndarray] = {}
    unreadable: list[str] = []
    for npy in files:
        try:
            arrays[npy.stem] = np.load(npy, allow_pickle=False)
        except (OSError, ValueError):
            unreadable.append(npy.stem)
    if unreadable:
        raise SiteDataError(str(folder), "unreadable .npy files", rows=unreadable)
    return arrays


def read_bags(path: str | Path, name: str) -> ModalityData:
    """Read bags of instance features: an ``.npz`` file with one (instances, F) array per patient
    id, or a folder of ``<id>.npy`` files. Every bag needs >= 1 instance; all bags share F."""
    path = Path(path)
    file = str(path)
    _check_source(path, ".npz")
    raw = _bags_from_folder(path) if path.is_dir() else _load_npz(path)
    if not raw:
        raise SiteDataError(file, "no bags")
    wrong = sorted(i for i, a in raw.items() if a.ndim != 2 or a.shape[0] == 0)
    if wrong:
        raise SiteDataError(file, "bags must be non-empty 2-D (instances, features) arrays", rows=wrong)
    not_numeric = sorted(i for i, a in raw.items() if not np.issubdtype(a.dtype, np.number))
    if not_numeric:
        raise SiteDataError(file, "bags must hold numbers", rows=not_numeric)
    arrays = {i: a.astype(np.float32) for i, a in raw.items()}
    infinite = sorted(i for i, a in arrays.items() if not np.isfinite(a).all())
    if infinite:
        raise SiteDataError(file, "non-finite values (nan/inf) in bags", rows=infinite)
    widths = Counter(a.shape[1] for a in arrays.values())
    width = widths.most_common(1)[0][0]
    odd = sorted(i for i, a in arrays.items() if a.shape[1] != width)
    if odd:
        raise SiteDataError(file, f"bags differ in feature count F: most have {width}", rows=odd)
    return ModalityData(name, "bags", file, arrays=arrays)


def read_modality(path: str | Path, name: str, kind: str) -> ModalityData:
    """Read one modality with its kind's reader (``common.data.kinds``; plugins included)."""
    from .kinds import modality_kind  # the kinds use this module's readers: imported on use

    return modality_kind(kind).read(Path(path), name)


# --------------------------------------------------------------------------- labels, dataset


def read_labels(path: str | Path, task: str, id_column: str = "id") -> Labels:
    """Read outcomes: ``time, event`` for survival (time > 0, event 0/1), ``label`` for binary
    (0/1) or multiclass (integers >= 0). Missing outcomes are errors."""
    if task not in LABEL_COLUMNS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASK_KINDS}")
    path = Path(path)
    file = str(path)
    table = _index_by_id(_read_table(path, id_column), file, id_column)
    _require_columns(table, file, LABEL_COLUMNS[task])
    ids = table.index.to_numpy()
    values = {c: _to_numeric(table[c], file, c, ids, required=True) for c in LABEL_COLUMNS[task]}

    def check(column: str, bad: pd.Series, rule: str) -> None:
        if bad.any():
            raise SiteDataError(file, rule, column, ids[bad.to_numpy()].tolist())

    if task == "survival":
        check("time", values["time"] <= 0, "survival times must be > 0")
        check("event", ~values["event"].isin([0, 1]), "event must be 0 or 1")
        out = {"time": values["time"], "event": values["event"].astype(int)}
    else:
        label = values["label"]
        if task == "binary":
            check("label", ~label.isin([0, 1]), "binary labels must be 0 or 1")
        else:
            check("label", (label < 0) | (label % 1 != 0), "multiclass labels must be integers >= 0")
        out = {"label": label.astype(int)}
    return Labels(task, pd.DataFrame(out, index=table.index), file)


def validate_dataset(dataset: MultimodalDataset) -> None:
    """Cross-file checks: every modality must share at least one patient with the labels.

    Labelled patients without any modality, and modality patients without labels, are allowed
    (they are simply not used).
    """
    labels = dataset.labels
    if not dataset.modalities:
        raise SiteDataError(labels.source, "the dataset has no modality")
    labelled = labels.patient_ids()
    for modality in dataset.modalities.values():
        ids = modality.patient_ids()
        if not set(labelled).intersection(ids):
            raise SiteDataError(
                modality.source,
                f"modality '{modality.name}' shares no patient id with the labels file "
                f"{labels.source} (ids here: {ids[:3]}, in the labels: {labelled[:3]})",
            )
