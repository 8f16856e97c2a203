"""The HTTP side: aiohttp routes and middlewares, request checks, and admission.

Handlers run on the event loop and never touch the model: they check the request, encode
the prompt, admit it, and leave the answer to relay.py (the model thread's events as SSE
chunks or one JSON body). The scheduler shows here in one place: `sequential` holds a server
lock for a request's whole life (so the server handles one HTTP request at a time and the
rest wait at the lock, unqueued); `async`, `static-batch` and `continuous` admit requests into
the worker's bounded queue at once, so their queueing is a phase the profile measures.
"""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from lmprof.record.serve import ServedRequest
from lmprof.serve.protocol import (
    CHAT,
    COMPLETIONS,
    ApiError,
    CompletionParams,
    error_body,
    parse_request,
    queue_full_error,
)
from lmprof.serve.relay import generate, replay
from lmprof.serve.state import STATE, ServerState

log = logging.getLogger("lmprof.serve")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


async def _answer(request: web.Request, endpoint: str) -> web.StreamResponse:
    state = request.app[STATE]
    arrived_s = state.profiler.now_s()  # reading the body and encoding count as waiting
    try:
        params = await _read_params(request, endpoint)
        prompt_ids = _encode(state, params)
    except ApiError as exc:  # refused before it became a request of the profile: still counted
        state.metrics.requests.labels(endpoint, str(exc.status)).inc()
        raise
    record = state.profiler.new_request(uuid.uuid4().hex[:12], endpoint, params.stream, arrived_s)
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
            return await replay(request, state, params, hit, record)
    if state.settings.scheduler != "sequential":
        return await generate(request, state, params, prompt_ids, record)
    if state.lock_waiters + state.worker.waiting >= state.settings.max_queue:
        raise queue_full_error()
    state.lock_waiters += 1
    try:
        await state.sequential_lock.acquire()
    finally:
        state.lock_waiters -= 1
    try:
        return await generate(request, state, params, prompt_ids, record)
    finally:
        state.sequential_lock.release()


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
