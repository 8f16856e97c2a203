"""Issue 5's targets for lmprof's engine, as ratios from paired, interleaved rounds.

    python benchmarks/engine_vs_peers.py [--model DIR] [--threads N] [--rounds 5] [--gguf F32.gguf] [--json OUT]

Every round runs each contender once, in the same order, on the same 32-token prompt (prose
from the model's own tokenizer), 128 new tokens, greedy, no early stop:

  transformers fp32      model.generate, timed per token by a stopping criterion
  engine fp32            lmprof.engine, fused projections, column-major weights, static KV
  llama.cpp f32          llama-cpp-python on an f32 GGUF of the same weights (skipped when
                         llama_cpp is not importable or no GGUF is given)
  engine int8            int8 weight-only, fused projections
  engine fp32 batch 8    eight prompts at once, throughput over all of them
  engine fp32 row-major  the engine's default fp32 weights (checkpoint layout, unfused), at
                         batch 1 and batch 8

Decode tokens/s counts tokens after the first (prefill excluded). A ratio is taken within a
round (both contenders saw the same machine load), and the median over rounds is printed
next to its target. The floor is fp32 weight bytes over the best read bandwidth that
`lmprof sysinfo --measure` found at the same thread count (cached probes; measured if none).
Threads default to the cores idle right now: on a shared machine, more threads than free
cores make every contender collapse.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lmprof.ablation_runner import PROMPT_TEXT  # noqa: E402
from lmprof.analyze.ablation import common_prefix_tokens, paired_speedup, token_agreement  # noqa: E402
from lmprof.analyze.hardware import best_read_gbps  # noqa: E402
from lmprof.collect.system import collect_system_info  # noqa: E402
from lmprof.engine import EngineOptions, cost, generate, load_hf_folder  # noqa: E402
from lmprof.models import resolve_model  # noqa: E402
from lmprof.probe_cache import measured_hardware  # noqa: E402

TARGETS = {  # issue 5: (numerator, denominator, minimum ratio)
    "engine fp32 / transformers fp32": ("engine fp32", "transformers fp32", 2.0),
    "engine fp32 / llama.cpp f32": ("engine fp32", "llama.cpp f32", 1.0),
    "engine int8 / engine fp32": ("engine int8", "engine fp32", 1.6),
    "batch 8 / batch 1 throughput": ("engine fp32 batch 8", "engine fp32", 5.0),
    # The same ratio with checkpoint-layout weights: column-major storage speeds up one row but
    # not eight, so the layout changes how much batching buys.
    "batch 8 / batch 1, row-major weights": ("engine fp32 row-major batch 8", "engine fp32 row-major", 5.0),
}
FLOOR_SHARE_TARGET = 0.75
AGREEMENT_TARGET = 0.90

Contender = Callable[[int], tuple[float, list[int]]]  # new tokens -> (decode tokens/s, first row's tokens)


class TokenStamps(StoppingCriteria):
    """Records the host time whenever transformers has produced a token; never stops generation."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def idle_cores(sample_s: float = 1.0) -> int:
    busy = psutil.cpu_percent(interval=sample_s, percpu=True)
    return max(1, sum(1 for pct in busy if pct < 25.0))


def transformers_contender(model, prompt: torch.Tensor) -> Contender:
    def run(new_tokens: int) -> tuple[float, list[int]]:
        stamps = TokenStamps()
        with torch.inference_mode():
            out = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=False,
                min_new_tokens=new_tokens,
                max_new_tokens=new_tokens,
                stopping_criteria=StoppingCriteriaList([stamps]),
                pad_token_id=0,
            )
        rate = prompt.shape[0] * (len(stamps.stamps) - 1) / (stamps.stamps[-1] - stamps.stamps[0])
        return rate, out[0, prompt.shape[1] :].tolist()

    return run


def engine_contender(model, prompts: torch.Tensor) -> Contender:
    def run(new_tokens: int) -> tuple[float, list[int]]:
        result = generate(model, prompts, new_tokens)
        return result.decode_tokens_per_s, result.tokens[0].tolist()

    return run


def llama_cpp_contender(gguf: Path | None, prompt: list[int], threads: int) -> tuple[Contender | None, str]:
    """llama.cpp's own decode loop over an f32 GGUF, or (None, why not)."""
    try:
        import llama_cpp
    except ImportError:
        return None, "llama_cpp (llama-cpp-python) is not importable here"
    if gguf is None or not gguf.is_file():
        return None, "no f32 GGUF of the weights given (--gguf)"
    llm = llama_cpp.Llama(model_path=str(gguf), n_threads=threads, n_ctx=512, n_batch=512, verbose=False)

    def run(new_tokens: int) -> tuple[float, list[int]]:
        llm.reset()
        llm.eval(prompt)
        tokens: list[int] = []
        stamps: list[float] = []
        for _ in range(new_tokens):
            # Greedy: the argmax of the last evaluated position's logits.
            token = int(llm.scores[llm.n_tokens - 1].argmax())
            stamps.append(time.perf_counter())
            tokens.append(token)
            llm.eval([token])
        return (len(stamps) - 1) / (stamps[-1] - stamps[0]), tokens

    return run, f"llama-cpp-python {llama_cpp.__version__}"


def teacher_forced_agreement(model, prompt: list[int], reference: list[int]) -> float:
    """How often `model`'s argmax picks the reference's next token when fed the reference's own
    context: two free-running outputs that differ once stop lining up after it."""
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + reference[:-1]]))  # [1, T + n - 1, V]
    predicted = logits[0, len(prompt) - 1 :].argmax(dim=-1).tolist()
    return token_agreement(predicted, reference)


def prompt_ids(folder: Path, n_tokens: int) -> list[int]:
    ids = AutoTokenizer.from_pretrained(str(folder))(PROMPT_TEXT)["input_ids"]
    while len(ids) < n_tokens:
        ids = ids + ids
    return list(ids[:n_tokens])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="HF folder (default: lmprof's default model)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: idle cores now)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--gguf", type=Path, default=None, help="f32 GGUF of the same weights, for llama.cpp")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    args = parser.parse_args(argv)
    folder = args.model or resolve_model(None).path
    load_start = list(psutil.getloadavg())
    threads = args.threads or idle_cores()
    torch.set_num_threads(threads)

    probes, probe_file, from_cache = measured_hardware(threads=threads)
    read_gbps = best_read_gbps(probes.probes, "cpu")

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    fp32 = load_hf_folder(folder, EngineOptions(fuse_qkv=True, fuse_gate_up=True, column_major=True))
    int8 = load_hf_folder(folder, EngineOptions(fuse_qkv=True, fuse_gate_up=True, int8=True))
    config = fp32.config
    ids = prompt_ids(folder, args.prompt_len)
    prompt = torch.tensor([ids])
    batch = torch.tensor([ids[k:] + ids[:k] for k in range(args.batch)])
    contenders: dict[str, Contender] = {
        "transformers fp32": transformers_contender(hf, prompt),
        "engine fp32": engine_contender(fp32, prompt),
    }
    llama, llama_note = llama_cpp_contender(args.gguf, ids, threads)
    if llama is not None:
        contenders["llama.cpp f32"] = llama
    contenders["engine int8"] = engine_contender(int8, prompt)
    contenders[f"engine fp32 batch {args.batch}"] = engine_contender(fp32, batch)
    row_major = load_hf_folder(folder, EngineOptions())
    contenders["engine fp32 row-major"] = engine_contender(row_major, prompt)
    contenders[f"engine fp32 row-major batch {args.batch}"] = engine_contender(row_major, batch)

    for run in contenders.values():  # warm-up: first calls allocate and pick kernels
        run(8)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    tokens: dict[str, list[int]] = {}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            rate, out = run(args.new_tokens)
            rates[name].append(rate)
            tokens[name] = out

    system = collect_system_info(torch)
    load_end = list(psutil.getloadavg())
    fp32_bytes = cost.decode_weight_bytes(config, "float32")
    floor_s = fp32_bytes / (read_gbps * 1e9) if read_gbps else None
    engine_step_s = 1.0 / statistics.median(rates["engine fp32"])
    floor_share = floor_s / engine_step_s if floor_s else None
    agreement = teacher_forced_agreement(int8, ids, tokens["engine fp32"])
    free_running = token_agreement(tokens["engine int8"], tokens["engine fp32"])
    prefix = common_prefix_tokens(tokens["engine int8"], tokens["engine fp32"])
    ratios = {}
    for label, (num, den, target) in TARGETS.items():
        num = num.replace("batch 8", f"batch {args.batch}")
        if num in rates and den in rates:
            ratios[label] = (paired_speedup(rates[num], rates[den]), target)

    cpu = system["cpu"]
    print(f"date {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}")
    print(f"machine {cpu['model']}, {cpu['physical_cores']} cores / {cpu['logical_cores']} threads, "
          f"torch {system['packages']['torch']}, transformers {system['packages']['transformers']}")  # fmt: skip
    print(f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end; threads {threads}")
    print(f"model {folder.name}: {cost.param_count(config) / 1e6:.1f} M params, fp32 weights "
          f"{fp32_bytes / 1e6:.0f} MB; prompt {args.prompt_len}, new tokens {args.new_tokens}, rounds {args.rounds}")  # fmt: skip
    print(
        f"best read bandwidth {read_gbps:.1f} GB/s ({'cached' if from_cache else 'measured now'}: {probe_file})"
    )
    if llama is None:
        print(f"llama.cpp f32: skipped ({llama_note})")
    print(f"{'contender':<32}{'decode tok/s (median)':>24}   all rounds")
    for name, values in rates.items():
        print(f"{name:<32}{statistics.median(values):>24.1f}   {', '.join(f'{v:.1f}' for v in values)}")
    print("targets (median of per-round ratios):")
    results = {}
    for label, (ratio, target) in ratios.items():
        verdict = "met" if ratio >= target else "MISSED"
        results[label] = {"ratio": ratio, "target": target, "met": ratio >= target}
        print(f"  {label:<38} {ratio:6.2f}x  (target >= {target:g})  {verdict}")
    if floor_share is not None:
        verdict = "met" if floor_share >= FLOOR_SHARE_TARGET else "MISSED"
        print(f"  {'engine fp32 share of the floor':<38} {floor_share:6.1%}   (floor {floor_s * 1e3:.1f} ms/token, "
              f"measured {engine_step_s * 1e3:.1f} ms; target >= 75%)  {verdict}")  # fmt: skip
    verdict = "met" if agreement >= AGREEMENT_TARGET else "MISSED"
    print(
        f"  {'int8 greedy agreement with fp32':<38} {agreement:6.1%}   (teacher-forced; target >= 90%)  {verdict}"
    )
    print(f"    free-running: {free_running:.1%} of positions equal, the first {prefix} tokens identical")
    same = tokens["engine fp32"] == tokens["transformers fp32"]
    print(f"engine fp32 greedy tokens equal transformers': {same}")
    if args.json:
        args.json.write_text(json.dumps({
            "threads": threads, "load_avg_start": load_start, "load_avg_end": load_end, "rates": rates,
            "targets": results, "floor_share": floor_share, "floor_s": floor_s, "read_gbps": read_gbps,
            "int8_agreement": agreement, "int8_free_running_agreement": free_running, "int8_common_prefix": prefix,
            "llama_cpp": llama_note, "system": system,
        }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
