"""Tables for an 80-column terminal (rich): a row is one line, names are never cut; what does not fit is left out
and said so."""

from __future__ import annotations

from typing import Literal

from rich.table import Table

Column = tuple[str, Literal["left", "right"], list[str]]  # header, justify, cells


def fit_table(title: str | None, columns: list[Column], width: int, keep: int = 1) -> tuple[Table, list[str]]:
    """A rich Table of (header, justify, cells) columns, one line per row, and the headers of the columns left
    out: cells are never wrapped or cut; when the table is wider than `width`, the last columns (the least
    important) go, down to `keep`. Compact: no borders, two spaces between columns."""
    from rich.cells import cell_len

    def total(cols: list[Column]) -> int:
        return sum(max([cell_len(h), *map(cell_len, cells)]) for h, _, cells in cols) + 2 * (len(cols) - 1)

    shown = list(columns)
    while len(shown) > keep and total(shown) > width:
        shown.pop()
    hidden = [h for h, _, _ in columns[len(shown) :]]
    table = Table(title=title, box=None, pad_edge=False, padding=(0, 1), header_style="bold", expand=False)
    for header, justify, _ in shown:
        table.add_column(header, justify=justify, no_wrap=True)
    for row in zip(*(cells for _, _, cells in shown)):
        table.add_row(*row)
    return table, hidden
