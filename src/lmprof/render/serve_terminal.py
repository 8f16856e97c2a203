"""A serve Run as terminal text: settings, requests, per-phase percentiles, batch sizes, memory.
Plain fixed-width text (no colour), so it reads the same in a pipe and in a golden test."""

from __future__ import annotations

from lmprof.analyze.serve import PERCENTILES, serve_figures
from lmprof.record.serve import ServeRun, scheduler_words
from lmprof.render.units import fmt_bytes, fmt_s

HISTOGRAM_BAR = 40  # characters of the longest bar


def render_serve_run(run: ServeRun) -> str:
    f = serve_figures(run)
    s, m = run.settings, run.model
    sched = scheduler_words(s)
    lines = [
        f"lmprof serve run: {m.get('id', '?')} on {m.get('engine', '?')}, {m.get('device', '?')}, "
        f"{m.get('dtype', '?')}",
        f"scheduler {sched}; max queue {s.get('max_queue')}; "
        f"response cache {s.get('response_cache_bytes') or 'off'}",
        f"server up {fmt_s(f.wall_s)}; model busy {fmt_s(f.busy_s)}"
        + (f" ({f.busy_s / f.wall_s:.0%})" if f.wall_s > 0 else ""),
        "",
        f"requests {f.requests}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(f.outcomes.items()))
        + "; status "
        + ", ".join(f"{k}: {v}" for k, v in sorted(f.statuses.items())),
        f"tokens: prompt {f.prompt_tokens}, completion {f.completion_tokens}"
        + (f"; {f.output_tokens_per_s:.1f} output tokens/s while serving" if f.output_tokens_per_s else ""),
        "",
    ]
    if f.phases:
        head = (
            f"{'phase (200s)':<15}{'n':>6}"
            + "".join(f"{'p' + str(q):>11}" for q in PERCENTILES)
            + f"{'mean':>11}"
        )
        lines += [head, "-" * len(head)]
        for p in f.phases:
            cells = "".join(f"{fmt_s(p.percentiles_s[q]):>11}" for q in PERCENTILES)
            lines.append(f"{p.name:<15}{p.count:>6}{cells}{fmt_s(p.mean_s):>11}")
        lines.append("")
    if f.batch_sizes:
        lines.append("rows per engine step (prefill and decode steps)")
        most = max(f.batch_sizes.values())
        for size, steps in f.batch_sizes.items():
            bar = "#" * max(1, round(HISTOGRAM_BAR * steps / most))
            lines.append(f"{size:>5} {steps:>7}  {bar}")
        if run.steps_dropped:
            lines.append(f"(and {run.steps_dropped} later steps, past the profile's cap, not kept)")
        if f.mean_occupancy is not None:
            lines.append(f"mean decode occupancy (rows still generating / rows run): {f.mean_occupancy:.0%}")
        lines.append("")
    memory = f"peak host RSS {fmt_bytes(f.peak_rss_bytes)}"
    if f.peak_device_bytes is not None:
        memory += f"; peak device allocated {fmt_bytes(f.peak_device_bytes)}"
    lines.append(memory + f" ({len(run.memory)} samples)")
    return "\n".join(lines) + "\n"
