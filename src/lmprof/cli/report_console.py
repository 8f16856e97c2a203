"""The console the commands print their reports on: never narrower than a report's tables.

Where stdout is a file or a pipe (`lmprof ablate > table.txt`, CI logs), rich renders at 80
columns, and a table wider than that has its no-wrap cells cut to "…": an ablation of every
row printed "71.8…" for a TTFT and "1.…" for a speed-up, so the figures were lost. Off a
terminal nobody reads at a fixed width, so the console takes the width the widest table needs
there: its no-wrap columns whole, its wrapping columns no narrower than their longest word (a
wrapped cell loses nothing; a cut word would). On a terminal, or where $COLUMNS is set, the
width the user has is kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from rich.console import Console, ConsoleOptions, RenderableType
from rich.measure import Measurement
from rich.table import Table

# Only for measuring: wider than any table lmprof draws.
_MEASURE_WIDTH = 10_000


def _tables(renderable: RenderableType) -> Iterator[Table]:
    """Every table in a renderable: inside Groups (.renderables) and inside Panels, Padding and
    Align (.renderable)."""
    if isinstance(renderable, Table):
        yield renderable
        return
    for child in getattr(renderable, "renderables", None) or ():
        yield from _tables(child)
    inner = getattr(renderable, "renderable", None)
    if inner is not None:
        yield from _tables(inner)


def _needed_width(console: Console, options: ConsoleOptions, table: Table) -> int:
    """The narrowest console width at which rich lays `table` out with every no-wrap column
    whole and every wrapping column at least as wide as its longest word (rich's default
    overflow cuts a longer word to "…"). rich shrinks the widest wrapping column first, past
    its longest word, so the width is checked against rich's own layout, not summed."""
    try:
        # rich's per-column measures (padding included) and layout: its public measure of a
        # whole table lets no-wrap columns shrink to an ellipsis, which is what must not happen.
        measures = [table._measure_column(console, options, column) for column in table.columns]
        wanted = [m.maximum if column.no_wrap else m.minimum for m, column in zip(measures, table.columns)]
        extra = table._extra_width

        def whole(width: int) -> bool:
            laid = table._calculate_column_widths(console, options.update_width(width - extra))
            return all(got >= want for got, want in zip(laid, wanted))

    except (AttributeError, TypeError):  # a rich without these: the table's natural width
        return Measurement.get(console, options, table).maximum
    low = sum(wanted) + extra
    high = max(low, sum(m.maximum for m in measures) + extra)  # everything on one line: whole
    while low < high:
        middle = (low + high) // 2
        if whole(middle):
            high = middle
        else:
            low = middle + 1
    return low


def _on_a_terminal(console: Console) -> bool:
    # Not console.is_terminal: rich says True for any stream where $FORCE_COLOR or
    # $TTY_COMPATIBLE is set, as CI systems often do for their logs.
    try:
        return console.file.isatty()
    except (AttributeError, OSError, ValueError):
        return False


def report_console(*renderables: RenderableType, stderr: bool = False) -> Console:
    """A Console for printing `renderables`, wide enough off a terminal for their tables."""
    console = Console(stderr=stderr)
    if _on_a_terminal(console) or os.environ.get("COLUMNS", "").strip().isdigit():
        return console
    options = console.options.update_width(_MEASURE_WIDTH)
    # + 4: a panel around a table adds its border and padding (rich's defaults).
    needed = max(
        (_needed_width(console, options, table) + 4 for r in renderables for table in _tables(r)),
        default=0,
    )
    return console if needed <= console.width else Console(stderr=stderr, width=needed)
