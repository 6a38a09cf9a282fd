"""``fedlego check``: every problem of a site folder at once, and the warnings that do not stop it.

Each file is read on its own, so one bad file does not hide the problems of the others (the
readers in ``formats.py`` stop at the first problem of *their* file). Once every file reads, the
whole folder is checked: identifier-like columns (``identifiers.py``), the consortium schema
(``schema.py``), and warnings about what would make the site weak or silent under disclosure
control (few patients or events per role, modalities whose ids miss the labels file, columns that
are almost all missing, categories that fold into 'other').

No message holds a patient's value; ids appear only in the readers' own errors, which stay at the
site (``fedlego check`` runs at the hospital).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fedlego.common.disclosure import DEFAULT_MIN_CELL, effective_min_cell

from .errors import SiteDataError
from .formats import read_labels, read_modality
from .kinds import modality_kind
from .sitefolder import MANIFEST, SiteData, _read_manifest, identifier_problems, load_site_folder

MOSTLY_MISSING = 0.9
"""A column missing for at least this fraction of patients is reported."""
MOSTLY_UNLABELLED = 0.5
"""A modality whose ids miss the labels file at least this often is reported."""


@dataclass
class CheckReport:
    """What ``fedlego check`` found in one folder: the site as read (None when a file failed),
    the errors that stop it and the warnings that do not."""

    folder: Path
    site: SiteData | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    min_cell: int = DEFAULT_MIN_CELL
    """The disclosure threshold the folder was checked with."""

    @property
    def ok(self) -> bool:
        """Whether the site can join a run."""
        return not self.errors


def check_site_folder(path: Path, min_cell: int | None = None, schema=None) -> CheckReport:
    """Every problem of the site folder at ``path``, and warnings; ``schema`` (a
    ``ConsortiumSchema``) adds the consortium's data contract. ``min_cell`` None: the folder's own
    ``min_cell`` (site.json), else the default."""
    report = CheckReport(Path(path))
    report.warnings += _separator_warnings(Path(path))
    try:
        manifest = _read_manifest(Path(path) / MANIFEST)
    except SiteDataError as error:
        report.errors.append(str(error))
        return report
    report.min_cell = min_cell or effective_min_cell(manifest.min_cell, DEFAULT_MIN_CELL)
    readers = {"labels": lambda: read_labels(Path(path) / manifest.labels, manifest.task)}
    for name, (kind, file) in manifest.modalities.items():
        readers[name] = lambda file=file, name=name, kind=kind: read_modality(Path(path) / file, name, kind)
    for read in readers.values():
        try:
            read()
        except SiteDataError as error:
            report.errors.append(str(error) + _hint(error))
    if report.errors:
        return report
    try:
        report.site = load_site_folder(Path(path))
    except SiteDataError as error:
        report.errors.append(str(error))
        return report
    refused = identifier_problems(report.site)
    report.errors += [str(problem) for problem in refused]
    if schema is not None:
        from .schema import check_against_schema

        for problem in check_against_schema(report.site, schema):
            (report.errors if problem.severity == "error" else report.warnings).append(str(problem))
    report.warnings += site_warnings(report.site, report.min_cell, {(p.file, p.column) for p in refused})
    return report


def _hint(error: SiteDataError) -> str:
    """A likely cause of a reader's error, where the message alone does not say it."""
    if error.column == "event" and "0 or 1" in error.message:
        return " (events coded 1/2, as some exports do? recode 1 -> 0 (censored), 2 -> 1 (event))"
    return ""


def _separator_warnings(folder: Path) -> list[str]:
    """CSV files whose header has semicolons and no commas: a semicolon-separated export (often
    with decimal commas) that would be read as one column."""
    found = []
    for file in sorted(folder.glob("*.csv")):
        with file.open(encoding="utf-8", errors="replace") as handle:
            header = handle.readline()
        if ";" in header and "," not in header:
            found.append(f"{file}: looks like a semicolon-separated file (decimal commas?); save it comma-separated")
    return found


def site_warnings(
    site: SiteData, min_cell: int = DEFAULT_MIN_CELL, refused: Collection[tuple[str, str | None]] = ()
) -> list[str]:
    """What does not stop a site but weakens it or keeps its figures at home: roles or modalities
    under ``min_cell`` patients, few events, modality ids missing the labels, columns almost all
    missing or observed in too few patients, categories that fold into 'other'. ``refused``
    (file, column) pairs, already errors, get no warning."""
    return [*_role_warnings(site, min_cell), *_modality_warnings(site, min_cell, set(refused))]


def _role_warnings(site: SiteData, min_cell: int) -> list[str]:
    labels = site.dataset.labels
    warnings = []
    for role, ids in site.roles.items():
        if len(ids) < min_cell:
            warnings.append(
                f"role {role}: fewer than min-cell = {min_cell} patients; nothing computed on them leaves the site"
            )
            continue
        table = labels.table.loc[ids]
        if labels.task == "survival":
            events = int(table["event"].sum())
            if events == 0:
                warnings.append(f"role {role}: no events; no c-index can be computed on it")
            elif events < min_cell:
                warnings.append(f"role {role}: fewer than min-cell = {min_cell} events; its event count is not sent")
        else:
            counts = table["label"].value_counts()
            if len(counts) < 2:
                warnings.append(f"role {role}: a single class; no AUC can be computed on it")
            elif counts.min() < min_cell:
                warnings.append(f"role {role}: a class held by fewer than min-cell = {min_cell} patients")
    return warnings


def _modality_warnings(site: SiteData, min_cell: int, refused: set[tuple[str, str | None]]) -> list[str]:
    warnings = []
    labelled = set(site.dataset.labels.patient_ids())
    train = set(site.roles.get("train", []))
    for name, data in sorted(site.dataset.modalities.items()):
        ids = data.patient_ids()
        unlabelled = sum(i not in labelled for i in ids)
        if unlabelled >= MOSTLY_UNLABELLED * len(ids):
            warnings.append(
                f"{data.source}: {unlabelled} of {len(ids)} patient ids are not in the labels file (another id scheme?)"
            )
        held = [i for i in ids if i in train]
        if len(held) < min_cell:
            warnings.append(
                f"{data.source}: modality '{name}': fewer than min-cell = {min_cell} training patients; "
                "its block will not be trained"
            )
        table = modality_kind(data.kind).feature_table(data)
        if table is not None:
            kept = [c for c in table.columns if (data.source, c) not in refused]
            warnings += _column_warnings(data.source, table.loc[held, kept], min_cell)
    return warnings


def _column_warnings(source: str, table: pd.DataFrame, min_cell: int) -> list[str]:
    warnings = []
    for column in table.columns:
        values = table[column]
        if len(values) and values.isna().mean() >= MOSTLY_MISSING:
            warnings.append(f"{source}: column '{column}': missing for {values.isna().mean():.0%} of training patients")
        if pd.api.types.is_numeric_dtype(values):
            if values.notna().sum() < min_cell:
                warnings.append(
                    f"{source}: column '{column}': fewer than min-cell = {min_cell} training patients hold a value; "
                    "not used"
                )
            continue
        rare = int((values.dropna().map(str).value_counts() < min_cell).sum())
        if rare:
            warnings.append(
                f"{source}: column '{column}': categories held by fewer than min-cell = {min_cell} training "
                f"patients fold into 'other' ({rare} of them)"
            )
    return warnings


__all__ = ["CheckReport", "check_site_folder", "site_warnings"]
