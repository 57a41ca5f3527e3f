"""HTML pieces of the analysts' report: escaping, number formatting, tables and sections.

Input: plain values (strings, numbers, rows of cells). Output: HTML fragments as strings; a
missing or non-finite number shows as "–", a missing part as a ``<p class="empty">`` note.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np

NOT_AVAILABLE = "not available"


def esc(value: object) -> str:
    return html.escape(str(value))


def as_number(value: object) -> float | None:
    """A finite float, or None for anything missing, non-numeric or NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def fmt(value: object, digits: int = 4) -> str:
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return str(int(value))
    number = as_number(value)
    return "–" if number is None else f"{number:.{digits}f}"


def empty_note(reason: str) -> str:
    return f'<p class="empty">{esc(reason)}</p>'


def html_section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}">\n<h2>{esc(title)}</h2>\n{body}\n</section>'


def html_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], highlight: int | None = None
) -> str:
    """An HTML table; cells are formatted with ``fmt`` unless they are strings."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    lines = ["<table>", f"<thead><tr>{head}</tr></thead>" if head else "", "<tbody>"]
    for i, row in enumerate(rows):
        cells = "".join(
            f"<td>{esc(cell if isinstance(cell, str) else fmt(cell))}</td>" for cell in row
        )
        attr = ' class="published"' if i == highlight else ""
        lines.append(f"<tr{attr}>{cells}</tr>")
    lines.append("</tbody>\n</table>")
    return "\n".join(line for line in lines if line)
