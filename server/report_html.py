"""HTML and figure primitives of the run report (``server/report.py``): escaped text, numbers,
tables, sections and matplotlib figures embedded as base64 PNGs."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def escaped(value: Any) -> str:
    """Any value as escaped HTML text."""
    return html.escape(str(value))


def number(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; ``n/a`` for a missing or non-finite one."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def size(n_bytes: float) -> str:
    """A byte count in B, kB, MB or GB (powers of 1000)."""
    for unit in ("B", "kB", "MB"):
        if abs(n_bytes) < 1000:
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.2f} GB"


def plain(text: str) -> str:
    """A label for matplotlib, with ``$`` escaped so names are never read as mathtext."""
    return str(text).replace("$", r"\$")


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    """An HTML table; every cell is escaped, columns in ``numeric`` are right-aligned."""
    head = "".join(f"<th>{escaped(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{escaped(c)}</td>' if i in numeric else f"<td>{escaped(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def section(title: str, *parts: str) -> str:
    return f"<section><h2>{escaped(title)}</h2>{''.join(parts)}</section>"


def note(text: str) -> str:
    return f'<p class="note">{escaped(text)}</p>'


def figure(width: float, height: float) -> Figure:
    """A matplotlib figure drawn without pyplot (no global backend state); matplotlib is imported
    only when a report is rendered, so importing this module stays cheap."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def image(drawing: Figure, alt: str) -> str:
    """The figure as an embedded PNG."""
    buffer = io.BytesIO()
    drawing.savefig(buffer, format="png", dpi=100)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<p><img alt="{escaped(alt)}" src="data:image/png;base64,{data}"></p>'
