"""Whether the client kept up: its event loop's lag, measured by a ticker that asks to wake
every `tick_s` and records how late it woke. A loop busy parsing streams (or starved of
CPU) wakes late, and so does every request it should have sent or read then: those
latencies are the client's, not the server's."""

from __future__ import annotations

import asyncio

from lmprof.clock import Clock
from lmprof.load.background import cancel_and_wait


class LoopLagTicker:
    def __init__(self, clock: Clock, tick_s: float = 0.01) -> None:
        self.clock = clock
        self.tick_s = tick_s
        self.lags_s: list[float] = []
        self._task: asyncio.Task | None = None

    async def _tick(self) -> None:
        while True:
            asked = self.clock.wall() + self.tick_s
            await asyncio.sleep(self.tick_s)
            self.lags_s.append(round(max(0.0, self.clock.wall() - asked), 7))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> list[float]:
        await cancel_and_wait(self._task)
        self._task = None
        return self.lags_s
