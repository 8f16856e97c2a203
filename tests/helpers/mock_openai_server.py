"""A mock OpenAI-compatible server with known timings, for `lmprof load` tests and benchmarks.

aiohttp.web on 127.0.0.1 (port 0: the OS picks). Each completion streams `max_tokens`
content chunks: the first `ttft_s` after the request arrived, then one every `itl_s`, on
absolute deadlines so that sleep overshoot does not add up. It reports `usage`, serves
/v1/models, /version and Prometheus /metrics with lmprof's own names, and fails on purpose
when the prompt says so (FAIL_500, FAIL_TIMEOUT, FAIL_DISCONNECT, FAIL_BADSTREAM);
`TTFT_MS=<n>` in a prompt sets that request's TTFT.

In a thread: `with MockServer(MockConfig(...)) as url:`. In its own process, so that it
does not share the test's GIL: `with spawned_mock_server(ttft_ms=50) as url:`, or
`python tests/helpers/mock_openai_server.py --ttft-ms 50 --itl-ms 10` (prints `URL ...`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from aiohttp import web

_LIFETIME_S = 300.0  # a spawned server exits on its own after this, whatever the test did


@dataclass
class MockConfig:
    ttft_s: float = 0.05
    itl_s: float = 0.01
    model: str = "mock-model"
    usage: bool = True  # report usage (streams: only when stream_options.include_usage)
    metrics: bool = True
    version: str | None = "mock-1.0"
    version_path: str = "/version"  # Ollama says it at /api/version, TGI at /info
    tokens_per_chunk: int = 1
    reject_extras: tuple[str, ...] = ()  # answer 400 naming these body keys, as strict servers do
    stall_after_requests: int | None = None  # the Nth completion request starts a stall...
    stall_s: float = 0.0  # ...during which no chunk of any request is sent
    fail_latency_s: float = 0.02
    close_after_requests: int | None = None  # after the Nth completion request, stop listening
    api_key: str | None = None  # when set, anything without `Authorization: Bearer <it>` is a 401
    precise: bool = False  # sleep to 1.5 ms before each deadline, then yield until it: no epoll rounding
    cold_requests: int = 0  # the first N completion requests (a cold server) take...
    cold_ttft_s: float = 0.5  # ...this long to their first token


@dataclass
class MockState:
    received: int = 0
    running: int = 0
    max_running: int = 0
    requests_total: int = 0
    generation_tokens: int = 0
    prompt_tokens: int = 0
    cache_queries: int = 0
    cache_hits: int = 0
    seen_prompts: set = field(default_factory=set)
    stall_until: float = 0.0
    bodies: list = field(default_factory=list)
    close: object = None  # set by MockServer: stops the server (for close_after_requests)
    # Per streamed request, on this process's perf_counter: (arrived, first chunk written, last written).
    timelines: list = field(default_factory=list)


def _chunk(chat: bool, text: str, model: str) -> bytes:
    if chat:
        choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text, "finish_reason": None}
        obj = "text_completion"
    return f"data: {json.dumps({'id': 'x', 'object': obj, 'model': model, 'choices': [choice]})}\n\n".encode()


def build_app(config: MockConfig, state: MockState) -> web.Application:
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": config.model, "object": "model"}]})

    async def version(request: web.Request) -> web.Response:
        if config.version is None:
            raise web.HTTPNotFound()
        return web.json_response({"version": config.version}, headers={"Server": "mock-openai"})

    async def metrics(request: web.Request) -> web.Response:
        if not config.metrics:
            raise web.HTTPNotFound()
        lines = [
            "# TYPE lmprof:num_requests_running gauge", f"lmprof:num_requests_running {state.running}",
            "# TYPE lmprof:num_requests_waiting gauge", "lmprof:num_requests_waiting 0",
            "# TYPE lmprof:requests_total counter", f"lmprof:requests_total {state.requests_total}",
            "# TYPE lmprof:generation_tokens_total counter", f"lmprof:generation_tokens_total {state.generation_tokens}",
            "# TYPE lmprof:prompt_tokens_total counter", f"lmprof:prompt_tokens_total {state.prompt_tokens}",
            "# TYPE lmprof:response_cache_hits_total counter", f"lmprof:response_cache_hits_total {state.cache_hits}",
            "# TYPE lmprof:response_cache_queries_total counter",
            f"lmprof:response_cache_queries_total {state.cache_queries}",
        ]  # fmt: skip
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "received": state.received,
                "max_running": state.max_running,
                "bodies": state.bodies[-50:],
                "timelines": state.timelines,
            }  # fmt: skip
        )

    async def wait_stall() -> None:
        while (left := state.stall_until - time.perf_counter()) > 0:
            await asyncio.sleep(left)

    async def sleep_until(t: float) -> None:
        await wait_stall()
        # epoll waits in whole milliseconds (rounded up), so a plain sleep wakes up to ~1 ms
        # late; `precise` yields to the loop for the last stretch instead.
        margin_s = 0.0015 if config.precise else 0.0
        if (left := t - time.perf_counter() - margin_s) > 0:
            await asyncio.sleep(left)
        while config.precise and time.perf_counter() < t:
            await asyncio.sleep(0)

    async def complete(request: web.Request) -> web.StreamResponse:
        arrived = request_arrived = time.perf_counter()
        chat = request.path.endswith("/chat/completions")
        body = await request.json()
        state.bodies.append({k: v for k, v in body.items() if k not in ("prompt", "messages")})
        refused = [k for k in config.reject_extras if k in body]
        if refused:
            return web.json_response({"error": {"message": f"unknown field: {refused[0]}"}}, status=400)
        state.received += 1
        if state.received == config.close_after_requests and state.close is not None:
            asyncio.get_running_loop().call_later(0.05, state.close)
        if config.stall_after_requests is not None and state.received == config.stall_after_requests:
            state.stall_until = arrived + config.stall_s
        if state.received <= config.cold_requests:
            arrived += config.cold_ttft_s - config.ttft_s
        prompt = json.dumps(body.get("messages")) if chat else str(body.get("prompt", ""))
        if (marker := re.search(r"TTFT_MS=([0-9.]+)", prompt)) is not None:  # this request's own TTFT
            arrived += float(marker.group(1)) / 1e3 - config.ttft_s
        n_out = int(body.get("max_tokens") or 16)
        n_in = len(prompt.split())
        state.cache_queries += 1
        state.cache_hits += prompt in state.seen_prompts
        state.seen_prompts.add(prompt)
        if "FAIL_500" in prompt:
            await asyncio.sleep(config.fail_latency_s)
            return web.json_response({"error": {"message": "injected failure"}}, status=500)
        if "FAIL_TIMEOUT" in prompt:
            await asyncio.sleep(60)
        state.running += 1
        state.max_running = max(state.max_running, state.running)
        try:
            return await respond(request, body, chat, n_in, n_out, arrived, prompt, request_arrived)
        finally:
            state.running -= 1
            state.requests_total += 1
            state.prompt_tokens += n_in

    async def respond(
        request, body, chat, n_in, n_out, arrived, prompt, request_arrived
    ) -> web.StreamResponse:
        per = max(1, config.tokens_per_chunk)
        n_chunks = (n_out + per - 1) // per
        usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
        if not body.get("stream"):
            await sleep_until(arrived + config.ttft_s + (n_chunks - 1) * config.itl_s)
            state.generation_tokens += n_out
            text = "tok " * n_out
            choice = (
                {"index": 0, "message": {"role": "assistant", "content": text}}
                if chat
                else {"index": 0, "text": text}
            )
            data = {"id": "x", "model": config.model, "choices": [choice]}
            if config.usage:
                data["usage"] = usage
            return web.json_response(data)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Server": "mock-openai"})
        await resp.prepare(request)
        if chat:  # the role-only first delta, as vLLM and OpenAI send: no content, not a token
            role = {"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
            await resp.write(f"data: {json.dumps(role)}\n\n".encode())
        written = []
        for k in range(n_chunks):
            await sleep_until(arrived + config.ttft_s + k * config.itl_s)
            written.append(time.perf_counter())
            if "FAIL_BADSTREAM" in prompt and k == 1:
                await resp.write(b"data: {this is not json\n\n")
                return resp
            if "FAIL_DISCONNECT" in prompt and k == 1:
                request.transport.close()
                return resp
            await resp.write(_chunk(chat, "tok " * min(per, n_out - k * per), config.model))
            state.generation_tokens += min(per, n_out - k * per)
        state.timelines.append((request_arrived, written[0], written[-1]))
        if config.usage and (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(f"data: {json.dumps({'id': 'x', 'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    @web.middleware
    async def check_key(request: web.Request, handler):
        if config.api_key and request.headers.get("Authorization") != f"Bearer {config.api_key}":
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        return await handler(request)

    app = web.Application(middlewares=[check_key])
    app.router.add_get("/v1/models", models)
    app.router.add_get(config.version_path, version)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/mock/stats", stats)
    app.router.add_post("/v1/completions", complete)
    app.router.add_post("/v1/chat/completions", complete)
    return app


class MockServer:
    """The server on its own event loop in a daemon thread; `with` gives its base URL."""

    def __init__(self, config: MockConfig | None = None) -> None:
        self.config = config or MockConfig()
        self.state = MockState()
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._runner: web.AppRunner | None = None
        self.state.close = lambda: self._loop.create_task(self._runner.cleanup())

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(build_app(self.config, self.state), access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def __enter__(self) -> str:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the mock server did not start")
        return self.url

    def __exit__(self, *exc: object) -> None:
        def stop() -> None:
            for task in asyncio.all_tasks(self._loop):  # handlers still sleeping (FAIL_TIMEOUT)
                task.cancel()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(10)


@contextlib.contextmanager
def spawned_mock_server(**options: float | int | str) -> Iterator[str]:
    """The server in a child process (its own GIL): options are this file's CLI flags,
    `ttft_ms=50` for `--ttft-ms 50`."""
    args = [sys.executable, os.path.abspath(__file__)]
    for key, value in options.items():
        flag = f"--{key.replace('_', '-')}"
        args += ([flag] if value else []) if isinstance(value, bool) else [flag, str(value)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("URL "):
            raise RuntimeError(f"the mock server did not start: {line!r}")
        yield line.split()[1]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--itl-ms", type=float, default=10.0)
    parser.add_argument("--tokens-per-chunk", type=int, default=1)
    parser.add_argument("--stall-after-requests", type=int, default=None)
    parser.add_argument("--stall-s", type=float, default=0.0)
    parser.add_argument("--no-usage", action="store_true")
    parser.add_argument("--precise", action="store_true", help="spin the last 1.5 ms before each chunk")
    parser.add_argument("--lifetime-s", type=float, default=_LIFETIME_S)
    args = parser.parse_args()
    config = MockConfig(
        ttft_s=args.ttft_ms / 1e3, itl_s=args.itl_ms / 1e3, tokens_per_chunk=args.tokens_per_chunk,
        stall_after_requests=args.stall_after_requests, stall_s=args.stall_s, usage=not args.no_usage, precise=args.precise,
    )  # fmt: skip
    server = MockServer(config)
    url = server.__enter__()
    print(f"URL {url}", flush=True)
    time.sleep(args.lifetime_s)


if __name__ == "__main__":
    main()
