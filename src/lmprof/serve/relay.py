"""Relaying one request's answer to its client: the model thread's events (or a cached
answer) as SSE chunks or one JSON body. A client that goes away cancels its job, which
leaves its batch at the next step."""

from __future__ import annotations

import asyncio

from aiohttp import web

from lmprof.record.serve import ServedRequest
from lmprof.serve.protocol import (
    CHAT,
    ApiError,
    CompletionParams,
    ResponseShape,
    error_body,
    queue_full_error,
    sse,
    usage,
)
from lmprof.serve.response_cache import CachedResponse
from lmprof.serve.state import ServerState
from lmprof.serve.worker import Failed, Finished, Job, TextDelta


def _cache_label(state: ServerState, params: CompletionParams, hit: bool) -> str | None:
    if state.cache is None or not params.cacheable:
        return None
    return "hit" if hit else "miss"


async def replay(
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
    stream: web.StreamResponse | None = None
    try:
        stream = await _open_stream(request, shape, params)
        if hit.text:
            await stream.write(sse(shape.chunk(hit.text)))
        await _close_stream(stream, shape, params, hit.finish_reason, usage_body)
    except ConnectionResetError:
        record.outcome = "cancelled"
    record.responded_s = state.profiler.now_s()
    return stream if stream is not None else web.Response(status=499)


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


async def generate(
    request: web.Request,
    state: ServerState,
    params: CompletionParams,
    prompt_ids: list[int],
    record: ServedRequest,
) -> web.StreamResponse:
    """Queue the job and relay its events until its last one (or until the client leaves,
    which cancels the job). Raises ApiError 429 when the queue is full, 500 when generation
    failed before anything was sent."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    job = Job(
        record=record, prompt_ids=prompt_ids, max_tokens=params.max_tokens, temperature=params.temperature,
        seed=params.seed, stop=params.stop, ignore_eos=params.ignore_eos,
        emit=lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
    )  # fmt: skip
    limit = 1 if state.settings.scheduler == "sequential" else state.settings.max_queue
    if not state.worker.submit(job, limit):
        raise queue_full_error()
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
            job.cancel()
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
    cached = record.cached_tokens if state.settings.prefix_cache_bytes else None
    usage_body = usage(
        record.prompt_tokens, event.completion_tokens, _cache_label(state, params, hit=False), cached
    )
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
