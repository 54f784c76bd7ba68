"""The one table formatter: rows of cells as GitHub markdown (files) or aligned plain text."""

from __future__ import annotations

from typing import Any, Sequence


def format_cell(value: Any) -> str:
    """Returns a cell's text: floats to 4 significant digits, None as '-'."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def format_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], markdown: bool = True) -> str:
    """Returns the rows under the header: a markdown table, or right-aligned plain columns.

    Cells that are not strings go through ``format_cell``; columns are as wide as their widest
    cell, so the markdown reads as a table in a terminal too.
    """
    head = [str(h) for h in header]
    body = [[c if isinstance(c, str) else format_cell(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h)
              for i, h in enumerate(head)]
    if markdown:
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

        return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                          *(line(r) for r in body)])
    lines = ["  ".join(c.rjust(w) for c, w in zip(head, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in body]
    return "\n".join(lines)
