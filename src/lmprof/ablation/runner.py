"""`lmprof ablate`'s work: run every row in interleaved rounds, each row-round a profiled Run.

Round k runs every row once, in table order, each in a fresh process (`lmprof.ablation.row`)
that saves OUT/<row>/round-<k>/run.json; a row's median round (by decode speed) is copied to
OUT/<row>/run.json. The best combination is chosen from round 1 and run from then on. The
floor comes from the hardware probes (cached; measured first if there are none). The report
is written to OUT/ablation.json (`lmprof.record.ablation`). Nothing here prints: progress goes
to a callback.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from lmprof.ablation.plan import (
    BATCH_ROW_SIZE,
    AblationRow,
    best_combination,
    measured_best,
    plan_rows,
    select_rows,
)
from lmprof.ablation.row import RowJob
from lmprof.analyze.ablation import round_figures, summarize_rows
from lmprof.errors import LmprofError, UsageError
from lmprof.record.ablation import (
    BASELINE,
    BEST,
    REFERENCE,
    AblationReport,
    RoundFigures,
    RowResult,
    save_report,
)
from lmprof.record.files import RUN_FILE, write_atomic
from lmprof.record.run import load_run

WARMUP_TOKENS = 4
# A prompt of ordinary prose: a trained model continues it sensibly, so greedy outputs of
# two configurations can be compared; random token ids would make every logit margin thin.
PROMPT_TEXT = (
    "The history of computing is a story of machines that grew faster while the memory that "
    "feeds them grew slower by comparison. Early computers read their programs from punched "
    "cards, and every improvement in speed exposed a new bottleneck somewhere else in the "
    "system. Engineers learned to measure before they optimized, because intuition about "
    "where the time goes is usually wrong, and a careful profile tells a different story."
)

Progress = Callable[[int, int, AblationRow, "RoundFigures | None", "str | None"], None]


@dataclass
class AblationRequest:
    model: str | None
    out: Path
    max_new_tokens: int = 64
    prompt_tokens: int = 32
    threads: int | None = None
    rounds: int = 3
    only: list[str] | None = None
    compile_decode: bool = False
    device: str = "cpu"
    warmup_tokens: int = WARMUP_TOKENS
    refresh_probes: bool = False

    def validate(self) -> None:
        for name in ("max_new_tokens", "prompt_tokens", "rounds"):
            if getattr(self, name) < 1:
                raise UsageError(
                    f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}"
                )
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be a positive integer, got {self.threads}")


def run_ablation(req: AblationRequest, on_progress: Progress | None = None) -> AblationReport:
    req.validate()
    import torch

    from lmprof.analyze.hardware import best_read_gbps
    from lmprof.collect.probe_cache import measured_hardware
    from lmprof.collect.system import collect_system_info
    from lmprof.models import resolve_model

    threads = req.threads or torch.get_num_threads()
    load_start = list(psutil.getloadavg())
    resolved = resolve_model(req.model)
    config, config_error = _engine_config(resolved.path)
    probes, cache_file, from_cache = measured_hardware(threads=threads, refresh=req.refresh_probes)
    # The probes name a GPU with its index ("cuda:0"); the rows may say just "cuda".
    probe_device = req.device if req.device == "cpu" or ":" in req.device else f"{req.device}:0"
    read_gbps = best_read_gbps(probes.probes, probe_device)
    system = collect_system_info(torch)

    planned = plan_rows(
        threads=threads,
        logical_cores=system["cpu"].get("logical_cores") or 1,
        prompt_tokens=req.prompt_tokens,
        compile_decode=req.compile_decode,
        unrunnable_dtypes=_unrunnable_dtypes(probes.probes, probe_device),
        native_unavailable=_native_unavailable(req.device),
        huge_pages_unavailable=_huge_pages_unavailable(req.device),
        w8a8_unavailable=_w8a8_unavailable(req.device),
    )
    if config_error:  # the engine cannot read this model: say so on every engine row
        planned = [r if r.runner != "engine" else _skipped(r, config_error) for r in planned]
    rows = select_rows(planned, req.only)
    want_best = not req.only or BEST in req.only
    best_combines: list[str] = []
    best_note = ""
    prompt, prompt_source = _prompt_ids(resolved.path, req.prompt_tokens, config)
    batches = {1: [prompt], BATCH_ROW_SIZE: [prompt[k:] + prompt[:k] for k in range(BATCH_ROW_SIZE)]}

    results = {row.name: RowResult(row.name, row.label, "ran", batch=row.batch) for row in rows}
    runs: dict[str, list[str]] = {row.name: [] for row in rows}
    for row in rows:
        if row.skip_reason:
            results[row.name].status, results[row.name].reason = "skipped", row.skip_reason

    def run_one(row: AblationRow, k: int) -> None:
        result = results[row.name]
        if result.status != "ran":
            return
        run_dir = req.out / row.name / f"round-{k}"
        job = RowJob(row, req.model, batches[row.batch], req.max_new_tokens, req.warmup_tokens, threads,
                     req.device, str(run_dir), k, reference_tokens())  # fmt: skip
        figures, error = _run_job(job)
        runs[row.name].append(str(run_dir))
        result.rounds.append(figures)
        if error is not None:
            result.status, result.reason = "failed", error
        if on_progress is not None:
            on_progress(k, req.rounds, row, figures, error)

    def reference_tokens() -> list[int] | None:
        # The fp32 engine's greedy tokens from its first round: each later row checks its own
        # next-token choices against them (greedy output is the same every round).
        reference = results.get(REFERENCE)
        first = next((f for f in reference.rounds if f is not None), None) if reference else None
        return list(first.new_token_ids) if first is not None and first.new_token_ids else None

    for k in range(1, req.rounds + 1):
        # The reference row runs first, so every other row of the round can be checked against it.
        for row in sorted(rows, key=lambda r: r.name != REFERENCE):
            run_one(row, k)
        if k == 1 and want_best:
            rates = {name: (r.rounds[0].decode_tokens_per_s if r.rounds and r.rounds[0] else None)
                     for name, r in results.items()}  # fmt: skip
            best = (
                best_combination(planned, rates)
                if config_error is None
                else _skipped(AblationRow(BEST, "best combination", "engine"), config_error)
            )
            rows.append(best)
            best_combines = list(best.combines)
            runs[best.name] = []
            status = "skipped" if best.skip_reason else "ran"
            results[best.name] = RowResult(best.name, best.label, status, best.skip_reason)
            if status == "ran":
                run_one(best, 1)
                first = results[best.name].rounds[0] if results[best.name].rounds else None
                swap = measured_best(best, planned, rates, first.decode_tokens_per_s if first else None)
                if swap is not None:  # a row alone beat the estimated set: run that instead
                    best, best_note = swap
                    rows[-1] = best
                    best_combines = list(best.combines)
                    runs[best.name] = []
                    results[best.name] = RowResult(best.name, best.label, "ran")
                    shutil.rmtree(req.out / best.name, ignore_errors=True)
                    run_one(best, 1)

    for row in rows:
        result = results[row.name]
        result.decode_weight_bytes = _decode_weight_bytes(config, row)
        _copy_median_run(req.out / row.name, result, runs[row.name])
    figures = summarize_rows(
        [results[r.name] for r in rows], BASELINE, REFERENCE, read_gbps * 1e9 if read_gbps else None
    )
    report = AblationReport(
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        model=resolved.model_id,
        model_path=str(resolved.path),
        request={k: str(v) if isinstance(v, Path) else v for k, v in asdict(req).items()},
        threads=threads,
        prompt_source=prompt_source,
        read_bandwidth_gbps=read_gbps,
        probes={
            "cache_file": str(cache_file),
            "from_cache": from_cache,
            "measured_at": probes.measured_at,
            "threads": probes.threads,
            "device": probe_device,
        },  # fmt: skip
        load_avg_start=load_start,
        load_avg_end=list(psutil.getloadavg()),
        rows=[results[r.name] for r in rows],
        figures=figures,
        runs=runs,
        best_combines=best_combines,
        best_note=best_note,
        system=system,
    )
    save_report(req.out, report)
    return report


def _skipped(row: AblationRow, reason: str) -> AblationRow:
    return AblationRow(row.name, row.label, row.runner, row.options, row.batch, row.skip_reason or reason)


def _cpu_check_fails(device: str, what: str, check: Any, error: type[Exception]) -> str | None:
    """Why a CPU-only row cannot run here (another device, or `check` raising `error`), or None."""
    if device != "cpu":
        return f"{what} on CPU only; this ablation runs on {device}"
    try:
        check()
    except error as failure:
        return str(failure)
    return None


def _native_unavailable(device: str) -> str | None:
    """Why the native decode row cannot run, or None; builds the kernels here once, so no row's
    process spends its time compiling."""
    from lmprof.engine.native import NativeKernelsUnavailable, load_native_ops

    return _cpu_check_fails(device, "lmprof's native kernels run", load_native_ops, NativeKernelsUnavailable)


def _w8a8_unavailable(device: str) -> str | None:
    from lmprof.engine.native import cpu_has_w8a8

    def check() -> None:
        if not cpu_has_w8a8():
            raise UsageError("this CPU has neither AVX2 nor AVX512-VNNI (W8A8's integer products)")

    return _cpu_check_fails(device, "W8A8 runs in the native step", check, UsageError)


def _huge_pages_unavailable(device: str) -> str | None:
    from lmprof.engine.huge_pages import HugePagesUnavailable, check_huge_pages

    return _cpu_check_fails(device, "huge pages place memory", check_huge_pages, HugePagesUnavailable)


def _engine_config(folder: Path) -> tuple[Any, str | None]:
    from lmprof.engine import EngineConfig
    from lmprof.engine.weights import read_hf_config

    try:
        return EngineConfig.from_hf_config(read_hf_config(folder)), None
    except LmprofError as error:
        return None, f"the engine cannot load this model: {error}"


def _unrunnable_dtypes(probes: list[Any], device: str) -> dict[str, str]:
    """dtype -> reason, for dtypes whose every matrix probe failed on `device`."""
    reasons: dict[str, str] = {}
    for dtype in ("bfloat16", "float16"):
        tried = [
            p for p in probes if p.device == device and p.dtype == dtype and p.kind in ("matvec", "matmul")
        ]
        if tried and all(p.skipped for p in tried):
            reasons[dtype] = f"no {dtype} kernels here: {tried[0].skipped}"
    return reasons


def _prompt_ids(folder: Path, n_tokens: int, config: Any) -> tuple[list[int], str]:
    """`n_tokens` ids of PROMPT_TEXT (repeated if short) from the model's own tokenizer."""
    from transformers import AutoTokenizer

    try:
        ids = AutoTokenizer.from_pretrained(str(folder))(PROMPT_TEXT)["input_ids"]
    except (OSError, ValueError, KeyError) as error:
        vocab = config.vocab_size if config is not None else 256
        ids = [(7919 * i + 3) % vocab for i in range(n_tokens)]  # fixed, spread over the vocabulary
        return ids, f"fixed token ids (no usable tokenizer: {type(error).__name__})"
    while len(ids) < n_tokens:
        ids = ids + ids
    return list(ids[:n_tokens]), "tokenized prose"


def _run_job(job: RowJob) -> tuple[RoundFigures | None, str | None]:
    """Run one row-round in a fresh process; (figures, None) or (None or partial, why it failed)."""
    run_dir = Path(job.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    job_file = run_dir / "job.json"
    write_atomic(job_file, json.dumps(job.to_dict(), indent=1) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "lmprof.ablation.row", str(job_file)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return None, lines[-1] if lines else f"the row's process exited with {proc.returncode}"
    return round_figures(load_run(run_dir)), None


def _decode_weight_bytes(config: Any, row: AblationRow) -> int | None:
    from lmprof.engine import cost

    if config is None:
        return None
    return cost.decode_weight_bytes(config, row.weight_dtype())


def _copy_median_run(row_dir: Path, result: RowResult, run_dirs: list[str]) -> None:
    """OUT/<row>/run.json: the round whose decode speed is the row's median (`lmprof show` it)."""
    ran = [(f.decode_tokens_per_s or 0.0, d) for f, d in zip(result.rounds, run_dirs) if f is not None]
    if not ran:
        return
    ran.sort()
    _, chosen = ran[(len(ran) - 1) // 2]
    shutil.copyfile(Path(chosen) / RUN_FILE, row_dir / RUN_FILE)
