"""A request as the continuous batcher takes it (prompt, length, sampling, callbacks), what it
tracks and reports for it (tokens, why it ended, prefix-cache tokens, preemptions), and the
record of one iteration a server's self-profile keeps.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Request:
    prompt: list[int]
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_k: int | None = None
    seed: int | None = None  # a per-request generator when sampling
    eos_token_ids: frozenset[int] = frozenset()
    on_token: Callable[[int], None] | None = None  # each new token, as soon as it is picked
    on_finish: Callable[[RequestState], None] | None = None  # once, when the request leaves
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(eq=False)
class RequestState:
    """What the batcher tracks for a request, and what it reports when the request ends."""

    request: Request
    tokens: list[int] = field(default_factory=list)  # generated so far
    finish_reason: str | None = None  # "stop" (eos), "length", "cancelled" or "error"
    error: BaseException | None = None  # what its forward pass or callback raised ("error")
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache at first admission
    preemptions: int = 0
    # scheduling state
    row: int | None = None
    kv_tokens: int = 0  # tokens of the context whose K/V are in the row
    admitted: bool = False  # admitted at least once (cached_tokens is set then)
    admission: int = 0  # order of the latest admission: preemption takes the latest first
    generator: torch.Generator | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def context(self) -> list[int]:
        return self.request.prompt + self.tokens

    @property
    def prefill_target(self) -> int:
        """K/V tokens needed before this request's next token can be picked: the whole context
        (a preempted request recomputes its generated tokens too)."""
        return len(self.request.prompt) + len(self.tokens)


@dataclass(frozen=True)
class StepRecord:
    """One iteration, for the server's self-profile."""

    index: int
    start_s: float  # on the batcher's clock
    wall_s: float
    decode_rows: int  # batch size of the decode step (0: none ran)
    prefill_tokens: int  # prompt tokens prefilled this step (cache hits not counted)
    prefill_requests: int
    admitted: int
    finished: int
    preempted: int
    waiting: int  # queued after the step
    kv_tokens: int  # tokens held in the pool after the step
