"""Generation: prefill a batch of left-padded prompts, then decode one token per step, timing each phase.

`prefill` and `decode_step` are separate so a profiler can time them apart; `generate` runs
both and returns the new tokens with per-step wall times. Rows are left-padded: every row
writes the same cache slot each step, padding is masked out of attention, and rope
positions count only a row's real tokens, so a padded row computes what it would alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lmprof.engine.kv_cache import GrowingKVCache, KVCache, StaticKVCache
from lmprof.engine.model import Transformer, causal_mask
from lmprof.engine.native_decode import NativeInputs, NativeStep, check_native_decode, native_inputs
from lmprof.engine.options import EngineOptions
from lmprof.engine.padding import left_pad
from lmprof.engine.step_timer import StepTimer
from lmprof.errors import UsageError

COMPILE_CAPACITY_STEP = 256  # static-cache slots are allocated in these steps when compiling


@dataclass
class DecodeState:
    """What a batch carries between steps."""

    cache: KVCache | None  # None: no KV cache, every step re-runs the whole sequence
    key_valid: Tensor  # [B, S] bool: cache slot holds a real token (static: S = capacity)
    next_position: Tensor  # [B] rope position of each row's next token
    length: int = 0  # slots used so far
    tokens: Tensor | None = None  # [B, length] every token so far; kept only without a cache
    # What a native decode step reads (weights, embedding, rope tables), gathered at its first step.
    native: NativeInputs | None = None

    @property
    def is_static(self) -> bool:
        return isinstance(self.cache, StaticKVCache)


def new_decode_state(model: Transformer, batch: int, capacity: int, kv_cache: str) -> DecodeState:
    """An empty state; `capacity` (prompt + new tokens) sizes the static cache."""
    config, device = model.config, model.inv_freq.device
    cache: KVCache | None = None
    slots = 0
    if kv_cache == "static":
        cache = StaticKVCache(
            config.n_layers, batch, config.n_kv_heads, capacity, config.head_dim, model.dtype, device
        )
        slots = capacity
    elif kv_cache == "growing":
        cache = GrowingKVCache(config.n_layers)
    elif kv_cache != "off":
        raise UsageError(f"kv_cache must be off, growing or static; got {kv_cache!r}")
    return DecodeState(
        cache=cache,
        key_valid=torch.zeros(batch, slots, dtype=torch.bool, device=device),
        next_position=torch.zeros(batch, dtype=torch.long, device=device),
        tokens=torch.zeros(batch, 0, dtype=torch.long, device=device) if cache is None else None,
    )


def _check_capacity(state: DecodeState, new_tokens: int) -> None:
    """Raise UsageError unless the static cache has room for `new_tokens` more slots."""
    capacity = state.key_valid.shape[1]
    if state.length + new_tokens > capacity:
        raise UsageError(f"static KV cache full: {state.length} + {new_tokens} > {capacity} slots")


def _claim_slots(state: DecodeState, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Reserve cache slots for T new tokens; returns (slots [T], rope positions [B, T])."""
    T = valid.shape[1]
    slots = torch.arange(state.length, state.length + T, device=valid.device)
    positions = (state.next_position[:, None] + valid.long().cumsum(dim=1) - 1).clamp(min=0)
    state.next_position = state.next_position + valid.sum(dim=1)
    if state.is_static:
        _check_capacity(state, T)
        state.key_valid[:, state.length : state.length + T] = valid
    else:
        state.key_valid = torch.cat([state.key_valid, valid], dim=1)
    state.length += T
    return slots, positions


def _forward_without_cache(model: Transformer, state: DecodeState, tokens: Tensor) -> Tensor:
    # Recompute everything: the sequence so far plus `tokens`, all positions from the valid mask.
    state.tokens = torch.cat([state.tokens, tokens], dim=1)  # [B, S]
    positions = (state.key_valid.long().cumsum(dim=1) - 1).clamp(min=0)
    slots = torch.arange(state.length, device=tokens.device)
    mask = causal_mask(slots, state.key_valid)
    return model(state.tokens, positions, mask, last_only=True)[:, -1]


def prefill(
    model: Transformer,
    state: DecodeState,
    tokens: Tensor,
    valid: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Run the prompt tokens [B, T] (valid [B, T]: False for left padding) -> next-token logits [B, V].

    With `chunk_size`, the prompt goes through in chunks that each attend to the cache so far,
    bounding activation memory at the price of more, smaller matmuls.
    """
    if valid is None:
        valid = torch.ones_like(tokens, dtype=torch.bool)
    base = state.length
    slots, positions = _claim_slots(state, valid)
    if state.cache is None:
        return _forward_without_cache(model, state, tokens)
    T = tokens.shape[1]
    chunk = chunk_size or T
    for start in range(0, T, chunk):
        end = min(T, start + chunk)
        # A growing cache returns only the slots written so far; a static one returns them all.
        key_valid = state.key_valid if state.is_static else state.key_valid[:, : base + end]
        mask = causal_mask(slots[start:end], key_valid)  # [B, 1, chunk, S]
        logits = model(
            tokens[:, start:end], positions[:, start:end], mask, state.cache, slots[start:end], last_only=True
        )
    return logits[:, -1]


def _decode_forward(
    model: Transformer, tokens: Tensor, positions: Tensor, slots: Tensor, key_valid: Tensor, cache: KVCache
) -> Tensor:
    mask = causal_mask(slots, key_valid)  # [B, 1, 1, S]
    return model(tokens, positions, mask, cache, slots)[:, -1]  # [B, V]


def compiled_decode_forward(model: Transformer) -> Callable[..., Tensor]:
    """`_decode_forward` under torch.compile, compiled once per model (CUDA graphs on CUDA)."""
    compiled = model.__dict__.get("_compiled_decode_forward")
    if compiled is None:
        mode = "reduce-overhead" if model.inv_freq.is_cuda else None
        compiled = torch.compile(_decode_forward, mode=mode, fullgraph=True)
        model.__dict__["_compiled_decode_forward"] = compiled
    return compiled


def prepare_native_decode(model: Transformer, state: DecodeState) -> None:
    """Check the model and gather what the native steps read (weights, rope tables), once per
    generation; run_steps does it before the first step's timing starts."""
    if state.native is None:
        check_native_decode(model)
        state.native = native_inputs(model, state.key_valid.shape[1])


def _native_decode_forward(model: Transformer, state: DecodeState, tokens: Tensor) -> Tensor:
    # The native call claims the slot itself (marks it valid, advances each row's position by
    # one, as _claim_slots does for one valid token a row): no torch op runs outside it.
    if not state.is_static:
        raise UsageError("native_decode needs kv_cache='static'")
    _check_capacity(state, 1)
    prepare_native_decode(model, state)
    step = NativeStep(state.native, state.key_valid, state.next_position, state.length)
    state.length += 1
    return model(tokens[:, None], cache=state.cache, native=step)[:, -1]  # [B, V]


def decode_step(
    model: Transformer, state: DecodeState, tokens: Tensor, compiled: bool = False, native: bool = False
) -> Tensor:
    """One new token per row: tokens [B] -> next-token logits [B, V].

    compiled: the torch.compile'd step; native: one call into lmprof's C++ decode kernels."""
    if native and state.cache is not None:
        return _native_decode_forward(model, state, tokens)
    tokens = tokens[:, None]  # [B, 1]
    slots, positions = _claim_slots(state, torch.ones_like(tokens, dtype=torch.bool))
    if state.cache is None:
        return _forward_without_cache(model, state, tokens)
    forward = compiled_decode_forward(model) if compiled else _decode_forward
    return forward(model, tokens, positions, slots, state.key_valid, state.cache)


def sample(
    logits: Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    native: bool = False,
) -> Tensor:
    """logits [B, V] -> tokens [B]: greedy when temperature is 0, else softmax sampling (top-k).

    native: greedy picks through lmprof's C++ argmax (the same ties and NaNs as torch's; on
    [8, 49152] fp32 logits, one thread, 0.05 ms where torch's took 0.34-0.66 ms)."""
    if temperature <= 0:
        if native and logits.device.type == "cpu" and logits.dtype == torch.float32:
            from lmprof.engine.native import load_native_ops

            return load_native_ops().argmax_rows(logits.contiguous())
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth_best = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _native_pick(options: EngineOptions, temperature: float, device: torch.device) -> Callable | None:
    """lmprof_native::pick_greedy where a decode step's pick can run natively (greedy, CPU,
    native_decode), else None."""
    if not options.native_decode or temperature > 0 or device.type != "cpu":
        return None
    from lmprof.engine.native import load_native_ops

    return load_native_ops().pick_greedy


@dataclass
class GenerationResult:
    tokens: Tensor  # [B, n_new]; after a row's eos, pad_token_id
    prompt_lens: list[int]
    prefill_s: float  # prompt forward + first token (time to first token)
    decode_step_s: list[float] = field(default_factory=list)  # one per decode step (all rows together)
    finished: Tensor | None = None  # [B] bool: row stopped on eos

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens produced by decode steps per second of decode time, all rows counted."""
        total_s = sum(self.decode_step_s)
        return self.batch * len(self.decode_step_s) / total_s if total_s > 0 else float("nan")

    def sequences(self, eos_token_id: int | list[int] | None = None) -> list[list[int]]:
        """New tokens per row, cut after the first eos."""
        eos = _as_set(eos_token_id)
        rows = []
        for row in self.tokens.tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            rows.append(row[:cut])
        return rows


def _as_set(eos_token_id: int | list[int] | None) -> set[int]:
    if eos_token_id is None:
        return set()
    return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with `threads` intra-op threads, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_steps(
    model: Transformer,
    state: DecodeState,
    tokens: Tensor,
    valid: Tensor,
    max_new_tokens: int,
    options: EngineOptions,
    timer: StepTimer,
    *,
    eos: Tensor,
    pad_token_id: int = 0,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    prefill_scope: Callable[[], AbstractContextManager] = nullcontext,
    decode_scope: Callable[[], AbstractContextManager] = nullcontext,
    before_step: Callable[[int], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """The generation loop: prefill and the first pick, then a decode step and a pick per new
    token until `max_new_tokens` or every row has finished (a finished row takes padding).
    Each (step + pick) is timed by `timer`. generate() and lmprof's profiled engine workload
    both run this one loop; the profiler wraps prefill and decode in phases (the scopes; decode
    is entered only when a step follows the prefill) and marks each step (before_step, with
    the step index, 0 for the prefill) outside the timing.

    Returns the new tokens [B, n] (on the model's device) and which rows finished [B].
    Callers enter torch.inference_mode() around the state and this loop.
    """
    with prefill_scope():
        if before_step is not None:
            before_step(0)
        timer.start()
        logits = prefill(model, state, tokens, valid, options.prefill_chunk_size)
        next_tokens = sample(logits, temperature, top_k, generator, native=options.native_decode)
        finished = torch.isin(next_tokens, eos)
        timer.stop()
    out = [next_tokens]
    if max_new_tokens > 1:
        native_pick = _native_pick(options, temperature, next_tokens.device)
        if options.native_decode:
            prepare_native_decode(model, state)
        with decode_scope():
            for step in range(1, max_new_tokens):
                if bool(finished.all()):
                    break
                if before_step is not None:
                    before_step(step)
                timer.start()
                logits = decode_step(
                    model, state, next_tokens, compiled=options.compile_decode, native=options.native_decode
                )
                if native_pick:  # argmax, padding for finished rows and the eos check: one op
                    next_tokens = native_pick(logits, finished, eos, pad_token_id)
                else:
                    next_tokens = sample(logits, temperature, top_k, generator, native=options.native_decode)
                    next_tokens = torch.where(finished, pad_token_id, next_tokens)
                    finished = finished | torch.isin(next_tokens, eos)
                timer.stop()
                out.append(next_tokens)
    return torch.stack(out, dim=1), finished


@torch.inference_mode()
def generate(
    model: Transformer,
    prompts: list[list[int]] | Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int = 0,
    options: EngineOptions | None = None,
    generator: torch.Generator | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> GenerationResult:
    """Generate up to `max_new_tokens` per prompt; a row stops at eos, the batch when all rows have.

    prompts: token lists (left-padded here) or a [B, T] tensor of unpadded prompts.
    options: run-time switches (kv_cache, prefill_chunk_size, compile_decode, threads);
    defaults to the options the model was loaded with.
    """
    if max_new_tokens < 1:
        raise UsageError(f"max_new_tokens must be positive, got {max_new_tokens}")
    options = options or model.options
    device = model.inv_freq.device
    if isinstance(prompts, Tensor):
        tokens, valid = prompts.to(device), torch.ones_like(prompts, dtype=torch.bool, device=device)
    else:
        tokens, valid = left_pad(prompts, pad_token_id, device)
    B, T = tokens.shape
    eos = torch.tensor(sorted(_as_set(eos_token_id)), dtype=torch.long, device=device)

    with torch_threads(options.threads):
        capacity = T + max_new_tokens
        if options.compile_decode:
            # Each capacity is a new static shape (and CUDA graph): round up so lengths share them.
            capacity = -(-capacity // COMPILE_CAPACITY_STEP) * COMPILE_CAPACITY_STEP
        state = new_decode_state(model, B, capacity, options.kv_cache)
        if options.compile_decode and device.type == "cuda":
            # CUDA graphs replay fixed addresses: the cache and the mask buffer must stay put.
            for tensor in [*state.cache.tensors(), state.key_valid]:
                torch._dynamo.mark_static_address(tensor)
        if options.native_decode:
            from lmprof.engine.native import load_native_ops

            load_native_ops()  # a first build (10-60 s) must not land inside the timed prefill
        timer = StepTimer(device, clock)
        new_tokens, finished = run_steps(
            model, state, tokens, valid, max_new_tokens, options, timer,
            eos=eos, pad_token_id=pad_token_id, temperature=temperature, top_k=top_k, generator=generator,
        )  # fmt: skip
        durations = timer.durations_s()
    return GenerationResult(
        tokens=new_tokens.cpu(),
        prompt_lens=valid.sum(dim=1).tolist(),
        prefill_s=durations[0],
        decode_step_s=durations[1:],
        finished=finished.cpu(),
    )
