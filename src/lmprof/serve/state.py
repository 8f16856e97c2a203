"""What every handler shares: the settings, the loop's tokenizer, the model thread, metrics,
profiler and cache, and the counters the schedulers and the drain read. Loop thread only."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from lmprof.serve.continuous_worker import ContinuousWorker
from lmprof.serve.metrics import ServeMetrics
from lmprof.serve.profiler import ServerProfiler
from lmprof.serve.response_cache import ResponseCache
from lmprof.serve.settings import ServeSettings
from lmprof.serve.worker import ModelWorker


@dataclass
class ServerState:
    settings: ServeSettings
    served_model: str
    tokenizer: Any  # the loop's own instance (the model thread decodes with another)
    context_tokens: int
    worker: ModelWorker | ContinuousWorker
    metrics: ServeMetrics
    profiler: ServerProfiler
    cache: ResponseCache | None
    sequential_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    lock_waiters: int = 0
    in_flight: int = 0
    draining: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


STATE = web.AppKey("state", ServerState)
