"""The terminal summary of a load run: rich tables built from a LoadRun and its LoadSummary.
Never runs anything; `lmprof show` renders a saved load run the same way."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from lmprof.analyze.load import LevelSummary, LoadSummary
from lmprof.record.load import LoadRun, length_bounds
from lmprof.render.units import fmt_pct, fmt_s

_LATENCIES = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2EL"))
_STATS = ("mean", "p50", "p90", "p95", "p99")


def _rate(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} {unit}" if value < 100 else f"{value:,.0f} {unit}"


def _pick(dist: dict | None, stat: str) -> str:
    return fmt_s(dist[stat]) if dist else "-"


def header(run: LoadRun, run_dir: str | None) -> Text:
    server = run.server
    settings = run.settings
    stream = "streaming" if settings.get("stream", True) else "not streaming"
    lines = [
        f"lmprof load  {server.get('base_url', '?')}{server.get('endpoint', '')}  ({stream})",
        f"model {server.get('model') or '?'}"
        + (f"  server {server['version']}" if server.get("version") else "")
        + (f"  [{server['server_header']}]" if server.get("server_header") else ""),
        f"prompts: {_prompt_line(settings)}",
        f"status {run.status}  wall {fmt_s(run.wall_s)}" + (f"  saved to {run_dir}" if run_dir else ""),
    ]
    if run.error:
        lines.append(f"error: {run.error.get('type', '')}: {run.error.get('message', '')}")
    return Text("\n".join(lines))


def _prompt_line(settings: dict) -> str:
    if settings.get("prompts_file"):
        text = f"from {settings['prompts_file']}"
    else:
        unit = "tokens" if settings.get("tokenizer") else "words"
        ratio = settings.get("range_ratio") or 0.0  # absent from runs before --range-ratio
        text = (
            f"{_lengths(settings.get('input_tokens'), ratio)} {unit} in, "
            f"{_lengths(settings.get('output_tokens'), ratio)} tokens out"
            + (f" (range ratio {ratio:g})" if ratio else "")
        )
    if settings.get("prefix_tokens") and settings.get("prefix_share"):
        text += f", {settings['prefix_share']:.0%} share a {settings['prefix_tokens']}-long prefix"
    if settings.get("repeat_share"):
        text += f", {settings['repeat_share']:.0%} repeat an earlier prompt"
    return text


def _lengths(length: object, ratio: float) -> str:
    """`64`, or `16-112` where each request drew its length (--range-ratio)."""
    if not ratio or not isinstance(length, int):
        return str(length)
    lo, hi = length_bounds(length, ratio)
    return f"{lo}-{hi}"


def levels_table(levels: list[LevelSummary]) -> Table:
    table = Table(title="Load levels (latency from send, as vLLM's benchmark)", title_justify="left")
    for name in ("level", "ok/sent", "errors", "req/s", "out tok/s", "total tok/s"):
        table.add_column(name, justify="left" if name == "level" else "right", no_wrap=True)
    for name in ("TTFT p50", "TTFT p99", "TPOT p50", "ITL p99", "E2EL p99", "from sched.", "goodput"):
        table.add_column(name, justify="right", no_wrap=True)
    for s in levels:
        errors = sum(e["count"] for e in s.errors.values())
        goodput = f"{fmt_pct(s.goodput['share'])} ({s.goodput['rps']:.2f}/s)" if s.goodput else "-"
        table.add_row(
            s.title + ("" if s.complete else " (cut short)"),
            f"{s.completed}/{s.sent}",
            str(errors),
            _rate(s.request_rps, ""),
            _rate(s.output_tps, ""),
            _rate(s.total_tps, ""),
            _pick(s.latency_s.get("ttft"), "p50"),
            _pick(s.latency_s.get("ttft"), "p99"),
            _pick(s.latency_s.get("tpot"), "p50"),
            _pick(s.latency_s.get("itl"), "p99"),
            _pick(s.latency_s.get("e2el"), "p99"),
            _pick(s.scheduled_latency_s.get("e2el"), "p99"),  # with the client's queueing
            goodput,
        )
    return table


def latency_table(s: LevelSummary) -> Table:
    table = Table(title=f"{s.title}: latency", title_justify="left")
    table.add_column("figure", no_wrap=True)
    for stat in _STATS:
        table.add_column(stat, justify="right", no_wrap=True)
    rows = [(label, s.latency_s.get(key)) for key, label in _LATENCIES]
    rows += [
        ("TTFT from scheduled", s.scheduled_latency_s.get("ttft")),
        ("E2EL from scheduled", s.scheduled_latency_s.get("e2el")),
        ("client queueing", s.client_queue_s),
    ]
    for label, dist in rows:
        table.add_row(label, *(_pick(dist, stat) for stat in _STATS))
    return table


def errors_table(levels: list[LevelSummary]) -> Table | None:
    rows = [(s, kind, e) for s in levels for kind, e in s.errors.items()]
    if not rows:
        return None
    table = Table(title="Errors by kind (latency from send to failure)", title_justify="left")
    for name in ("level", "kind", "count", "latency p50", "latency max", "example"):
        table.add_column(name, justify="right" if name in ("count", "latency p50", "latency max") else "left")
    for s, kind, e in rows:
        table.add_row(
            s.title,
            kind,
            str(e["count"]),
            _pick(e["latency_s"], "p50"),
            _pick(e["latency_s"], "max"),
            (e.get("example") or "")[:60],
        )
    return table


def side_table(levels: list[LevelSummary]) -> Table:
    table = Table(title="Client and server", title_justify="left")
    for name in ("level", "client CPU", "loop lag p99", "tokens counted by", "server running", "waiting"):
        table.add_column(name, justify="left" if name in ("level", "tokens counted by") else "right")
    table.add_column("prefix/response cache hits", justify="right")
    for s in levels:
        srv = s.server
        running = (
            f"{srv['running_mean']:.1f} (max {srv['running_max']:.0f})" if "running_mean" in srv else "-"
        )
        waiting = (
            f"{srv['waiting_mean']:.1f} (max {srv['waiting_max']:.0f})" if "waiting_mean" in srv else "-"
        )
        table.add_row(
            s.title,
            fmt_pct(s.client_cpu_share),
            _pick(s.loop_lag_s, "p99"),
            ", ".join(f"{m} {n}" for m, n in sorted(s.count_methods.items())) or "-",
            running,
            waiting,
            fmt_pct(srv.get("prefix_cache_hit_rate")),
        )
    return table


def render_load_run(run: LoadRun, summary: LoadSummary, run_dir: str | None = None) -> RenderableType:
    parts: list[RenderableType] = [header(run, run_dir), Text("")]
    if summary.levels:
        parts.append(levels_table(summary.levels))
        for s in summary.levels:
            parts.append(latency_table(s))
        errors = errors_table(summary.levels)
        if errors is not None:
            parts.append(errors)
        parts.append(side_table(summary.levels))
    else:
        parts.append(Text("no load level was measured"))
    if not run.metrics:
        parts.append(Text(f"server metrics: none ({run.metrics_note or 'GET /metrics not tried'})"))
    if summary.warmup_requests:
        parts.append(Text(f"{summary.warmup_requests} warm-up requests are not counted"))
    resent = sum(1 for r in run.requests if r.resent and not r.warmup)
    if resent:
        parts.append(
            Text(
                f"{resent} requests were sent again on a new connection: the server had closed the "
                "kept-alive one they first went out on (their latency includes that attempt)"
            )
        )
    for warning in summary.warnings:
        parts.append(Text(warning, style="yellow"))
    return Group(*parts)
