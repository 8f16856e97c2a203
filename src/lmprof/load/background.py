"""The load generator's background tasks (the loop-lag ticker, the /metrics scraper): each is
cancelled at the end of a run and awaited, so it is gone before the run's figures are read."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
