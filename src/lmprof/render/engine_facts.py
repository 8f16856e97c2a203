"""Facts about the engine a Run ran with, worded once for the terminal and the HTML report."""

from __future__ import annotations

from lmprof.record import Run
from lmprof.render.units import fmt_bytes


def native_kernels_fact(run: Run) -> str | None:
    """The software prefetch the native kernels ran with (the per-CPU table's choice, noted on
    the load_native_kernels phase), or None where the Run did not load them."""
    kernels = next((p for p in run.phases if p.name == "load_native_kernels"), None)
    if kernels is None or "prefetch_bytes" not in kernels.detail:
        return None
    ahead = kernels.detail["prefetch_bytes"]
    prefetch = f"{fmt_bytes(ahead)} ahead" if ahead else "none at batch 1"
    return f"software prefetch {prefetch} (per-CPU table; $LMPROF_PREFETCH_BYTES)"
