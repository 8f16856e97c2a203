"""Decode speed of lmprof.engine against transformers `generate`, measured side by side.

    python benchmarks/engine_decode.py [--model DIR] [--threads N] [--rounds 3]

Each round runs every contender once, in the same order, on the same prompt: transformers
generate (fp32), the engine in fp32, the engine with int8 weights, and the fp32 engine at
batch 8. Decode tokens/s counts tokens made after the first one (prefill excluded), for
transformers timed by a stopping criterion that stamps each new token. Ratios are taken
within a round, then the median over rounds is printed, beside the bandwidth floor (weight
bytes read per step / a measured copy bandwidth).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import psutil
import torch
from transformers import AutoModelForCausalLM, StoppingCriteria, StoppingCriteriaList

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lmprof.engine import EngineOptions, cost, generate, load_hf_folder  # noqa: E402

DEFAULT_MODEL = Path("/root/.cache/lmprof/models/smollm2-135m-instruct")


class TokenStamps(StoppingCriteria):
    """Records the host time whenever transformers has produced a token; never stops generation."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def idle_cores(sample_s: float = 0.5) -> int:
    busy = psutil.cpu_percent(interval=sample_s, percpu=True)
    return max(1, sum(1 for pct in busy if pct < 25.0))


def copy_bandwidth_bytes_per_s(megabytes: int = 256, repeats: int = 5) -> float:
    """Best of a few large tensor copies; a copy reads and writes every byte."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    best_s = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best_s = min(best_s, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best_s


def hf_decode_tokens_per_s(model, tokens: torch.Tensor, new_tokens: int) -> tuple[float, list[int]]:
    stamps = TokenStamps()
    with torch.inference_mode():
        out = model.generate(
            tokens,
            attention_mask=torch.ones_like(tokens),
            do_sample=False,
            min_new_tokens=new_tokens,
            max_new_tokens=new_tokens,
            stopping_criteria=StoppingCriteriaList([stamps]),
            pad_token_id=0,
        )
    decode_s = stamps.stamps[-1] - stamps.stamps[0]
    return tokens.shape[0] * (len(stamps.stamps) - 1) / decode_s, out[0, tokens.shape[1] :].tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="HF folder (safetensors)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: idle cores)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="batch size of the batched contender")
    args = parser.parse_args(argv)
    if not args.model.is_dir():
        parser.error(f"no model folder at {args.model}")
    threads = args.threads or idle_cores()
    torch.set_num_threads(threads)

    hf = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    fp32_options = EngineOptions(fuse_qkv=True, fuse_gate_up=True, column_major=True)
    engines = {
        "engine fp32": load_hf_folder(args.model, fp32_options),
        "engine int8": load_hf_folder(args.model, EngineOptions(int8=True)),
    }
    config = engines["engine fp32"].config
    vocab = config.vocab_size
    tokens = torch.randint(3, vocab, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    batch_tokens = torch.randint(
        3, vocab, (args.batch, args.prompt_len), generator=torch.Generator().manual_seed(1)
    )

    def run_engine(name: str, prompt: torch.Tensor, new_tokens: int) -> tuple[float, list[int]]:
        model = engines["engine fp32" if name.startswith("engine fp32") else name]
        result = generate(model, prompt, new_tokens)
        return result.decode_tokens_per_s, result.tokens[0].tolist()

    contenders = {
        "transformers fp32": lambda n: hf_decode_tokens_per_s(hf, tokens, n),
        "engine fp32": lambda n: run_engine("engine fp32", tokens, n),
        "engine int8": lambda n: run_engine("engine int8", tokens, n),
        f"engine fp32 batch {args.batch}": lambda n: run_engine("engine fp32 batch", batch_tokens, n),
    }
    for run in contenders.values():  # warm-up: first calls allocate and pick kernels
        run(8)

    rates: dict[str, list[float]] = {name: [] for name in contenders}
    outputs: dict[str, list[int]] = {}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            rate, out = run(args.new_tokens)
            rates[name].append(rate)
            outputs[name] = out

    bandwidth = copy_bandwidth_bytes_per_s()
    floors = {
        "engine fp32": cost.decode_weight_bytes(config, "float32"),
        "transformers fp32": cost.decode_weight_bytes(config, "float32"),
        "engine int8": cost.decode_weight_bytes(config, "int8"),
    }
    print(f"model {args.model.name}: {cost.param_count(config) / 1e6:.1f} M params, threads {threads}, "
          f"prompt {args.prompt_len}, new tokens {args.new_tokens}, rounds {args.rounds}")  # fmt: skip
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    print(f"{'contender':<26}{'decode tok/s (median)':>24}{'all rounds':>30}{'floor tok/s':>14}")
    for name, values in rates.items():
        weight_bytes = floors.get(name)
        floor = f"{1 / cost.decode_floor_s(weight_bytes, bandwidth):.1f}" if weight_bytes else "-"
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name:<26}{statistics.median(values):>24.1f}{shown:>30}{floor:>14}")

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

    batch_name = f"engine fp32 batch {args.batch}"
    print(f"engine fp32 / transformers fp32: {ratio('engine fp32', 'transformers fp32'):.2f}x (target >= 2)")
    print(f"engine int8 / engine fp32:       {ratio('engine int8', 'engine fp32'):.2f}x (target >= 1.6)")
    print(f"batch {args.batch} / batch 1 throughput:  {ratio(batch_name, 'engine fp32'):.2f}x (target >= 5)")
    same = outputs["engine fp32"] == outputs["transformers fp32"]
    print(f"engine fp32 greedy tokens equal transformers': {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
