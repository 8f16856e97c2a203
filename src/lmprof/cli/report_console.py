"""The console the commands print their reports on: never narrower than a report's tables.

Where stdout is a file or a pipe (`lmprof ablate > table.txt`, CI logs), rich renders at 80
columns, and a table wider than that has its no-wrap cells cut to "…": an ablation of every
row printed "71.8…" for a TTFT and "1.…" for a speed-up, so the figures were lost. Off a
terminal nobody reads at a fixed width, so the console takes the widest table's natural
width there. On a terminal, or where $COLUMNS is set, the width the user has is kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table

# Only for measuring: wider than any table lmprof draws.
_MEASURE_WIDTH = 10_000


def _tables(renderable: RenderableType) -> Iterator[Table]:
    if isinstance(renderable, Table):
        yield renderable
    elif isinstance(renderable, Group):
        for child in renderable.renderables:
            yield from _tables(child)


def report_console(*renderables: RenderableType, stderr: bool = False) -> Console:
    """A Console for printing `renderables`, wide enough off a terminal for their tables."""
    console = Console(stderr=stderr)
    if console.is_terminal or "COLUMNS" in os.environ:
        return console
    options = console.options.update_width(_MEASURE_WIDTH)
    widest = max(
        (Measurement.get(console, options, table).maximum for r in renderables for table in _tables(r)),
        default=0,
    )
    return console if widest <= console.width else Console(stderr=stderr, width=widest)
