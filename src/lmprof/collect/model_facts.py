"""What a loaded model is: architecture, size, dtype, where it lives, and the bytes it holds.

Read from the model object itself (a transformers model or lmprof's engine), so the Run's
`model` entry is a measurement of what was loaded, not of the checkpoint's claims.
"""

from __future__ import annotations

from typing import Any


def held_weight_bytes(model: Any) -> int:
    """Bytes of every parameter and buffer the model holds, shared storage counted once."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        key = t.data_ptr() if t.device.type != "meta" else id(t)
        if key in seen:
            continue  # tied embeddings share storage: count once
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def describe_model(model: Any, name: str) -> dict[str, Any]:
    """What a loaded transformers model is: architecture, size, dtype, where it lives."""
    config = getattr(model, "config", None)
    weight_bytes = held_weight_bytes(model)
    params = sum(p.numel() for p in model.parameters())
    params -= _tied_duplicate_params(model)
    fields = (
        "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "head_dim", "intermediate_size", "vocab_size", "max_position_embeddings", "tie_word_embeddings",
    )  # fmt: skip
    archs = getattr(config, "architectures", None) or [type(model).__name__]
    return {
        "id": name,
        "architecture": archs[0],
        "class": type(model).__name__,
        "parameter_count": params,
        "dtype": str(getattr(model, "dtype", "")).replace("torch.", ""),
        "weight_bytes": weight_bytes,
        "device": str(getattr(model, "device", "cpu")),
        "config": {f: getattr(config, f, None) for f in fields if getattr(config, f, None) is not None},
    }


def _tied_duplicate_params(model: Any) -> int:
    # model.parameters() already deduplicates shared Parameter objects; this is 0 unless a
    # model ties by sharing storage between distinct Parameters.
    ptrs: dict[int, int] = {}
    dup = 0
    for p in model.parameters():
        if p.device.type == "meta":
            continue
        ptr = p.data_ptr()
        if ptr in ptrs and ptrs[ptr] == p.numel():
            dup += p.numel()
        ptrs.setdefault(ptr, p.numel())
    return dup
