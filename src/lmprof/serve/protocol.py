"""The OpenAI wire format: request bodies checked into `CompletionParams`, and the response,
chunk and error bodies the server sends. Nothing here touches the model or the network."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

COMPLETIONS = "completions"
CHAT = "chat.completions"
DEFAULT_MAX_TOKENS = {COMPLETIONS: 16, CHAT: 256}  # OpenAI's completions default; chat: a modest cap
MAX_STOP_STRINGS = 4
RETRY_AFTER_S = 1  # a queue that is full now has room within about one request's time


class ApiError(Exception):
    """An error answered as OpenAI does: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def queue_full_error() -> ApiError:
    return ApiError(
        429, "the server's queue is full; retry later", error_type="rate_limit_error",
        code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)},
    )  # fmt: skip


def _bad(message: str, param: str | None) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value" if param else None)


@dataclass
class CompletionParams:
    endpoint: str
    model: str
    prompt: str | list[int] | None = None  # completions: text, or token ids
    messages: list[dict[str, str]] | None = None  # chat
    max_tokens: int = 16
    temperature: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    stream: bool = False
    include_usage: bool = False

    @property
    def cacheable(self) -> bool:
        """Only a request whose answer is fixed by its inputs may be answered from a cache."""
        return self.temperature == 0 or self.seed is not None

    def cache_key(self) -> str:
        """Endpoint, model, input and every sampling parameter: equal keys, equal answers.
        (`stream` is left out: a hit is replayed in whichever shape was asked.)"""
        return json.dumps(
            [self.endpoint, self.model, self.prompt, self.messages, self.max_tokens, self.temperature,
             self.seed, self.stop, self.ignore_eos],
            separators=(",", ":"),
        )  # fmt: skip


def _int(body: dict, name: str, default: int | None, low: int, high: int | None = None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{name}' must be an integer, got {json.dumps(value)[:40]}", name)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _bad(f"'{name}' must be {bound}, got {value}", name)
    return value


def _bool(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"'{name}' must be true or false", name)
    return value


def _prompt(body: dict) -> str | list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        if not prompt:
            raise _bad("'prompt' must not be empty", "prompt")
        return prompt
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        if any(t < 0 for t in prompt):
            raise _bad("token ids in 'prompt' must not be negative", "prompt")
        return prompt
    if isinstance(prompt, list) and len(prompt) > 1:
        raise _bad("one prompt per request: this server answers n=1 and no prompt batches", "prompt")
    raise _bad("'prompt' must be a non-empty string or a list of token ids", "prompt")


def _messages(body: dict) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list of {role, content}", "messages")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _bad(f"messages[{i}] must be an object with a string 'role'", "messages")
        content = message.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
                raise _bad(f"messages[{i}].content: only text parts are supported", "messages")
            content = "".join(parts)
        if not isinstance(content, str):
            raise _bad(f"messages[{i}].content must be a string", "messages")
        checked.append({"role": message["role"], "content": content})
    return checked


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP_STRINGS
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise _bad(f"'stop' must be a non-empty string or a list of up to {MAX_STOP_STRINGS} of them", "stop")
    return stops


def parse_request(body: Any, endpoint: str, served_model: str, max_tokens_limit: int) -> CompletionParams:
    """Check a decoded JSON body; raises ApiError (400, or 404 for another model's name)."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None)
    model = body.get("model", served_model)
    if not isinstance(model, str):
        raise _bad("'model' must be a string", "model")
    if model != served_model:
        raise ApiError(
            404, f"the model '{model}' does not exist; this server serves '{served_model}'",
            param="model", code="model_not_found",
        )  # fmt: skip
    n = _int(body, "n", 1, 1)
    if n != 1:
        raise _bad("only n=1 is supported", "n")
    top_p = body.get("top_p")
    if top_p is not None and top_p != 1:
        raise _bad("top_p is not supported (leave it out or send 1)", "top_p")
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise _bad("'temperature' must be a number from 0 to 2", "temperature")
    name = "max_completion_tokens" if endpoint == CHAT and "max_completion_tokens" in body else "max_tokens"
    max_tokens = _int(body, name, min(DEFAULT_MAX_TOKENS[endpoint], max_tokens_limit), 1, max_tokens_limit)
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    include_usage = bool((stream_options or {}).get("include_usage", False))
    return CompletionParams(
        endpoint=endpoint,
        model=model,
        prompt=_prompt(body) if endpoint == COMPLETIONS else None,
        messages=_messages(body) if endpoint == CHAT else None,
        max_tokens=max_tokens,
        temperature=float(temperature),
        seed=_int(body, "seed", None, -(2**63), 2**63 - 1),
        stop=_stop(body),
        ignore_eos=_bool(body, "ignore_eos"),
        stream=_bool(body, "stream"),
        include_usage=include_usage,
    )


def usage(
    prompt_tokens: int, completion_tokens: int, cache: str | None = None, cached_tokens: int | None = None
) -> dict[str, Any]:
    """OpenAI's usage body; `cached_tokens` (prompt tokens whose K/V came from the prefix cache)
    goes in `prompt_tokens_details` as OpenAI and vLLM put it, where a prefix cache is on."""
    body: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens is not None:
        body["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    if cache is not None:
        body["lmprof"] = {"response_cache": cache}
    return body


@dataclass
class ResponseShape:
    """The id, timestamps and object names one response's body and chunks share."""

    endpoint: str
    model: str
    id: str = ""
    created: int = 0

    def __post_init__(self) -> None:
        prefix = "chatcmpl" if self.endpoint == CHAT else "cmpl"
        self.id = self.id or f"{prefix}-{uuid.uuid4().hex}"
        self.created = self.created or int(time.time())

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def full(self, text: str, finish_reason: str, usage_body: dict) -> dict[str, Any]:
        if self.endpoint == CHAT:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage_body}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage_body}

    def chunk(
        self, text: str | None, finish_reason: str | None = None, usage_body: dict | None = None
    ) -> dict:
        """One streamed choice chunk; text None with a finish_reason is the closing chunk."""
        if self.endpoint == CHAT:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            body = {**self._head("chat.completion.chunk"), "choices": [choice]}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            body = {**self._head("text_completion"), "choices": [choice]}
        if usage_body is not None:
            body["usage"] = usage_body
        return body

    def role_chunk(self) -> dict[str, Any]:
        """Chat streams open with the assistant's role, as OpenAI's do."""
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        return {**self._head("chat.completion.chunk"), "choices": [choice]}

    def usage_chunk(self, usage_body: dict) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.endpoint == CHAT else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage_body}


def sse(data: dict | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()
