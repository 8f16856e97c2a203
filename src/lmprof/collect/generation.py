"""Step-by-step timing of one `generate()` call through a forward pre-hook on the model.

Every forward call of a causal LM inside `generate` produces one token: the first is
prefill (the whole prompt), each later one a decode step. A step spans from its forward's
start to the next forward's start, so it includes sampling and generate's bookkeeping,
which is what the user waits for between tokens. On CUDA each boundary records a CUDA
event (no synchronization per step, so the GPU queue stays as full as without lmprof);
the step latencies are then GPU-timeline intervals read once the call ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmprof.collect.device import CpuDevice, CudaDevice
from lmprof.collect.phases import PhaseRecorder
from lmprof.record.run import Generation


class GenerationWatcher:
    def __init__(
        self,
        model: Any,
        phases: PhaseRecorder,
        now_s: Callable[[], float],
        device: CpuDevice | CudaDevice,
        call: str,
        call_start_s: float,
        measure_kv: bool = False,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        self._model = model
        self._phases = phases
        self._now_s = now_s
        self._device = device
        self._call = call
        self._call_start_s = call_start_s
        self._step_start_s: list[float] = []
        self._events: list[Any] = []
        self._prompt_shape: tuple[int, int] | None = None
        self._handle: Any = None
        self._prefill = None
        self._decode = None
        self._generate_start_s = 0.0
        self._measure_kv = measure_kv
        self._on_step = on_step
        # (session time, KV-cache bytes) at each forward's start: the cache as the step finds it.
        self.kv_samples: list[tuple[float, int]] = []

    def attach(self) -> None:
        self._generate_start_s = self._now_s()
        self._prefill = self._phases.open("prefill")
        # prepend: the step boundary comes before any other pre-hook's work (--deep's module ranges)
        self._handle = self._model.register_forward_pre_hook(self._on_forward, with_kwargs=True, prepend=True)

    def _on_forward(self, module: Any, args: tuple, kwargs: dict) -> None:
        if self._on_step is not None:
            self._on_step(len(self._step_start_s))
        if self._device.is_cuda:
            self._events.append(self._device.record_event())
        n = len(self._step_start_s)
        if self._measure_kv:
            # transformers 5 passes the cache as `cache`; 4.x as `past_key_values`
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            self.kv_samples.append((self._now_s(), kv_cache_bytes(cache)))
        if n == 0:
            self._prompt_shape = _input_shape(args, kwargs)
        if n == 1:
            # The first token exists: prefill ends, decode begins (both synchronize on CUDA).
            closed = self._phases.close(self._prefill)
            self._prefill = None
            self._step_start_s.append(closed.end_s if closed is not None else self._now_s())
            self._decode = self._phases.open("decode")
            return
        self._step_start_s.append(self._now_s())

    def detach(self, output: Any, *, complete: bool = True) -> Generation | None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        end_phase = self._phases.close(self._decode or self._prefill, complete=complete)
        self._decode = self._prefill = None
        end_s = end_phase.end_s if end_phase is not None else self._now_s()
        starts = self._step_start_s
        if not starts:
            return None
        boundaries = starts + [end_s]
        step_s = [b - a for a, b in zip(boundaries, boundaries[1:])]
        timing = "host_clock"
        if self._events:
            end_event = self._device.record_event()
            end_event.synchronize()
            marks = self._events + [end_event]
            step_s = [a.elapsed_time(b) / 1e3 for a, b in zip(marks, marks[1:])]
            timing = "cuda_events"
        batch, prompt_tokens = self._prompt_shape or (1, 0)
        new_tokens = _new_tokens(output, prompt_tokens, default=len(starts))
        first_token_s = boundaries[1]
        return Generation(
            call=self._call,
            batch_size=batch,
            prompt_tokens=prompt_tokens,
            new_tokens=new_tokens,
            start_s=self._call_start_s,
            first_token_s=first_token_s,
            end_s=end_s,
            prefill_s=first_token_s - self._generate_start_s,
            decode_s=end_s - first_token_s,
            decode_step_latencies_s=step_s[1:],
            timing=timing,
        )


def _input_shape(args: tuple, kwargs: dict) -> tuple[int, int] | None:
    for value in (kwargs.get("input_ids"), args[0] if args else None, kwargs.get("inputs_embeds")):
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape) >= 2:
            return int(shape[0]), int(shape[1])
    return None


def _new_tokens(output: Any, prompt_tokens: int, default: int) -> int:
    sequences = getattr(output, "sequences", output)
    shape = getattr(sequences, "shape", None)
    if shape is not None and len(shape) == 2 and prompt_tokens:
        return int(shape[1]) - prompt_tokens
    return default


def kv_cache_bytes(cache: Any) -> int:
    """Bytes held by a transformers cache object's key and value tensors (0 when empty)."""
    if cache is None:
        return 0
    total = 0
    seen: set[int] = set()
    for layer in getattr(cache, "layers", None) or []:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if t is not None and hasattr(t, "untyped_storage") and id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    if not total:  # older caches: key_cache / value_cache lists
        for name in ("key_cache", "value_cache"):
            for t in getattr(cache, name, None) or []:
                if hasattr(t, "numel"):
                    total += t.numel() * t.element_size()
    return total
