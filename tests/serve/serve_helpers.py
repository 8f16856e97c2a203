"""Running `lmprof serve` in-process for tests: a Server on 127.0.0.1, port 0, on its own
event-loop thread, and a small aiohttp client for it."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import replace
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from lmprof.serve.server import LoadedServerModel, Server
from lmprof.serve.settings import ServeSettings

TIMEOUT = aiohttp.ClientTimeout(total=60)


class RunningServer:
    """A Server serving in a background thread until `close()` drains and stops it."""

    def __init__(self, loaded: LoadedServerModel, **settings: Any) -> None:
        base = replace(loaded.settings, port=0, host="127.0.0.1")
        self.server = Server(loaded, replace(base, **settings))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def profiler(self):
        return self.server.profiler


def load_served(model: str, engine: str = "transformers") -> LoadedServerModel:
    from lmprof.serve.server import load_server_model

    settings = ServeSettings(
        model=model, engine=engine, device="cpu", dtype="float32", served_model_name="tiny"
    )
    return load_server_model(settings)


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, headers: dict | None = None
) -> tuple[int, dict, dict]:
    """POST JSON (or raw bytes) -> (status, JSON body, headers)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(url, data=data, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None), dict(resp.headers)


async def stream(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, list[Any]]:
    """POST with stream: true -> (status, the SSE data items: parsed JSON, and '[DONE]')."""
    async with session.post(url, json={**body, "stream": True}) as resp:
        if resp.status != 200:
            return resp.status, [await resp.json(content_type=None)]
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        items: list[Any] = []
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line:
                continue
            assert line.startswith("data: "), line
            payload = line.removeprefix("data: ")
            items.append(payload if payload == "[DONE]" else json.loads(payload))
        return resp.status, items


def streamed_text(items: list[Any]) -> str:
    text = ""
    for item in items:
        if item == "[DONE]" or "error" in item:
            continue
        for choice in item["choices"]:
            text += choice.get("text") or choice.get("delta", {}).get("content") or ""
    return text


def completion_text(body: dict) -> str:
    choice = body["choices"][0]
    return choice["text"] if "text" in choice else choice["message"]["content"]


async def metric_values(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Every sample of /metrics, labels summed away: {'lmprof:requests_total': 3.0, ...}."""
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def run(coro):
    return asyncio.run(coro)
