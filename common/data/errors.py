"""The one error type raised when a site's data files are wrong."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

MAX_ROWS_SHOWN = 10


class SiteDataError(ValueError):
    """A problem in a site's data, naming the file, and where relevant the column and rows.

    ``rows`` holds patient ids (tables with one row per patient, images, bags) or 1-based data
    row numbers, header not counted (long-format time series, missing ids).
    ``str()`` reads like ``clinical.csv: column 'age': non-numeric values ('abc') in rows [3, 7]``.
    """

    def __init__(self, file: str, message: str, column: str | None = None, rows: Iterable[object] = ()) -> None:
        self.file = str(file)
        self.column = column
        self.rows = list(rows)
        self.message = message
        super().__init__(str(self))

    def public_reason(self) -> str:
        """What may leave the site about this error: the file's name and the column, never the rows
        (patient ids) or the message (which may quote values); the details stay in the site's log."""
        where = Path(self.file).name + (f", column '{self.column}'" if self.column is not None else "")
        return (
            f"the site's data failed a check ({where}); the site's log and `fedlego check --schema` "
            "there show the details"
        )

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (SiteDataError, (self.file, self.message, self.column, self.rows))

    def __str__(self) -> str:
        text = f"{self.file}: "
        if self.column is not None:
            text += f"column '{self.column}': "
        text += self.message
        if self.rows:
            shown = self.rows[:MAX_ROWS_SHOWN]
            more = f" ... ({len(self.rows)} in all)" if len(self.rows) > MAX_ROWS_SHOWN else ""
            text += f" in rows {shown}{more}"
        return text
