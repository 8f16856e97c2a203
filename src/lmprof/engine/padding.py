"""Left padding of a batch of prompts: every row ends at the same slot, so each decode step
writes one cache slot for all rows and padding is masked out of attention."""

from __future__ import annotations

import torch
from torch import Tensor

from lmprof.errors import UsageError


def left_pad(prompts: list[list[int]], pad_token_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Prompts of any lengths -> (tokens [B, T], valid [B, T]) right-aligned."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UsageError("every prompt needs at least one token")
    T = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), T), pad_token_id, dtype=torch.long, device=device)
    valid = torch.zeros(len(prompts), T, dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, T - len(prompt) :] = torch.tensor(prompt, dtype=torch.long, device=device)
        valid[row, T - len(prompt) :] = True
    return tokens, valid
