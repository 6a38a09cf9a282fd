"""A hospital's *site folder*: the data a Flower SuperNode reads, with a ``site.json`` manifest.

Layout (see ``docs/data-formats.md`` for the file formats)::

    site.json      {"name": ..., "task": "survival" | "binary" | "multiclass",
                    "labels": "labels.csv",
                    "modalities": {"<name>": {"kind": "tabular" | "timeseries" | "image" | "bags" | <a plugin kind>,
                                              "path": "<file or folder, relative to the site folder>"}}}
    labels.csv     id + time,event (survival) or id + label
    <name>.csv     tabular (wide, id first) or timeseries (long: id,time,variable,value)
    <name>.npz     image (arrays ids, images uint8) or bags (one array per patient id)
    split.csv      optional: id,role with role in train/validation/test

Without ``split.csv`` every patient gets a role from :func:`hash_roles`. Hand-written folders may
point ``path`` at any file or folder its kind's reader accepts (Parquet, image folders; see
``common.data.kinds``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedlego.common.encoders import known_encoder, unknown_encoder_message
from fedlego.common.time_units import TIME_UNITS

from .dataset import TASK_KINDS, Labels, ModalityData, MultimodalDataset
from .errors import SiteDataError
from .formats import LABEL_COLUMNS, _read_table, _require_columns, read_labels, read_modality, validate_dataset
from .identifiers import identifier_columns, identifier_error
from .kinds import known_kind, modality_kind, unknown_kind_message
from .preprocess import make_preprocessor
from .scenarios import FoldSplit, SiteSpec, site_dataset, site_split

MANIFEST = "site.json"
LABELS_FILE = "labels.csv"
SPLIT_FILE = "split.csv"
ROLES: tuple[str, ...] = ("train", "validation", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)
DEFAULT_ROLE_SALT = "fedlego-roles-v1"
"""Federation-wide salt of :func:`hash_roles`; every site of one federation must use the same one."""
RESERVED_NAMES = frozenset({"labels", "split"})
"""Modality names whose files would clash with ``labels.csv`` / ``split.csv``."""


@dataclass
class SiteData:
    """A site folder as read: its name, its data, the patient ids in each role, and where it
    came from (the folder and the SHA-256 of its files, see :func:`folder_digest`)."""

    name: str
    dataset: MultimodalDataset
    roles: dict[str, list[str]]
    path: Path | None = None
    sha256: str = ""
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per modality, the encoder ``site.json`` names (``{"name", "kwargs"}``)."""
    preprocessing: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per modality, the preprocessing options ``site.json`` sets."""
    min_cell: int | None = None
    """The site's own disclosure floor (``site.json``'s ``min_cell``; None: the run's applies)."""
    declared: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    """Per modality, the columns ``site.json`` drops or declares not to be identifiers."""

    def source(self) -> dict[str, str]:
        """How results name this data: the site folder's name and content hash (not its local
        path, which stays at the hospital)."""
        return {"source": "site-folder", "name": self.name, "sha256": self.sha256}

    def summary(self) -> dict[str, Any]:
        """Patients per modality and role, labelled patients without any modality, and patients
        with a role but no label-usable data (what ``fedlego check`` prints)."""
        held = {m: set(d.patient_ids()) for m, d in self.dataset.modalities.items()}
        return {
            "name": self.name,
            "task": self.dataset.labels.task,
            "modalities": {
                m: {
                    "kind": self.dataset.modalities[m].kind,
                    **{r: len(held[m] & set(ids)) for r, ids in self.roles.items()},
                }
                for m in sorted(held)
            },
            "roles": {r: len(ids) for r, ids in self.roles.items()},
            "labelled_without_data": sorted(set(self.dataset.labels.patient_ids()) - set(self.dataset.patient_ids())),
        }


def folder_digest(path: Path) -> str:
    """SHA-256 over a folder's files (relative path and bytes, in sorted order): names the exact
    data a run used without revealing it."""
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(root)).encode() + b"\0")
        with file.open("rb") as handle:
            for chunk in iter(lambda handle=handle: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


# --------------------------------------------------------------------------- roles


def _unit_interval(salt: str, patient: str) -> float:
    """SHA-256 of ``salt:patient`` mapped to [0, 1) (first 8 bytes / 2**64)."""
    digest = hashlib.sha256(f"{salt}:{patient}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_roles(
    ids: list[str], salt: str, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> dict[str, list[str]]:
    """Deterministic patient-level train/validation/test roles, with no coordination between sites.

    A patient's role depends only on ``salt`` and its own id: SHA-256 of ``f"{salt}:{id}"`` is
    mapped to ``u`` in [0, 1), and ``u < fractions[0]`` is train, ``u < fractions[0] + fractions[1]``
    validation, otherwise test. Hence the same patient gets the same role at every hospital that
    holds any of its data (no test patient is trained on anywhere), whatever other ids a site has
    and in whatever order, and without exchanging patient ids. Fractions hold in expectation only
    (no stratification). Use the same ``salt`` across a federation; another salt gives another
    split. Each role's ids are sorted.
    """
    if len(fractions) != 3 or min(fractions) <= 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    cuts = np.cumsum(fractions[:2])
    roles: dict[str, list[str]] = {role: [] for role in ROLES}
    for patient in sorted(set(map(str, ids))):
        index = int(np.searchsorted(cuts, _unit_interval(salt, patient), side="right"))
        roles[ROLES[index]].append(patient)
    return roles


# --------------------------------------------------------------------------- writing


def _write_labels(labels: Labels, path: Path) -> None:
    table = labels.table.loc[:, list(LABEL_COLUMNS[labels.task])]
    table.to_csv(path, index_label="id")


def _write_split(roles: dict[str, list[str]], path: Path) -> None:
    rows = [(patient, role) for role in ROLES for patient in roles[role]]
    pd.DataFrame(rows, columns=["id", "role"]).to_csv(path, index=False)


def write_site_folder(
    dataset: MultimodalDataset,
    site: SiteSpec,
    split: FoldSplit | None,
    path: Path,
    preprocessing: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write one site's data (withheld entries removed) as a site folder at ``path``; return ``path``.
    ``preprocessing`` options per modality go into ``site.json``.

    Writes ``labels.csv``, one file per modality, ``site.json`` and, with ``split``, ``split.csv``
    holding the site's patients in each role (``site_split``); without ``split`` a stale
    ``split.csv`` is removed so that roles come from :func:`hash_roles`. A modality none of the
    site's patients holds is left out (the readers reject empty files).
    """
    reserved = RESERVED_NAMES.intersection(site.modalities)
    if reserved:
        raise ValueError(f"modality names {sorted(reserved)} clash with the site folder's own files")
    local = site_dataset(dataset, site)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _write_labels(local.labels, path / LABELS_FILE)
    entries: dict[str, dict[str, str]] = {}
    for name, data in local.modalities.items():
        if not data.patient_ids():
            continue
        kind = modality_kind(data.kind)
        file = f"{name}{kind.suffix}"
        kind.write(data, path / file)
        entries[name] = {"kind": data.kind, "path": file}
        if (preprocessing or {}).get(name):
            entries[name]["preprocessing"] = dict(preprocessing[name])
    manifest = {"name": site.name, "task": local.labels.task, "labels": LABELS_FILE, "modalities": entries}
    if local.labels.time_unit is not None:
        manifest["time_unit"] = local.labels.time_unit
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if split is None:
        (path / SPLIT_FILE).unlink(missing_ok=True)
    else:
        _write_split(site_split(site, dataset, split), path / SPLIT_FILE)
    return path


# --------------------------------------------------------------------------- reading


@dataclass
class _Manifest:
    name: str
    task: str
    labels: str
    modalities: dict[str, tuple[str, str]]
    """Modality name -> (kind, path)."""
    encoders: dict[str, dict[str, Any]]
    """Modality name -> {"name", "kwargs"} for modalities that name an encoder."""
    preprocessing: dict[str, dict[str, Any]]
    """Modality name -> preprocessing options (``data.preprocess``) for modalities that set them."""
    columns: dict[str, dict[str, list[str]]]
    """Modality name -> ``{"drop": [...], "not_identifiers": [...]}`` column declarations."""
    min_cell: int | None
    """The site's own disclosure floor, if ``site.json`` sets one."""
    time_unit: str | None
    """The unit of the survival times in the labels file, if ``site.json`` says."""


def _text_field(raw: dict[str, Any], key: str, file: str, where: str = "") -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise SiteDataError(file, f"field '{where}{key}' must be a non-empty string, got {value!r}")
    return value


def _modality_entry(name: str, entry: Any, file: str) -> tuple[str, str]:
    where = f"modalities.{name}."
    if not isinstance(entry, dict):
        raise SiteDataError(file, f"field 'modalities.{name}' must be an object with 'kind' and 'path'")
    kind = _text_field(entry, "kind", file, where)
    if not known_kind(kind):
        raise SiteDataError(file, f"field '{where}kind': {unknown_kind_message(kind)}")
    return kind, _text_field(entry, "path", file, where)


def _load_json(path: Path) -> dict[str, Any]:
    file = str(path)
    if not path.is_file():
        raise SiteDataError(file, "file not found")
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SiteDataError(file, f"not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise SiteDataError(file, f"must hold a JSON object, got {type(raw).__name__}")
    return raw


def _read_manifest(path: Path) -> _Manifest:
    """``site.json``, validated field by field."""
    file = str(path)
    raw = _load_json(path)
    name = _text_field(raw, "name", file)
    task = _text_field(raw, "task", file)
    if task not in TASK_KINDS:
        raise SiteDataError(file, f"field 'task': unknown task {task!r} (valid: {list(TASK_KINDS)})")
    labels = _text_field(raw, "labels", file)
    entries = raw.get("modalities") if isinstance(raw.get("modalities"), dict) else {}
    encoders = {
        str(m): _encoder_entry(str(m), e["encoder"], file)
        for m, e in entries.items()
        if isinstance(e, dict) and "encoder" in e
    }
    modalities = _modality_entries(raw, file)
    preprocessing = {
        str(m): _preprocessing_entry(str(m), modalities[str(m)][0], e["preprocessing"], file)
        for m, e in entries.items()
        if isinstance(e, dict) and "preprocessing" in e
    }
    columns = {str(m): _column_declarations(str(m), e, file) for m, e in entries.items() if isinstance(e, dict)}
    return _Manifest(
        name, task, labels, modalities, encoders, preprocessing, columns, _min_cell(raw, file), _time_unit(raw, file)
    )


COLUMN_DECLARATIONS = ("drop", "not_identifiers")
"""Per-modality lists of column names in site.json: ``drop`` removes columns when the file is read
(identifiers, free text, anything that must not be fitted); ``not_identifiers`` keeps columns the
identifier check would refuse (the site's data manager vouches for them)."""


def _column_declarations(modality: str, entry: dict[str, Any], file: str) -> dict[str, list[str]]:
    declared = {}
    for key in COLUMN_DECLARATIONS:
        value = entry.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise SiteDataError(file, f"field 'modalities.{modality}.{key}' must be a list of column names")
        declared[key] = list(value)
    return declared


def _min_cell(raw: dict[str, Any], file: str) -> int | None:
    """site.json's optional ``min_cell``: a positive integer."""
    value = raw.get("min_cell")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SiteDataError(file, f"field 'min_cell' must be an integer of at least 1, got {value!r}")
    return value


def _time_unit(raw: dict[str, Any], file: str) -> str | None:
    """site.json's optional ``time_unit`` (survival): one of ``TIME_UNITS``."""
    value = raw.get("time_unit")
    if value is not None and value not in TIME_UNITS:
        raise SiteDataError(file, f"field 'time_unit' must be one of {list(TIME_UNITS)}, got {value!r}")
    return value


def _preprocessing_entry(modality: str, kind: str, options: Any, file: str) -> dict[str, Any]:
    """``modalities.<m>.preprocessing``: keyword options of the kind's preprocessor, checked by
    building one."""
    where = f"modalities.{modality}.preprocessing"
    if not isinstance(options, dict):
        raise SiteDataError(file, f"field '{where}' must be an object, got {options!r}")
    try:
        make_preprocessor(kind, **options)
    except (TypeError, ValueError) as error:
        raise SiteDataError(file, f"field '{where}': {error}") from error
    return dict(options)


ENCODER_KEYS = ("name", "kwargs", "weights", "frozen", "ship_weights")
"""Fields of ``modalities.<m>.encoder`` in site.json."""


def _encoder_entry(modality: str, entry: Any, file: str) -> dict[str, Any]:
    """``modalities.<m>.encoder``: ``{"name": <registered or plugin encoder>, "kwargs": {...},
    "weights": <pre-trained weights file, relative>, "frozen": bool, "ship_weights": bool}``."""
    where = f"modalities.{modality}.encoder"
    if not isinstance(entry, dict):
        raise SiteDataError(file, f"field '{where}' must be an object with 'name' and optional 'kwargs'")
    name = _text_field(entry, "name", file, where + ".")
    kwargs = entry.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise SiteDataError(file, f"field '{where}.kwargs' must be an object, got {kwargs!r}")
    if not known_encoder(name):
        raise SiteDataError(file, f"field '{where}.name': {unknown_encoder_message(name)}")
    unknown = sorted(set(entry) - set(ENCODER_KEYS))
    if unknown:
        raise SiteDataError(file, f"field '{where}': unknown keys {unknown} (valid: {', '.join(ENCODER_KEYS)})")
    choice: dict[str, Any] = {"name": name, "kwargs": kwargs}
    for flag in ("frozen", "ship_weights"):
        if flag in entry:
            if not isinstance(entry[flag], bool):
                raise SiteDataError(file, f"field '{where}.{flag}' must be true or false, got {entry[flag]!r}")
            choice[flag] = entry[flag]
    if "weights" in entry:
        weights = Path(file).parent / _text_field(entry, "weights", file, where + ".")
        if not weights.is_file():
            raise SiteDataError(file, f"field '{where}.weights': file {weights} not found")
        choice["weights"] = str(weights.resolve())
    return choice


def _modality_entries(raw: dict[str, Any], file: str) -> dict[str, tuple[str, str]]:
    """The manifest's ``modalities`` field: name -> (kind, path)."""
    entries = raw.get("modalities")
    if not isinstance(entries, dict) or not entries:
        raise SiteDataError(file, f"field 'modalities' must be a non-empty object, got {entries!r}")
    return {str(n): _modality_entry(str(n), e, file) for n, e in entries.items()}


def _read_split(path: Path, dataset: MultimodalDataset) -> dict[str, list[str]]:
    """Roles from ``split.csv``, in file order, restricted to patients the site can use."""
    file = str(path)
    table = _read_table(path, "id")
    _require_columns(table, file, ("role",))
    duplicates = sorted(table["id"][table["id"].duplicated()].unique())
    if duplicates:
        raise SiteDataError(file, "duplicate patient ids", "id", duplicates)
    bad = ~table["role"].isin(ROLES)
    if bad.any():
        raise SiteDataError(file, f"role must be one of {list(ROLES)}", "role", table["id"][bad].tolist())
    labelled = set(dataset.labels.patient_ids())
    unknown = [i for i in table["id"] if i not in labelled]
    if unknown:
        raise SiteDataError(file, f"patient ids not in the labels file {dataset.labels.source}", "id", unknown)
    usable = set(dataset.patient_ids())
    return {role: [i for i in table["id"][table["role"] == role] if i in usable] for role in ROLES}


def read_site_folder(
    path: Path, salt: str = DEFAULT_ROLE_SALT, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> SiteData:
    """Read and validate a site folder; raise :class:`SiteDataError` naming the file at fault.

    Roles come from ``split.csv`` when present (patients of the labels file only; labelled
    patients absent from it get no role, and those without any modality are dropped), otherwise
    from ``hash_roles(dataset.patient_ids(), salt, fractions)``. A column that looks like an
    identifier (``identifiers.py``) is refused before anything is fitted, unless ``site.json``
    declares it (``drop`` or ``not_identifiers``).
    """
    site = load_site_folder(path, salt, fractions)
    found = identifier_problems(site)
    if found:
        raise found[0]
    return site


def identifier_problems(site: SiteData) -> list[SiteDataError]:
    """One error per identifier-like column of the site's tables (none declared in site.json)."""
    problems = []
    for name, data in site.dataset.modalities.items():
        table = modality_kind(data.kind).feature_table(data)
        if table is None:
            continue
        for finding in identifier_columns(table, site.declared.get(name, {}).get("not_identifiers", ())):
            problems.append(identifier_error(data.source, finding))
    return problems


def _apply_drops(modality: ModalityData, drop: list[str], file: str) -> ModalityData:
    """The modality without the columns (tabular) or variables (time series) site.json drops."""
    return modality_kind(modality.kind).drop(modality, drop, file) if drop else modality


def load_site_folder(
    path: Path, salt: str = DEFAULT_ROLE_SALT, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> SiteData:
    """``read_site_folder`` without the identifier refusal (``fedlego check`` lists those with
    every other problem)."""
    path = Path(path)
    manifest = _read_manifest(path / MANIFEST)
    labels = read_labels(path / manifest.labels, manifest.task)
    labels.time_unit = manifest.time_unit
    modalities = {
        name: _apply_drops(read_modality(path / file, name, kind), manifest.columns[name]["drop"], str(path / MANIFEST))
        for name, (kind, file) in manifest.modalities.items()
    }
    dataset = MultimodalDataset(manifest.name, labels, modalities)
    validate_dataset(dataset)
    split_path = path / SPLIT_FILE
    if split_path.exists():
        roles = _read_split(split_path, dataset)
    else:
        roles = hash_roles(dataset.patient_ids(), salt, fractions)
    return SiteData(
        manifest.name,
        dataset,
        roles,
        path.resolve(),
        folder_digest(path),
        manifest.encoders,
        manifest.preprocessing,
        manifest.min_cell,
        manifest.columns,
    )


def folder_preprocessing(path: Path) -> dict[str, dict[str, Any]]:
    """The preprocessing options a site folder's ``site.json`` sets, per modality (no data read)."""
    return _read_manifest(Path(path) / MANIFEST).preprocessing


def read_site_modalities(path: Path, names: Collection[str] | None = None) -> dict[str, ModalityData]:
    """Read and validate the modalities of a site folder without labels or roles (for prediction).

    Only ``site.json``'s ``modalities`` field is used: ``name``, ``task`` and ``labels`` may be
    absent, and no labels file is read. With ``names``, only those of them the folder holds are
    read (others in the folder are left alone); an error lists the folder's modalities when it
    holds none of them. Raises :class:`SiteDataError` naming the file at fault.
    """
    path = Path(path)
    if not path.is_dir():
        raise SiteDataError(str(path), "site folder not found")
    file = str(path / MANIFEST)
    entries = _modality_entries(_load_json(path / MANIFEST), file)
    wanted = [n for n in entries if names is None or n in names]
    if not wanted:
        raise SiteDataError(file, f"holds none of the modalities {sorted(names or [])} (it lists {sorted(entries)})")
    return {name: read_modality(path / entries[name][1], name, entries[name][0]) for name in wanted}
