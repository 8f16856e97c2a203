"""What does `--deep`'s tracer cost a decode step, option by option? And its own work after?

Same process, same model, paired interleaved rounds: each round runs every configuration once
(in an order that rotates from round to round) and divides each one's median decode step by
the untraced call's of the same round, so drift in the machine's load hits all arms alike.
A configuration is lmprof's own `TorchTraceCollector` with a `TraceOptions`: bare
torch.profiler (CPU activity only), then bare plus each option alone (record_shapes,
profile_memory, with_flops, nn.Module ranges through `_RecordFunctionFast` and, for
comparison, through Python's `record_function` as before issue 21, step markers, Python
stacks, tracemalloc), then `--deep`'s default set, the set before issue 21, and the default
with py-spy sampling the process alongside. The load average is read at every round.

Then `--cli-pairs` pairs of `lmprof profile` runs, plain and `--deep` (16 traced steps),
in fresh processes: the deep run's headline peak RSS against the plain run's, and lmprof's
own work after the measured window (trace export, analysis, tracer calibration).

    python benchmarks/deep_cost.py [--models smollm2-135m-instruct,tiny] [--rounds 5]
        [--steps 16] [--threads N] [--cli-pairs 2]

Targets (issue 21): at the default settings a traced decode step at most 2x an untraced
one on the default model; the export and analysis of 16 traced steps under 2 s; a --deep
run's headline peak RSS within 5% of a plain run's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmprof.collect.function_profilers import make_python_profiler
from lmprof.collect.torch_trace import TorchTraceCollector, TraceOptions
from lmprof.models import resolve_model
from lmprof.workloads.request import DEFAULT_PROMPT

NOTHING = TraceOptions(
    record_shapes=False, profile_memory=False, with_flops=False, module_ranges=False, step_markers=False
)
DEFAULT = TraceOptions()
BEFORE = dataclasses.replace(DEFAULT, with_flops=True, python_allocations=True)  # and record_function ranges
# (label, options, how the module ranges are opened, py-spy alongside)
CONFIGS: list[tuple[str, TraceOptions | None, str, bool]] = [
    ("untraced", None, "fast", False),
    ("bare torch.profiler", NOTHING, "fast", False),
    ("+ record_shapes", dataclasses.replace(NOTHING, record_shapes=True), "fast", False),
    ("+ profile_memory", dataclasses.replace(NOTHING, profile_memory=True), "fast", False),
    ("+ with_flops", dataclasses.replace(NOTHING, with_flops=True), "fast", False),
    ("+ module ranges (_RecordFunctionFast)", dataclasses.replace(NOTHING, module_ranges=True), "fast", False),
    ("+ module ranges (record_function, before)", dataclasses.replace(NOTHING, module_ranges=True), "slow", False),
    ("+ step markers", dataclasses.replace(NOTHING, step_markers=True), "fast", False),
    ("+ Python stacks (with_stack)", dataclasses.replace(NOTHING, with_stack=True), "fast", False),
    ("+ tracemalloc (allocations by stack)", dataclasses.replace(NOTHING, python_allocations=True), "fast", False),
    ("--deep default (this version)", DEFAULT, "fast", False),
    ("--deep default before issue 21", BEFORE, "slow", False),
    ("--deep default + py-spy alongside", DEFAULT, "fast", True),
]  # fmt: skip


class SlowRangeCollector(TorchTraceCollector):
    """Module ranges as lmprof opened them before issue 21: Python's record_function."""

    def _install_module_ranges(self) -> None:
        from torch.autograd.profiler import record_function

        root = type(self._model).__name__
        paths = {m: (name or root) for name, m in self._model.named_modules()}
        stack: list = []

        def pre(module, args) -> None:
            rf = record_function("module:" + paths[module])
            rf.__enter__()
            stack.append(rf)

        def post(module, args, output) -> None:
            if stack:
                stack.pop().__exit__(None, None, None)

        for module in paths:
            self._handles.append(module.register_forward_pre_hook(pre))
            self._handles.append(module.register_forward_hook(post))


def median_decode_step_s(model, inputs, steps: int, options, ranges: str, py_spy: bool) -> float:
    """One generate call of prefill + `steps` decode steps, traced with `options` (None:
    untraced); the median decode step latency, forward start to forward start."""
    starts: list[float] = []
    collector = None
    if options is not None:
        cls = SlowRangeCollector if ranges == "slow" else TorchTraceCollector
        collector = cls(model, time.perf_counter, cuda=False, max_decode_steps=None, options=options)

    def on_forward(module, args, kwargs) -> None:
        if collector is not None:
            collector.mark_step(len(starts))
        starts.append(time.perf_counter())

    handle = model.register_forward_pre_hook(on_forward, with_kwargs=True, prepend=True)
    sampler = make_python_profiler("py-spy").start() if py_spy else None
    try:
        if collector is not None:
            collector.start()
        model.generate(**inputs, max_new_tokens=steps + 2, min_new_tokens=steps + 2, do_sample=False)
        if collector is not None:
            collector.discard()  # the window ended at the last step; the trace is dropped unread
    finally:
        handle.remove()
        if sampler is not None:
            sampler.stop()
    decode = [b - a for a, b in zip(starts[1:], starts[2:])]
    return statistics.median(decode)


def option_rounds(model_name: str, rounds: int, steps: int) -> dict:
    path = resolve_model(model_name, progress=False).path
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    inputs = tok(DEFAULT_PROMPT, return_tensors="pt")
    with torch.inference_mode():
        for _label, options, ranges, _ in CONFIGS:  # warm-up: kineto's first start, caches, page-ins
            median_decode_step_s(model, inputs, 2, options, ranges, False)
        step_s: dict[str, list[float]] = {c[0]: [] for c in CONFIGS}
        ratio: dict[str, list[float]] = {c[0]: [] for c in CONFIGS}
        loads = []
        for r in range(rounds):
            loads.append(os.getloadavg()[0])
            order = CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]
            this: dict[str, float] = {}
            for label, options, ranges, py_spy in order:
                this[label] = median_decode_step_s(model, inputs, steps, options, ranges, py_spy)
            for label, value in this.items():
                step_s[label].append(value)
                ratio[label].append(value / this["untraced"])
            print(f"  round {r + 1}/{rounds} load {loads[-1]:.1f}: "
                  f"default {ratio['--deep default (this version)'][-1]:.2f}x", file=sys.stderr, flush=True)  # fmt: skip
    return {
        "model": model_name,
        "steps": steps,
        "rounds": rounds,
        "step_s": step_s,
        "ratio": ratio,
        "loads": loads,
    }


def cli_pairs(model_name: str, pairs: int, steps: int) -> dict:
    """Plain and --deep `lmprof profile` runs, alternating, in fresh processes."""
    out: dict[str, list] = {"plain_peak": [], "deep_peak": [], "own": [], "loads": [], "slowdown": []}
    with tempfile.TemporaryDirectory(prefix="lmprof-deep-cost-") as tmp:
        for i in range(pairs):
            for kind in ("plain", "deep"):
                run_dir = Path(tmp) / f"{kind}-{i}"
                args = [sys.executable, "-m", "lmprof", "profile", model_name, "--max-new-tokens", str(steps + 1),
                        "--out", str(run_dir)]  # fmt: skip
                if kind == "deep":
                    args += ["--deep", "--deep-steps", str(steps), "--python-profiler", "none"]
                out["loads"].append(os.getloadavg()[0])
                subprocess.run(args, check=True, capture_output=True, text=True)
                run = json.loads((run_dir / "run.json").read_text())
                out[f"{kind}_peak"].append(run["memory"]["peak_rss_bytes"])
                if kind == "deep":
                    out["own"].append(run["deep"]["overhead"]["lmprof"])
                    out["slowdown"].append(run["deep"]["overhead"]["torch.profiler"]["decode_slowdown"])
    return out


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m-instruct,tiny")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cli-pairs", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = {"started": started, "threads": torch.get_num_threads(), "models": []}
    for name in args.models.split(","):
        print(f"{name}: {args.rounds} rounds of {len(CONFIGS)} configurations", file=sys.stderr, flush=True)
        res = option_rounds(name, args.rounds, args.steps) if args.rounds else {"loads": [], "step_s": {}}
        if args.cli_pairs:
            res["cli"] = cli_pairs(name, args.cli_pairs, args.steps)
        results["models"].append(res)
        print(f"\n### {name}, {args.steps} decode steps a call, {args.rounds} rounds, "
              f"{results['threads']} torch threads, started {started}\n")  # fmt: skip
        print(f"load average (1 min) at each round: {' '.join(f'{x:.1f}' for x in res['loads'])}\n")
        print(
            "| configuration | decode step, ms: median (min-max) | x untraced: median of rounds (min-max) |"
        )
        print("|---|---|---|")
        for label, *_ in CONFIGS if args.rounds else []:  # --rounds 0: the lmprof profile pairs only
            ms = [s * 1e3 for s in res["step_s"][label]]
            print(f"| {label} | {spread(ms)} | {spread(res['ratio'][label])} |")
        cli = res.get("cli")
        if cli:
            own = cli["own"]
            ratio = [d / p for d, p in zip(cli["deep_peak"], cli["plain_peak"])]
            print(
                f"\n`lmprof profile` pairs (fresh processes, load {' '.join(f'{x:.1f}' for x in cli['loads'])}):"
            )
            print(f"- headline peak RSS, --deep over plain: {' '.join(f'{r:.3f}' for r in ratio)}")
            print(f"- the run's own 'cost of watching' (traced/untraced decode step): "
                  f"{' '.join(f'{x:.2f}x' for x in cli['slowdown'])}")  # fmt: skip
            for key in ("export_s", "analysis_s", "calibrate_s"):
                print(f"- {key}: {' '.join(f'{o.get(key, 0):.2f}' for o in own)} s")
            both = [o["export_s"] + o["analysis_s"] for o in own]
            print(f"- export + analysis: {' '.join(f'{x:.2f}' for x in both)} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
