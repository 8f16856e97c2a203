"""The facts of a Run's generation (tokens, TTFT, TPOT, ITL, timing, the engine's kernels), worded
once for the terminal summary and the HTML report."""

from __future__ import annotations

from lmprof.record.run import Run
from lmprof.render.units import fmt_bytes, fmt_rate, fmt_s


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


def generation_facts(run: Run, gap: str, note_traced: bool) -> list[tuple[str, str]]:
    """(label, value) rows of the headline generation; `gap` separates a figure from its
    parenthesis (the terminal aligns with two spaces), `note_traced` marks a traced call."""
    g = run.generation
    assert g is not None
    batch = f" × batch {g.batch_size}" if g.batch_size > 1 else ""
    traced = " (traced: inflated by the tracer)" if note_traced and g.traced else ""
    rows = [
        ("tokens", f"{g.prompt_tokens} prompt → {g.new_tokens} new{batch}"),
        ("time to first token", f"{fmt_s(g.ttft_s)}{gap}(prefill {fmt_s(g.prefill_s)}, {fmt_rate(g.prefill_tokens_per_s, 'tok/s')})"),
        ("time per output token", f"{fmt_s(g.tpot_s)}{gap}(decode {fmt_s(g.decode_s)}, {fmt_rate(g.decode_tokens_per_s, 'tok/s')})"),
        ("inter-token latency", "  ".join(f"{k} {fmt_s(v)}" for k, v in g.itl_percentiles_s.items()) or "-"),
        ("timing", f"{g.timing} via {g.call}{traced}"),
    ]  # fmt: skip
    if len(run.generations) > 1:
        which = "the untraced repeat" if any(x.traced for x in run.generations) else "the first"
        rows.append(("calls", f"{len(run.generations)} generation calls; shown: {which}"))
    kernels = native_kernels_fact(run)
    if kernels:
        rows.append(("native kernels", kernels))
    return rows
