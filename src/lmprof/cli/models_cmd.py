"""`lmprof models`: the built-in models, and whether each is built yet."""

from __future__ import annotations

import argparse

from rich import box
from rich.table import Table

from lmprof.cli.report_console import report_console
from lmprof.render.units import fmt_count


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the built-in models", description="List the built-in models.")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from lmprof.models import DEFAULT_MODEL, cache_root, is_builtin_cached, list_builtin_models

    table = Table(title="Built-in models (* default)", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("name", "architecture", "params", "weights", "cached"):
        table.add_column(col, justify="right" if col == "params" else "left", no_wrap=True)
    models = list_builtin_models()
    for m in models:
        table.add_row(
            m.name + (" *" if m.name == DEFAULT_MODEL else ""),
            m.architecture,
            fmt_count(m.parameter_count),
            "trained" if m.trained else "random",
            "yes" if is_builtin_cached(m.name) else "no",
        )
    console = report_console(table)
    console.print(table)
    for m in models:
        console.print(f"[bold]{m.name}[/bold]: {m.description}")
    console.print(f"\nCache: {cache_root()}  (built on first use; set LMPROF_CACHE to move it)")
    return 0
