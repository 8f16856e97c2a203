"""The OpenAI endpoints over real HTTP: both shapes of both endpoints, usage, stop strings,
/v1/models, /health, input errors, auth, and /metrics counting what was sent."""

from __future__ import annotations

import aiohttp
import pytest
from serve_helpers import (
    TIMEOUT,
    RunningServer,
    completion_text,
    metric_values,
    post,
    run,
    stream,
    streamed_text,
)

GREEDY = {"temperature": 0, "max_tokens": 12, "ignore_eos": True}


@pytest.fixture(scope="module")
def server(model_transformers):
    with RunningServer(model_transformers, scheduler="async", max_tokens_limit=64) as running:
        yield running


def test_completions_streamed_and_whole_agree(server):
    async def go():
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            url = server.url + "/v1/completions"
            status, body, _ = await post(s, url, {"prompt": "Hello there", **GREEDY})
            sstatus, items = await stream(s, url, {"prompt": "Hello there", **GREEDY})
            return status, body, sstatus, items

    status, body, sstatus, items = run(go())
    assert status == 200 and sstatus == 200
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    assert body["usage"]["completion_tokens"] == 12 and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 12
    assert completion_text(body) and streamed_text(items) == completion_text(body)
    assert items[-1] == "[DONE]"
    content_chunks = [i for i in items[:-1] if i["choices"][0]["text"]]
    assert len(content_chunks) >= 2, "streaming must send tokens as they come, not one final chunk"
    assert items[-2]["choices"][0]["finish_reason"] == "length"
    assert items[-2]["usage"] == body["usage"]
    assert len({i["id"] for i in items[:-1]}) == 1


def test_chat_streamed_with_usage_and_whole(server):
    messages = [{"role": "user", "content": "How are you?"}]

    async def go():
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            url = server.url + "/v1/chat/completions"
            whole = await post(s, url, {"messages": messages, **GREEDY})
            streamed = await stream(
                s, url, {"messages": messages, **GREEDY, "stream_options": {"include_usage": True}}
            )
            plain = await stream(s, url, {"messages": messages, **GREEDY, "max_tokens": 3})
            return whole, streamed, plain

    (status, body, _), (sstatus, items), (_, plain) = run(go())
    assert status == 200 and sstatus == 200
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    # The chat template wraps the message: more prompt tokens than the text alone has.
    assert body["usage"]["prompt_tokens"] > 5
    assert items[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(i["object"] == "chat.completion.chunk" for i in items[:-1])
    assert streamed_text(items) == completion_text(body)
    usage_chunk = items[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == body["usage"]
    assert items[-1] == "[DONE]"
    assert not any(i != "[DONE]" and i["choices"] == [] for i in plain), "usage chunk only when asked"


def test_stop_string_cuts_the_text(server):
    async def go():
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            url = server.url + "/v1/completions"
            _, ref, _ = await post(s, url, {"prompt": "Once upon", **GREEDY})
            text = completion_text(ref)
            stop = text[4:6]
            _, cut, _ = await post(s, url, {"prompt": "Once upon", **GREEDY, "stop": [stop]})
            _, items = await stream(s, url, {"prompt": "Once upon", **GREEDY, "stop": stop})
            return text, stop, cut, items

    text, stop, cut, items = run(go())
    expected = text[: text.index(stop)]
    assert completion_text(cut) == expected and cut["choices"][0]["finish_reason"] == "stop"
    assert streamed_text(items) == expected


def test_seeded_sampling_repeats(server):
    body = {"prompt": "Seeds", "max_tokens": 10, "temperature": 1.0, "seed": 7, "ignore_eos": True}

    async def go():
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            url = server.url + "/v1/completions"
            return [completion_text((await post(s, url, {**body, "seed": seed}))[1]) for seed in (7, 7, 8)]

    a, b, c = run(go())
    assert a == b and a != c


def test_models_and_health(server):
    async def go():
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            async with s.get(server.url + "/v1/models") as r:
                models = await r.json()
            async with s.get(server.url + "/health") as r:
                return models, r.status

    models, health = run(go())
    assert [m["id"] for m in models["data"]] == ["tiny"] and health == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        ({"max_tokens": 4}, "prompt"),
        ({"prompt": "x", "n": 2}, "n"),
        ({"prompt": "x", "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "max_tokens": 65}, "max_tokens"),
        ({"prompt": "x", "stop": [1]}, "stop"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ([1, 2], None),
    ],
)
def test_malformed_requests_get_400(server, body, param):
    async def go():
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            return await post(s, server.url + "/v1/completions", body)

    status, answer, _ = run(go())
    assert status == 400
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["param"] == param


def test_other_errors_are_openai_shaped(server):
    async def go():
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            url = server.url + "/v1/completions"
            wrong_model = await post(s, url, {"prompt": "x", "model": "gpt-4"})
            bad_chat = await post(s, server.url + "/v1/chat/completions", {"messages": "hi"})
            too_big = await post(s, url, {"prompt": "x" * (2 << 20)})
            async with s.get(server.url + "/v1/nowhere") as r:
                missing = r.status, await r.json()
            return wrong_model, bad_chat, too_big, missing

    wrong_model, bad_chat, too_big, missing = run(go())
    assert wrong_model[0] == 404 and wrong_model[1]["error"]["code"] == "model_not_found"
    assert bad_chat[0] == 400 and bad_chat[1]["error"]["param"] == "messages"
    assert too_big[0] == 413 and "error" in too_big[1]
    assert missing[0] == 404 and "error" in missing[1]


def test_api_key(model_transformers):
    async def go(url):
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            body = {"prompt": "x", "max_tokens": 2}
            none = await post(s, url + "/v1/completions", body)
            wrong = await post(s, url + "/v1/completions", body, {"Authorization": "Bearer nope"})
            right = await post(s, url + "/v1/completions", body, {"Authorization": "Bearer sesame"})
            async with s.get(url + "/health") as r:
                return none, wrong, right, r.status

    with RunningServer(model_transformers, scheduler="async", api_key="sesame") as server:
        none, wrong, right, health = run(go(server.url))
    for status, body, _ in (none, wrong):
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert right[0] == 200 and health == 200


def test_metrics_count_requests_and_tokens(model_transformers):
    async def go(url):
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            usages = []
            _, body, _ = await post(s, url + "/v1/completions", {"prompt": "one two", "max_tokens": 5})
            usages.append(body["usage"])
            _, items = await stream(
                s, url + "/v1/completions", {"prompt": "three", "max_tokens": 7, "ignore_eos": True}
            )
            usages.append(items[-2]["usage"])
            chat = {"messages": [{"role": "user", "content": "hey"}], "max_tokens": 4}
            _, body, _ = await post(s, url + "/v1/chat/completions", chat)
            usages.append(body["usage"])
            bad, _, _ = await post(s, url + "/v1/completions", {"prompt": ""})
            return usages, bad, await metric_values(s, url)

    with RunningServer(model_transformers, scheduler="async") as server:
        usages, bad, metrics = run(go(server.url))
    assert bad == 400
    assert metrics["lmprof:requests_total"] == 4  # three answered, one refused
    assert metrics["lmprof:prompt_tokens_total"] == sum(u["prompt_tokens"] for u in usages)
    assert metrics["lmprof:generation_tokens_total"] == sum(u["completion_tokens"] for u in usages)
    assert metrics["lmprof:num_requests_running"] == 0 and metrics["lmprof:num_requests_waiting"] == 0
    assert metrics["lmprof:batch_size_count"] == sum(
        u["completion_tokens"] for u in usages
    )  # one step a token
    assert metrics["lmprof:time_to_first_token_seconds_count"] == 3
