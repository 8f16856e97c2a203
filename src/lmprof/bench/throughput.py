"""`lmprof bench throughput`'s work: every row in interleaved rounds, each row a fresh `lmprof
serve` subprocess driven in-process by lmprof load, one closed-loop level per concurrency.

Round k runs every row once (odd rounds in table order, even rounds reversed, so no row
always runs first or last on a machine whose load drifts); a server is started per row and
round, so no cache carries over between rounds. Every level of every row uses the same
prompts (its seed is the concurrency's), so the rows of a level are paired. Each level is
its own load run: caches start the level with nothing of the previous level's prompts.
The report is saved (atomically) after every point, so an interrupted run keeps what it
measured. Nothing here prints: progress goes to a callback.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Callable

import psutil

from lmprof._version import __version__
from lmprof.bench.plan import BenchOptions, plan_rows, serve_args, workload_options
from lmprof.bench.server_process import PeakRss, ServerProcess, ServerStartError
from lmprof.collect.environment import snapshot_load
from lmprof.errors import LmprofError
from lmprof.load.bench import new_load_run, run_load
from lmprof.load.options import LoadOptions, check_options, parse_slo
from lmprof.load.prompts import TokenCounter
from lmprof.record.throughput import BenchPoint, BenchRow, ServerLife, ThroughputReport

Progress = Callable[[str], None]


def _machine() -> dict:
    from lmprof.collect.system import collect_cpu

    cpu = collect_cpu()
    return {
        "cpu_model": cpu.get("model"),
        "logical_cores": psutil.cpu_count(logical=True),
        "memory_bytes": psutil.virtual_memory().total,
        "load_avg_start": list(psutil.getloadavg()),
    }


def new_report(opts: BenchOptions, command: list[str], model_id: str) -> ThroughputReport:
    settings = opts.to_settings()
    settings["model_id"] = model_id
    settings["slo_s"] = parse_slo(opts.slo)
    return ThroughputReport(
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        lmprof_version=__version__, command=command, settings=settings, machine=_machine(),
        rows=plan_rows(opts),
    )  # fmt: skip


def level_options(
    opts: BenchOptions, row: BenchRow, base_url: str, concurrency: int, tokenizer: str
) -> LoadOptions:
    load = LoadOptions(
        base_url=base_url, concurrency=[concurrency], requests=opts.requests_at(concurrency),
        output_tokens=opts.output_tokens, tokenizer=tokenizer, seed=concurrency, slo_s=parse_slo(opts.slo),
        timeout_s=opts.timeout_s, scrape_interval_s=0.5, **workload_options(row.workload, opts),
    )  # fmt: skip
    check_options(load)
    return load


def _other_cpu_share(start, end, server_cpu_s: float | None, cores: int) -> float | None:
    wall_s = end.wall_s - start.wall_s
    if wall_s <= 0 or server_cpu_s is None:
        return None
    others = (end.busy_cpu_s - start.busy_cpu_s) - (end.process_cpu_s - start.process_cpu_s) - server_cpu_s
    return min(1.0, max(0.0, others / (wall_s * cores)))


def measure_level(
    opts: BenchOptions,
    row: BenchRow,
    round_k: int,
    concurrency: int,
    server: ServerProcess,
    counter: TokenCounter,
    tokenizer: str,
) -> BenchPoint:
    load = level_options(opts, row, server.url, concurrency, tokenizer)
    run = new_load_run(load, ["lmprof", "bench", "throughput", row.name, f"round {round_k}"])
    point = BenchPoint(row=row.name, round=round_k, concurrency=concurrency, load={})
    point.load_avg_start = list(psutil.getloadavg())
    start, cpu_start = snapshot_load(), server.cpu_s()
    try:
        with PeakRss(server.pid) as rss:
            run_load(load, run, counter=counter)
    except LmprofError as exc:
        point.error = str(exc)
    end, cpu_end = snapshot_load(), server.cpu_s()
    point.load = run.to_dict()
    point.server_rss_peak_bytes = rss.peak_bytes
    if cpu_start is not None and cpu_end is not None:
        point.server_cpu_s = cpu_end - cpu_start
    point.other_cpu_share = _other_cpu_share(start, end, point.server_cpu_s, os.cpu_count() or 1)
    return point


def run_throughput(
    opts: BenchOptions, command: list[str], progress: Progress = lambda line: None
) -> ThroughputReport:
    """Run the matrix; the report is saved to opts.out after every point and at the end."""
    from lmprof.models import resolve_model

    resolved = resolve_model(opts.model, progress=False)
    model_path = str(resolved.path)
    counter = TokenCounter(model_path)  # loaded once: each level's load run shares it
    report = new_report(opts, command, resolved.model_id)
    report.save(opts.out)
    t0 = time.perf_counter()
    total = opts.rounds * len(report.rows) * len(opts.concurrency)
    done = 0
    for round_k in range(1, opts.rounds + 1):
        rows = report.rows if round_k % 2 else list(reversed(report.rows))
        for row in rows:
            server = ServerProcess(
                model_path, [*serve_args(row, opts), "--served-model-name", resolved.model_id]
            )
            life = ServerLife(row=row.name, round=round_k, command=server.command[1:])
            report.servers.append(life)
            try:
                server.start(opts.startup_timeout_s)
            except ServerStartError as exc:
                life.error = str(exc)
                progress(f"round {round_k} {row.name}: {exc}")
                done += len(opts.concurrency)
                report.save(opts.out)
                continue
            life.startup_line, life.startup_s = server.startup_line, server.startup_s
            try:
                for concurrency in opts.concurrency:
                    point = measure_level(opts, row, round_k, concurrency, server, counter, model_path)
                    report.points.append(point)
                    done += 1
                    report.wall_s = time.perf_counter() - t0
                    report.save(opts.out)
                    progress(_point_line(done, total, point))
            finally:
                server.stop()
    report.machine["load_avg_end"] = list(psutil.getloadavg())
    report.wall_s = time.perf_counter() - t0
    report.complete = True
    report.save(opts.out)
    return report


def _point_line(done: int, total: int, point: BenchPoint) -> str:
    from lmprof.analyze.throughput import point_figures

    if point.error:
        return f"[{done}/{total}] round {point.round} {point.row} c={point.concurrency}: {point.error}"
    f = point_figures(point)
    return (
        f"[{done}/{total}] round {point.round} {point.row} c={point.concurrency}: "
        f"{f.output_tps:.1f} tok/s, TTFT p50 {f.ttft_p50_s * 1000 if f.ttft_p50_s else float('nan'):.0f} ms"
    )
