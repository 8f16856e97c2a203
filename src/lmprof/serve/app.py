"""The HTTP side: aiohttp handlers for the OpenAI endpoints, /health and /metrics.

Handlers run on the event loop and never touch the model: they check the request, encode
the prompt, hand a Job to the model thread and relay its events as they arrive, as SSE
chunks or one JSON body. The scheduler shows here in one place: `sequential` holds a server
lock for a request's whole life (so the server handles one HTTP request at a time and the
rest wait at the lock, unqueued); `async` and `static-batch` admit requests into the worker's
bounded queue at once, so their queueing is a phase the profile measures.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from lmprof.record.serve import ServedRequest
from lmprof.serve.metrics import ServeMetrics
from lmprof.serve.profiler import ServerProfiler
from lmprof.serve.protocol import (
    CHAT,
    COMPLETIONS,
    ApiError,
    CompletionParams,
    ResponseShape,
    error_body,
    parse_request,
    sse,
    usage,
)
from lmprof.serve.response_cache import CachedResponse, ResponseCache
from lmprof.serve.settings import ServeSettings
from lmprof.serve.worker import Failed, Finished, Job, ModelWorker, TextDelta

log = logging.getLogger("lmprof.serve")
RETRY_AFTER_S = 1
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ServerState:
    settings: ServeSettings
    served_model: str
    tokenizer: Any  # the loop's own instance (the model thread decodes with another)
    context_tokens: int
    worker: ModelWorker
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


def _error_response(status: int, body: dict, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error the client sees is an OpenAI-style JSON body, with no traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _error_response(exc.status, exc.body(), exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        headers = {k: v for k, v in exc.headers.items() if k.lower() != "content-type"}  # e.g. Allow
        return _error_response(exc.status, error_body(exc.reason, kind), headers)
    except Exception as exc:  # noqa: BLE001 (a bug in one handler answers 500 and the server goes on)
        log.exception("handler failed")
        return _error_response(500, error_body(f"internal error: {type(exc).__name__}", "server_error"))


@web.middleware
async def draining_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    if state.draining:
        raise ApiError(503, "the server is shutting down", error_type="server_error", code="shutting_down")
    key = state.settings.api_key
    if key is not None and request.path.startswith("/v1/"):
        sent = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(sent, f"Bearer {key}".encode()):  # no timing hint at the key
            raise ApiError(
                401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                error_type="invalid_request_error", code="invalid_api_key",
            )  # fmt: skip
    state.in_flight += 1
    state.idle.clear()
    try:
        return await handler(request)
    finally:
        state.in_flight -= 1
        if state.in_flight == 0:
            state.idle.set()


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.Response(body=state.metrics.exposition(), headers={"Content-Type": state.metrics.content_type})


async def models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    card = {"id": state.served_model, "object": "model", "created": int(state.profiler.started_unix_s),
            "owned_by": "lmprof", "max_model_len": state.context_tokens}  # fmt: skip
    return web.json_response({"object": "list", "data": [card]})


async def completions(request: web.Request) -> web.StreamResponse:
    return await _answer(request, COMPLETIONS)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _answer(request, CHAT)


async def _read_params(request: web.Request, endpoint: str) -> CompletionParams:
    state = request.app[STATE]
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        limit = state.settings.max_body_bytes
        raise ApiError(413, f"the request body is over {limit} bytes", code="body_too_large") from exc
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from exc
    return parse_request(body, endpoint, state.served_model, state.settings.max_tokens_limit)


def _encode(state: ServerState, params: CompletionParams) -> list[int]:
    # On the loop: a short prompt encodes in well under a millisecond (Rust tokenizer).
    if params.messages is not None:
        if not state.tokenizer.chat_template:
            raise ApiError(400, "this model's tokenizer has no chat template: use /v1/completions")
        encoded = state.tokenizer.apply_chat_template(
            params.messages, add_generation_prompt=True, return_dict=True
        )
        ids = encoded["input_ids"]
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        ids = ids[0] if ids and isinstance(ids[0], list) else ids
    elif isinstance(params.prompt, list):
        ids = list(params.prompt)
    else:
        ids = list(state.tokenizer(params.prompt)["input_ids"])
    if not ids:
        raise ApiError(400, "the prompt encodes to no tokens", param="prompt")
    limit = state.settings.max_prompt_tokens
    if len(ids) > limit:
        raise ApiError(400, f"the prompt has {len(ids)} tokens; this server takes at most {limit}",
                       param="prompt", code="context_length_exceeded")  # fmt: skip
    if len(ids) + params.max_tokens > state.context_tokens:
        raise ApiError(
            400,
            f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the model's "
            f"{state.context_tokens}-token context",
            param="max_tokens", code="context_length_exceeded",
        )  # fmt: skip
    return ids


def _overloaded() -> ApiError:
    return ApiError(
        429, "the server's queue is full; retry later", error_type="rate_limit_error",
        code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)},
    )  # fmt: skip


async def _answer(request: web.Request, endpoint: str) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        params = await _read_params(request, endpoint)
        prompt_ids = _encode(state, params)
    except ApiError as exc:  # refused before it became a request of the profile: still counted
        state.metrics.requests.labels(endpoint, str(exc.status)).inc()
        raise
    record = state.profiler.new_request(uuid.uuid4().hex[:12], endpoint, params.stream)
    record.prompt_tokens = len(prompt_ids)
    try:
        response = await _answer_admitted(request, state, params, prompt_ids, record)
    except ApiError as exc:
        record.status = exc.status
        record.outcome = "rejected" if exc.status == 429 else "error"
        _count(state, record)
        raise
    _count(state, record)
    return response


async def _answer_admitted(
    request: web.Request,
    state: ServerState,
    params: CompletionParams,
    prompt_ids: list[int],
    record: ServedRequest,
) -> web.StreamResponse:
    if state.cache is not None and params.cacheable:
        state.metrics.cache_queries.inc()
        hit = state.cache.get(params.cache_key())
        if hit is not None:
            state.metrics.cache_hits.inc()
            record.outcome = "cache_hit"
            return await _replay(request, state, params, hit, record)
    if state.settings.scheduler != "sequential":
        return await _generate(request, state, params, prompt_ids, record)
    if state.lock_waiters + state.worker.waiting >= state.settings.max_queue:
        raise _overloaded()
    state.lock_waiters += 1
    try:
        await state.sequential_lock.acquire()
    finally:
        state.lock_waiters -= 1
    try:
        return await _generate(request, state, params, prompt_ids, record)
    finally:
        state.sequential_lock.release()


def _cache_label(state: ServerState, params: CompletionParams, hit: bool) -> str | None:
    if state.cache is None or not params.cacheable:
        return None
    return "hit" if hit else "miss"


async def _replay(
    request: web.Request,
    state: ServerState,
    params: CompletionParams,
    hit: CachedResponse,
    record: ServedRequest,
) -> web.StreamResponse:
    """A cached answer, in the same shape a generated one would have."""
    shape = ResponseShape(params.endpoint, state.served_model)
    usage_body = usage(hit.prompt_tokens, hit.completion_tokens, "hit")
    record.completion_tokens = hit.completion_tokens
    record.finish_reason = hit.finish_reason
    record.first_token_s = record.finished_s = state.profiler.now_s()
    if not params.stream:
        record.responded_s = state.profiler.now_s()
        return web.json_response(shape.full(hit.text, hit.finish_reason, usage_body))
    stream = await _open_stream(request, shape, params)
    try:
        if hit.text:
            await stream.write(sse(shape.chunk(hit.text)))
        await _close_stream(stream, shape, params, hit.finish_reason, usage_body)
    except ConnectionResetError:
        record.outcome = "cancelled"
    record.responded_s = state.profiler.now_s()
    return stream


async def _open_stream(
    request: web.Request, shape: ResponseShape, params: CompletionParams
) -> web.StreamResponse:
    stream = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await stream.prepare(request)
    if params.endpoint == CHAT:
        await stream.write(sse(shape.role_chunk()))
    return stream


async def _close_stream(
    stream: web.StreamResponse, shape: ResponseShape, params: CompletionParams, reason: str, usage_body: dict
) -> None:
    # The closing chunk carries usage too, so every answer has it; include_usage adds
    # OpenAI's own usage chunk (no choices) before [DONE].
    await stream.write(sse(shape.chunk(None, reason, usage_body)))
    if params.include_usage:
        await stream.write(sse(shape.usage_chunk(usage_body)))
    await stream.write(sse("[DONE]"))
    await stream.write_eof()


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _generate(
    request: web.Request,
    state: ServerState,
    params: CompletionParams,
    prompt_ids: list[int],
    record: ServedRequest,
) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    job = Job(
        record=record, prompt_ids=prompt_ids, max_tokens=params.max_tokens, temperature=params.temperature,
        seed=params.seed, stop=params.stop, ignore_eos=params.ignore_eos,
        emit=lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
    )  # fmt: skip
    limit = 1 if state.settings.scheduler == "sequential" else state.settings.max_queue
    if not state.worker.submit(job, limit):
        raise _overloaded()
    shape = ResponseShape(params.endpoint, state.served_model)
    stream: web.StreamResponse | None = None
    done = False
    try:
        if params.stream:
            stream = await _open_stream(request, shape, params)
        while True:
            event = await events.get()
            if isinstance(event, TextDelta):
                record.completion_tokens = event.completion_tokens
                if stream is not None:
                    await stream.write(sse(shape.chunk(event.text)))
                elif _client_gone(request):
                    break
                continue
            done = True
            if isinstance(event, Failed):
                record.status, record.outcome = 500, "error"
                if stream is None:
                    raise ApiError(500, event.message, error_type="server_error", code="generation_failed")
                await stream.write(sse(error_body(event.message, "server_error", code="generation_failed")))
                await stream.write(sse("[DONE]"))
                await stream.write_eof()
                return stream
            return await _finish(state, params, shape, stream, event, record)
    except ConnectionResetError:
        pass  # the client went away mid-stream
    finally:
        if not done:  # gone, or this handler was cancelled: the row leaves its batch next step
            job.cancelled.set()
            record.outcome = "cancelled"
            record.responded_s = state.profiler.now_s()
    if stream is not None:
        return stream
    record.status = 499  # nginx's "client closed request": no answer was sent
    return web.Response(status=499)


async def _finish(
    state: ServerState,
    params: CompletionParams,
    shape: ResponseShape,
    stream: web.StreamResponse | None,
    event: Finished,
    record: ServedRequest,
) -> web.StreamResponse:
    record.completion_tokens = event.completion_tokens
    usage_body = usage(record.prompt_tokens, event.completion_tokens, _cache_label(state, params, hit=False))
    if state.cache is not None and params.cacheable:
        state.cache.put(
            params.cache_key(),
            CachedResponse(event.text, event.reason, record.prompt_tokens, event.completion_tokens),
        )
    if stream is None:
        record.responded_s = state.profiler.now_s()
        return web.json_response(shape.full(event.text, event.reason, usage_body))
    try:
        await _close_stream(stream, shape, params, event.reason, usage_body)
    except ConnectionResetError:
        record.outcome = "cancelled"
    record.responded_s = state.profiler.now_s()
    return stream


def _count(state: ServerState, record: ServedRequest) -> None:
    """The request's metrics, once it is answered (or refused)."""
    m = state.metrics
    m.requests.labels(record.endpoint, str(record.status)).inc()
    if record.status != 200:
        return
    m.prompt_tokens.inc(record.prompt_tokens)
    m.generation_tokens.inc(record.completion_tokens)
    if record.started_s is not None:
        m.queue_time.observe(record.started_s - record.arrived_s)
    if record.first_token_s is not None:
        m.ttft.observe(record.first_token_s - record.arrived_s)
    if record.responded_s is not None:
        m.e2e.observe(record.responded_s - record.arrived_s)


def build_app(state: ServerState) -> web.Application:
    app = web.Application(
        middlewares=[errors_as_json, draining_and_auth], client_max_size=state.settings.max_body_bytes
    )
    app[STATE] = state
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app
