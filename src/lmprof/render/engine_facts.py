"""Facts about the engine a Run ran with, worded once for the terminal and the HTML report."""

from __future__ import annotations

from lmprof.record.run import Run
from lmprof.render.units import fmt_bytes


def native_kernels_fact(run: Run) -> str | None:
    """The software prefetch the native kernels ran with (the per-CPU table's choice, noted on
    the load_native_kernels phase), or None where the Run did not load them."""
    kernels = next((p for p in run.phases if p.name == "load_native_kernels"), None)
    if kernels is None or "prefetch_bytes" not in kernels.detail:
        return None
    ahead = kernels.detail["prefetch_bytes"]
    narrow, wide = (ahead, ahead) if isinstance(ahead, int) else ahead  # one number before 2026-12-03

    def words(distance: int, default: str) -> str:
        return f"{fmt_bytes(distance)} ahead" if distance else default

    if narrow == wide:
        prefetch = words(narrow, "none at batch 1, the rows ahead at batch > 1")
    else:
        prefetch = f"{words(narrow, 'none')} at batch 1-3, {words(wide, 'the rows ahead')} at batch >= 4"
    return f"software prefetch {prefetch} (per-CPU table; $LMPROF_PREFETCH_BYTES)"
