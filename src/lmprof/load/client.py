"""One request to an OpenAI-compatible endpoint, timed on the run's clock.

Streaming responses are read as server-sent events, one `data:` line at a time, and each
line is timestamped as it is read. A chunk "carries content" when its first choice has
non-empty `text` (completions) or `delta.content` / `delta.reasoning_content` (chat); the
first such chunk is the first token, the last one ends the request's E2EL. A chunk with
`usage` gives the token counts. Every failure is recorded with its kind and the time it
ended, so an error's latency is measured like a success's.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from lmprof.clock import Clock
from lmprof.load.options import LoadOptions
from lmprof.load.prompts import Prompt, TokenCounter
from lmprof.record.load import (
    COUNT_CHUNKS,
    COUNT_TOKENIZER,
    COUNT_USAGE,
    COUNT_WORDS,
    ERROR_BAD_STREAM,
    ERROR_CANCELLED,
    ERROR_CONNECT,
    ERROR_DISCONNECT,
    ERROR_TIMEOUT,
    RequestRecord,
)

_ERROR_BODY_CHARS = 300


class BadStream(Exception):
    """The response was 200 but not a stream (or body) this client can read."""


def request_headers(opts: LoadOptions) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if opts.api_key:
        headers["Authorization"] = f"Bearer {opts.api_key}"
    return headers


def request_body(opts: LoadOptions, model: str, prompt: Prompt, extras: dict[str, Any]) -> dict[str, Any]:
    """The JSON body: greedy, exactly `output_tokens` long where the server honours
    `ignore_eos` (an `extras` key, dropped for servers that refuse it)."""
    body: dict[str, Any] = {"model": model, "max_tokens": prompt.output_tokens, "temperature": 0}
    if opts.chat:
        body["messages"] = prompt.messages or [{"role": "user", "content": prompt.text or ""}]
    else:
        body["prompt"] = prompt.text if prompt.text is not None else _messages_text(prompt.messages)
    body["stream"] = opts.stream
    if opts.stream and extras.get("stream_options", True):
        body["stream_options"] = {"include_usage": True}
    if opts.ignore_eos and extras.get("ignore_eos", True):
        body["ignore_eos"] = True
    return body


def _messages_text(messages: list[dict[str, Any]] | None) -> str:
    return "\n".join(str(m.get("content", "")) for m in messages or [])


class RequestSender:
    """Sends requests on one aiohttp session and fills their records."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        opts: LoadOptions,
        model: str,
        clock: Clock,
        origin_s: float,
        counter: TokenCounter | None = None,
        extras: dict[str, Any] | None = None,
        fresh_session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.session = session
        self.fresh_session = fresh_session
        self.opts = opts
        self.model = model
        self.clock = clock
        self.origin_s = origin_s
        self.counter = counter
        self.extras = extras if extras is not None else {}
        self.headers = request_headers(opts)
        self.server_header: str | None = None

    def now_s(self) -> float:
        return self.clock.wall() - self.origin_s

    async def send(self, record: RequestRecord, prompt: Prompt) -> RequestRecord:
        body = request_body(self.opts, self.model, prompt, self.extras)
        record.planned_output_tokens = prompt.output_tokens
        if prompt.input_tokens is not None:
            record.input_tokens, record.input_tokens_method = (
                prompt.input_tokens,
                f"planned_{prompt.input_unit}",
            )
        record.sent_s = self.now_s()
        try:
            try:
                resp_cm = await self._post(body)
            except aiohttp.ClientConnectorError:
                raise  # no connection could be made: nothing stale to replace
            except aiohttp.ClientOSError:
                # A kept-alive connection the server closed while it sat in the pool fails on its
                # first write, before the server saw anything (llama.cpp's llama-server closes
                # them: 4-7 of 16 requests at 8 users failed so, within a millisecond). Such a
                # request is sent once more, on a fresh connection; a failure after that counts.
                # A disconnect once the request went out is not retried: the server may have run it.
                record.resent = True
                resp_cm = await self._post(body, fresh=True)
            async with resp_cm as resp:
                self.server_header = resp.headers.get("Server", self.server_header)
                if resp.status != 200:
                    text = (await resp.text(errors="replace"))[:_ERROR_BODY_CHARS]
                    self._fail(record, f"http_{resp.status}", text.strip(), resp.status)
                    return record
                record.http_status = 200
                if self.opts.stream:
                    await self._read_stream(resp, record)
                else:
                    await self._read_body(resp, record)
        except asyncio.CancelledError:
            self._fail(record, ERROR_CANCELLED, "the run was interrupted while this request was in flight")
            raise
        except TimeoutError:
            self._fail(record, ERROR_TIMEOUT, f"no complete response within {self.opts.timeout_s:g} s")
        except aiohttp.ClientConnectorError as exc:
            self._fail(record, ERROR_CONNECT, str(exc))
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            self._fail(record, ERROR_DISCONNECT, str(exc) or type(exc).__name__)
        except aiohttp.ClientResponseError as exc:
            self._fail(record, ERROR_BAD_STREAM, str(exc))
        except (BadStream, ValueError) as exc:  # ValueError: an over-long SSE line
            self._fail(record, ERROR_BAD_STREAM, str(exc))
        return record

    async def _post(self, body: dict[str, Any], fresh: bool = False) -> aiohttp.ClientResponse:
        """The POST up to its response headers (send reads on, as a context manager); `fresh`
        sends it on a connection of its own (fresh_session, which never keeps one)."""
        session = self.fresh_session if fresh and self.fresh_session is not None else self.session
        return await session.post(self.opts.url, json=body, headers=self.headers)

    def _fail(self, record: RequestRecord, kind: str, message: str, status: int | None = None) -> None:
        record.end_s = self.now_s()
        record.error_kind = kind
        record.error = message
        if status is not None:  # a stream that broke after its 200 keeps the 200
            record.http_status = status

    async def _read_stream(self, resp: aiohttp.ClientResponse, record: RequestRecord) -> None:
        text_parts: list[str] = []
        chunks = 0
        usage: dict[str, Any] | None = None
        last_s: float | None = None
        async for raw in resp.content:
            now_s = self.now_s()
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, `event:` and `:` comment lines
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            try:
                event = json.loads(data)
            except json.JSONDecodeError:
                raise BadStream(f"a stream event is not JSON: {data[:80]!r}") from None
            if not isinstance(event, dict):
                raise BadStream(f"a stream event is not a JSON object: {data[:80]!r}")
            if event.get("error"):
                raise BadStream(f"the server sent an error in the stream: {str(event['error'])[:200]}")
            if event.get("usage"):
                usage = event["usage"]
            content = _chunk_content(event, self.opts.chat)
            if content:
                chunks += 1
                text_parts.append(content)
                if last_s is None:
                    record.first_token_s = now_s
                else:
                    record.chunk_gaps_s.append(round(now_s - last_s, 7))  # 0.1 µs: finer is noise
                last_s = now_s
        record.end_s = self.now_s()
        if last_s is None:
            raise BadStream("the stream ended without a chunk carrying content")
        record.last_token_s = last_s
        self._count(record, usage, "".join(text_parts), chunks)

    async def _read_body(self, resp: aiohttp.ClientResponse, record: RequestRecord) -> None:
        try:
            data = await resp.json(content_type=None)
        except json.JSONDecodeError:
            raise BadStream("the response body is not JSON") from None
        record.end_s = self.now_s()
        record.last_token_s = record.end_s
        if not isinstance(data, dict) or not data.get("choices"):
            raise BadStream("the response has no choices")
        choice = data["choices"][0]
        text = choice.get("text") if not self.opts.chat else (choice.get("message") or {}).get("content")
        self._count(record, data.get("usage"), text or "", None)

    def _count(self, record: RequestRecord, usage: Any, text: str, chunks: int | None) -> None:
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            record.output_tokens, record.output_tokens_method = usage["completion_tokens"], COUNT_USAGE
        elif self.counter is not None:
            record.output_tokens, record.output_tokens_method = self.counter.count(text), COUNT_TOKENIZER
        elif chunks is not None:
            record.output_tokens, record.output_tokens_method = chunks, COUNT_CHUNKS
        else:
            record.output_tokens, record.output_tokens_method = len(text.split()), COUNT_WORDS
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            record.input_tokens, record.input_tokens_method = usage["prompt_tokens"], COUNT_USAGE


def _chunk_content(event: dict[str, Any], chat: bool) -> str:
    choices = event.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        return ""
    first = choices[0]
    if chat:
        delta = first.get("delta") or {}
        return delta.get("content") or delta.get("reasoning_content") or ""
    return first.get("text") or ""
