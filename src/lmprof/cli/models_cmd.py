"""`lmprof models`: the built-in models, and whether each is built yet."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from lmprof.render.units import fmt_count


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the built-in models", description="List the built-in models.")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from lmprof.models import DEFAULT_MODEL, cache_root, is_builtin_cached, list_builtin_models

    table = Table(title="Built-in models", title_justify="left")
    for col in ("name", "architecture", "params", "weights", "cached", "description"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for m in list_builtin_models():
        name = m.name + (" (default)" if m.name == DEFAULT_MODEL else "")
        table.add_row(
            name,
            m.architecture,
            fmt_count(m.parameter_count),
            "trained" if m.trained else "random",
            "yes" if is_builtin_cached(m.name) else "no",
            m.description,
        )
    console = Console()
    console.print(table)
    console.print(f"Cache: {cache_root()}  (built on first use; set LMPROF_CACHE to move it)")
    return 0
