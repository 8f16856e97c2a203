"""What a `module.to(...)`, `.cuda()` or dtype cast asks for, read from its arguments, and the
bytes it has to copy or convert: the payload of the to_device and cast phases.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def target_device(method: str, args: tuple, kwargs: dict) -> Any:
    import torch

    if method == "cuda":
        index = args[0] if args else kwargs.get("device")
        return torch.device("cuda", index) if isinstance(index, int) else torch.device(index or "cuda")
    candidate = kwargs.get("device", args[0] if args else None)
    if isinstance(candidate, (str, torch.device, int)):
        try:
            return torch.device(candidate)
        except (RuntimeError, TypeError):
            return None
    return None


def target_dtype(args: tuple, kwargs: dict) -> Any:
    import torch

    for candidate in (kwargs.get("dtype"), *args):
        if isinstance(candidate, torch.dtype):
            return candidate
    return None


def bytes_not_of(module: Any, dtype: Any) -> int:
    """Bytes of floating-point parameters and buffers that a cast to `dtype` converts."""
    return _tensor_bytes(module, lambda t: t.is_floating_point() and t.dtype != dtype)


def stream_position(stream: Any) -> int:
    try:
        return int(stream.tell())
    except (AttributeError, OSError, ValueError):
        return 0


def bytes_not_on(module: Any, target: Any) -> int:
    """Bytes of parameters and buffers that a move to `target` has to copy."""

    def elsewhere(t: Any) -> bool:
        d = t.device
        return d.type != target.type or (target.index is not None and d.index != target.index)

    return _tensor_bytes(module, elsewhere)


def _tensor_bytes(module: Any, counts: Callable[[Any], bool]) -> int:
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) in seen or not counts(t):
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total
