"""The engine's optimization switches, each one small and independent of the others.

Load-time switches change the weights the model runs (dtype, fused projections, int8) or
where they lie (huge pages);
run-time switches change how a forward pass or the generation loop works (attention kernel,
GQA handling, KV cache, chunked prefill, torch.compile, threads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from lmprof.errors import UsageError

KVCacheMode = Literal["off", "growing", "static"]
AttentionMode = Literal["naive", "sdpa"]
GQAMode = Literal["repeat", "grouped"]
DType = Literal["float32", "bfloat16", "float16"]

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class EngineOptions:
    # load time
    dtype: DType = "float32"
    fuse_qkv: bool = False  # one [q; k; v] matmul instead of three
    fuse_gate_up: bool = False  # one [gate; up] matmul instead of two
    int8: bool = False  # int8 weight-only linear layers, per-output-channel scales
    column_major: bool = False  # float linear weights stored [in, out]: faster batch-1 matmuls on CPU
    huge_pages: bool = False  # weights moved onto 2 MiB transparent huge pages (Linux, CPU)
    # W8A8 in the native step: each activation row quantized to int8 (per row, every product),
    # integer products (AVX512-VNNI or AVX2); needs int8 and native_decode (prefill stays weight-only)
    int8_activations: bool = False
    # run time
    attention: AttentionMode = "sdpa"  # "naive": explicit matmul + softmax
    gqa: GQAMode = "grouped"  # "repeat": repeat_interleave K/V to every query head
    kv_cache: KVCacheMode = "static"  # "off" re-runs the whole sequence every step
    prefill_chunk_size: int | None = None  # None: the whole prompt in one forward
    compile_decode: bool = False  # torch.compile the decode step (CUDA graphs on CUDA)
    native_decode: bool = False  # the decode step as one call into lmprof's C++ kernels (CPU, fp32)
    threads: int | None = None  # torch intra-op threads while generating; None leaves torch's setting

    def __post_init__(self) -> None:
        choices = {
            "dtype": TORCH_DTYPES,
            "attention": ("naive", "sdpa"),
            "gqa": ("repeat", "grouped"),
            "kv_cache": ("off", "growing", "static"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UsageError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.prefill_chunk_size is not None and self.prefill_chunk_size < 1:
            raise UsageError(f"prefill_chunk_size must be positive, got {self.prefill_chunk_size}")
        if self.prefill_chunk_size is not None and self.kv_cache == "off":
            raise UsageError("chunked prefill needs a KV cache (kv_cache 'growing' or 'static')")
        if self.compile_decode and self.kv_cache != "static":
            raise UsageError("compile_decode needs kv_cache='static' (fixed shapes every step)")
        if self.int8 and self.column_major:
            raise UsageError("column_major applies to float weights; int8 weights keep their own layout")
        if self.native_decode:
            conflicts = {
                "dtype other than float32": self.dtype != "float32",
                "column_major": self.column_major,
                "compile_decode": self.compile_decode,
                f"kv_cache={self.kv_cache!r}": self.kv_cache != "static",
            }
            clashing = [name for name, clash in conflicts.items() if clash]
            if clashing:
                raise UsageError(
                    "native_decode runs float32 activations over float32 or int8 checkpoint-layout "
                    "weights and a static KV cache; "
                    f"drop {', '.join(clashing)}"
                )
        if self.int8_activations and not (self.int8 and self.native_decode):
            raise UsageError(
                "int8_activations quantizes the activations of the native step's int8 products; "
                "it needs int8 and native_decode too"
            )
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be positive, got {self.threads}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]
