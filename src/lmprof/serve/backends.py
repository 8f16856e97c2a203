"""The two model backends the server can run, behind one batch interface.

A backend loads a model and opens a `BatchForward` for a list of prompts: `prefill()` runs
the left-padded prompts and returns next-token logits [B, V]; `decode(tokens [B])` runs one
step. The worker samples, streams and cancels between these calls, which is why the server
drives the model step by step instead of calling `generate`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from lmprof.engine.generate import left_pad
from lmprof.errors import ModelLoadError, UsageError

ENGINES = ("transformers", "lmprof")


class BatchForward(Protocol):
    def prefill(self) -> Tensor: ...

    def decode(self, tokens: Tensor) -> Tensor: ...


@dataclass
class LoadedModel:
    """What the server runs: a backend plus the facts the API and the Run report."""

    engine: str
    model: Any
    device: torch.device
    dtype: str
    eos_token_ids: list[int]
    pad_token_id: int
    context_tokens: int  # prompt + completion tokens the model's positions allow
    switches: dict[str, Any] = field(default_factory=dict)  # lmprof's engine: engine_switches, with why

    def open_batch(self, prompts: list[list[int]], max_new_tokens: int) -> BatchForward:
        if self.engine == "lmprof":
            return EngineBatch(self.model, prompts, max_new_tokens, self.pad_token_id)
        return TransformersBatch(self.model, prompts, self.pad_token_id, self.device)

    def synchronize(self) -> None:
        """Wait for the device before a host clock read (a no-op on CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class TransformersBatch:
    """AutoModelForCausalLM over a DynamicCache: left padding masked by attention_mask, and
    positions counted over real tokens only, so a padded row computes what it would alone."""

    def __init__(self, model: Any, prompts: list[list[int]], pad_token_id: int, device: torch.device) -> None:
        self.model = model
        self.tokens, valid = left_pad(prompts, pad_token_id, device)  # [B, T]
        self.mask = valid.long()  # [B, T], grows one column per step
        self.next_position: Tensor | None = None  # [B]
        self.past: Any = None

    def prefill(self) -> Tensor:
        from transformers import DynamicCache

        positions = (self.mask.cumsum(dim=1) - 1).clamp(min=0)  # [B, T]
        out = self.model(
            input_ids=self.tokens,
            attention_mask=self.mask,
            position_ids=positions,
            cache=DynamicCache(config=self.model.config),
            use_cache=True,
            logits_to_keep=1,
        )
        self.past = out.cache
        self.next_position = positions[:, -1] + 1
        return out.logits[:, -1].float()  # [B, V]

    def decode(self, tokens: Tensor) -> Tensor:
        ones = torch.ones_like(self.mask[:, :1])
        self.mask = torch.cat([self.mask, ones], dim=1)
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.mask,
            position_ids=self.next_position[:, None],
            cache=self.past,
            use_cache=True,
        )
        self.past = out.cache
        self.next_position = self.next_position + 1
        return out.logits[:, -1].float()


class EngineBatch:
    """lmprof's engine: a DecodeState sized for the prompts plus the longest completion."""

    def __init__(self, model: Any, prompts: list[list[int]], max_new_tokens: int, pad_token_id: int) -> None:
        from lmprof.engine.generate import new_decode_state

        self.model = model
        device = model.inv_freq.device
        self.tokens, self.valid = left_pad(prompts, pad_token_id, device)
        capacity = self.tokens.shape[1] + max_new_tokens
        self.state = new_decode_state(model, len(prompts), capacity, model.options.kv_cache)

    def prefill(self) -> Tensor:
        from lmprof.engine.generate import prefill

        options = self.model.options
        return prefill(self.model, self.state, self.tokens, self.valid, options.prefill_chunk_size).float()

    def decode(self, tokens: Tensor) -> Tensor:
        from lmprof.engine.generate import decode_step

        options = self.model.options
        logits = decode_step(
            self.model, self.state, tokens, compiled=options.compile_decode, native=options.native_decode
        )
        return logits.float()


def _first_id(value: Any) -> int | None:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _eos_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [int(value)]


def load_model(
    engine: str,
    folder: Path,
    gguf_file: str | None,
    device: str,
    dtype: str,
    native: bool | None = None,
    huge_pages: bool | None = None,
) -> LoadedModel:
    """Load `folder` for `engine` on `device` in `dtype` (a concrete dtype name, or "auto" for
    transformers' checkpoint dtype). `native` and `huge_pages` are lmprof's engine switches:
    None takes each where it can run (engine_switches)."""
    try:
        if engine == "lmprof":
            return _load_engine(folder, device, dtype, native, huge_pages)
        return _load_transformers(folder, gguf_file, device, dtype)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"cannot load the model in '{folder}': {type(exc).__name__}: {first}") from exc


def _load_transformers(folder: Path, gguf_file: str | None, device: str, dtype: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the startup line is the server's only output

    kwargs: dict[str, Any] = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs).to(device).eval()
    config = model.config
    eos = _eos_list(model.generation_config.eos_token_id or config.eos_token_id)
    pad = _first_id(config.pad_token_id)
    return LoadedModel(
        engine="transformers",
        model=model,
        device=torch.device(device),
        dtype=str(model.dtype).removeprefix("torch."),
        eos_token_ids=eos,
        pad_token_id=pad if pad is not None else (eos[0] if eos else 0),
        context_tokens=int(getattr(config, "max_position_embeddings", 2048)),
    )


def engine_switches(device: str, dtype: str, native: bool | None, huge_pages: bool | None) -> dict[str, Any]:
    """lmprof's engine switches for a server, each with why: asked for (an error where it cannot
    run), or, left to the server, on where it can run, since a server is run for speed. Fused
    projections change no output and cost nothing, so they are always on."""
    from lmprof.engine.huge_pages import check_huge_pages_on
    from lmprof.engine.native import load_native_ops
    from lmprof.engine.native_decode import check_native_on

    def native_runs() -> None:
        check_native_on(device, "--native")
        if dtype != "float32":
            raise UsageError(
                f"--native runs float32 activations; this server loads {dtype} (add --dtype float32)"
            )
        load_native_ops()  # the first use on a machine compiles them: before the startup line, not in a request

    cpu = torch.device(device).type == "cpu"
    switches: dict[str, Any] = {"fuse_qkv": True, "fuse_gate_up": True, "why": {}}
    for name, asked, fits, check, unfit in (
        ("native_decode", native, cpu and dtype == "float32", native_runs, f"{device} {dtype}"),
        ("huge_pages", huge_pages, cpu, lambda: check_huge_pages_on(device, "--huge-pages"), device),
    ):
        switches[name], switches["why"][name] = _switch(asked, fits, check, unfit)
    return switches


def _switch(asked: bool | None, fits: bool, check: Callable[[], None], unfit: str) -> tuple[bool, str]:
    """(on, why) for one engine switch: asked for (check's error raised), left to the server (on
    where `fits` and check passes), or off."""
    if asked is False or (asked is None and not fits):
        return False, "off: asked" if asked is False else f"off: {unfit}"
    try:
        check()
    except UsageError as exc:  # NativeKernelsUnavailable and HugePagesUnavailable are UsageErrors
        if asked:
            raise
        return False, f"off: {exc}"
    return True, "asked" if asked else "default"


def _load_engine(
    folder: Path, device: str, dtype: str, native: bool | None, huge_pages: bool | None
) -> LoadedModel:
    from lmprof.engine import EngineOptions, eos_token_ids, load_hf_folder
    from lmprof.engine.weights import read_hf_config

    switches = engine_switches(device, dtype, native, huge_pages)
    why = switches.pop("why")
    model = load_hf_folder(folder, EngineOptions(dtype=dtype, **switches), device=device)
    hf = read_hf_config(folder)
    eos = eos_token_ids(folder)
    pad = _first_id(hf.get("pad_token_id"))
    return LoadedModel(
        engine="lmprof",
        model=model,
        device=torch.device(device),
        dtype=dtype,
        eos_token_ids=eos,
        pad_token_id=pad if pad is not None else (eos[0] if eos else 0),
        context_tokens=int(hf.get("max_position_embeddings", 2048)),
        switches={**switches, "why": why},
    )
