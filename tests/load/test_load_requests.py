"""What a request records: warm-up kept out, errors by kind with their latency, token
counts from usage or a fallback, chat streams, refused extras, server metrics."""

from __future__ import annotations

import json

import pytest

from lmprof.analyze.load import summarize
from lmprof.record.load import COUNT_CHUNKS, COUNT_TOKENIZER, COUNT_USAGE


def test_warmup_is_never_counted(load, mock_server):
    # A cold server: the preflight and the 5 warm-up requests take 400 ms to a first token.
    url, _ = mock_server(ttft_s=0.01, itl_s=0.002, cold_requests=6, cold_ttft_s=0.4)
    run = load(url, concurrency=[2], requests=10, warmup=5)
    warm = [r for r in run.requests if r.warmup and r.user is not None]
    assert len(warm) == 5
    assert all(r.end_s <= run.levels[0].start_s for r in warm)
    level = summarize(run).levels[0]
    assert level.sent == 10 and level.completed == 10
    assert level.latency_s["ttft"]["max"] < 0.2  # no cold request leaked into the figures
    assert summarize(run).warmup_requests == 5


def test_errors_by_kind_with_their_latency(load, mock_server, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    lines = ["fine", "FAIL_500", "FAIL_TIMEOUT", "FAIL_DISCONNECT", "FAIL_BADSTREAM"]
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in lines) + "\n")
    url, _ = mock_server(ttft_s=0.01, itl_s=0.005, fail_latency_s=0.03)
    run = load(url, concurrency=[5], requests=10, prompts_file=str(prompts), timeout_s=0.5)
    level = summarize(run).levels[0]
    assert level.completed == 2
    assert set(level.errors) == {"http_500", "timeout", "disconnect", "bad_stream"}
    for kind, error in level.errors.items():
        assert error["count"] == 2, kind
        assert error["latency_s"]["p50"] > 0.005, kind  # measured, never zero
    assert level.errors["timeout"]["latency_s"]["p50"] >= 0.5
    assert level.errors["http_500"]["latency_s"]["p50"] >= 0.03


def test_output_tokens_from_usage(load, mock_server):
    url, _ = mock_server(ttft_s=0.005, itl_s=0.001, tokens_per_chunk=2)
    run = load(url, requests=4, output_tokens=8)
    ok = [r for r in run.requests if not r.warmup]
    assert {r.output_tokens_method for r in ok} == {COUNT_USAGE}
    assert {r.output_tokens for r in ok} == {8}
    assert all(len(r.chunk_gaps_s) == 3 for r in ok)  # 4 chunks of 2 tokens


def test_output_tokens_fall_back_to_chunks_without_usage(load, mock_server):
    url, _ = mock_server(ttft_s=0.005, itl_s=0.001, tokens_per_chunk=2, usage=False)
    run = load(url, requests=4, output_tokens=8)
    ok = [r for r in run.requests if not r.warmup]
    assert {r.output_tokens_method for r in ok} == {COUNT_CHUNKS}
    assert {r.output_tokens for r in ok} == {4}  # chunks, not tokens: hence the warning
    assert any("not from the server's usage" in w for w in summarize(run).warnings)


def test_output_tokens_fall_back_to_the_client_tokenizer(mock_server, make_options):
    from lmprof.load.bench import new_load_run, run_load

    class WordTokenizer:  # stands in for the model's tokenizer: 1 token per "tok"
        def count(self, text: str) -> int:
            return text.count("tok")

        def text_of(self, rng, n_tokens: int) -> str:
            return " ".join(["word"] * n_tokens)

    url, _ = mock_server(ttft_s=0.005, itl_s=0.001, tokens_per_chunk=2, usage=False)
    opts = make_options(url, requests=4, output_tokens=8)
    run = run_load(opts, new_load_run(opts, ["test"]), counter=WordTokenizer())
    ok = [r for r in run.requests if not r.warmup]
    assert {(r.output_tokens_method, r.output_tokens) for r in ok} == {(COUNT_TOKENIZER, 8)}


def test_chat_ttft_is_the_first_content_not_the_role_chunk(load, mock_server):
    url, server = mock_server(ttft_s=0.08, itl_s=0.002)
    run = load(url, endpoint="/v1/chat/completions", requests=4, output_tokens=4)
    level = summarize(run).levels[0]
    assert level.completed == 4
    assert level.latency_s["ttft"]["p50"] > 0.07  # the role-only delta came at once
    assert any("stream_options" in b for b in server.state.bodies)


def test_non_streaming_has_e2el_and_no_ttft(load, mock_server):
    url, _ = mock_server(ttft_s=0.02, itl_s=0.002)
    run = load(url, stream=False, requests=4, output_tokens=6)
    level = summarize(run).levels[0]
    assert level.completed == 4 and level.latency_s["ttft"] is None
    assert level.latency_s["e2el"]["p50"] > 0.02


def test_extras_a_server_refuses_are_dropped(load, mock_server):
    url, server = mock_server(ttft_s=0.005, itl_s=0.001, reject_extras=("ignore_eos",))
    run = load(url, requests=4)
    assert summarize(run).levels[0].completed == 4
    assert run.server["extras_refused"] == ["ignore_eos"]
    assert run.settings["ignore_eos_sent"] is False
    assert not any("ignore_eos" in b for b in server.state.bodies[-4:])


def test_sends_exact_lengths_greedy(load, mock_server):
    url, server = mock_server(ttft_s=0.005, itl_s=0.001)
    load(url, requests=2, output_tokens=5, api_key="sk-test")
    body = server.state.bodies[-1]
    assert body["max_tokens"] == 5 and body["ignore_eos"] is True and body["temperature"] == 0
    assert body["stream_options"] == {"include_usage": True}


def test_range_ratio_varies_the_lengths_and_each_answer_is_as_long_as_asked(mock_server, make_options):
    from lmprof.load.bench import new_load_run, run_load
    from lmprof.load.prompts import draw_lengths

    url, server = mock_server(ttft_s=0.002, itl_s=0.001)
    opts = make_options(url, requests=16, input_tokens=20, output_tokens=8, range_ratio=0.5, seed=2)
    run = run_load(opts, new_load_run(opts, ["test"]))
    assert run.settings["range_ratio"] == 0.5
    ok = [r for r in run.requests if r.level == 0]
    assert len(ok) == 16 and all(r.ok for r in ok)
    asked = [b["max_tokens"] for b in server.state.bodies[-16:]]  # the preflight's came first
    assert sorted(asked) == sorted(r.planned_output_tokens for r in ok)
    assert len(set(asked)) > 1 and all(4 <= n <= 12 for n in asked)
    for r in ok:  # ignore_eos: the server generated exactly what each request asked
        assert r.output_tokens_method == COUNT_USAGE and r.output_tokens == r.planned_output_tokens
        assert len(r.chunk_gaps_s) == r.output_tokens - 1
    # The mock's usage counts the prompt's words: each prompt was as long as its draw.
    assert [(r.input_tokens, r.output_tokens) for r in ok] == [draw_lengths(opts, r.index) for r in ok]
    assert len({r.input_tokens for r in ok}) > 1 and all(10 <= r.input_tokens <= 30 for r in ok)
    level = summarize(run).levels[0]
    assert level.output_tokens == sum(r.output_tokens for r in ok)  # output tok/s counts what came back
    assert not any("tokens asked" in w for w in summarize(run).warnings)


def test_server_metrics_and_cache_hit_rate(load, mock_server):
    url, _ = mock_server(ttft_s=0.005, itl_s=0.002)
    run = load(url, requests=20, repeat_share=0.5, seed=1)
    assert run.metrics and "lmprof:requests_total" in run.metrics[-1].values
    assert run.server["version"] == "mock-1.0" and run.server["models"] == ["mock-model"]
    level = summarize(run).levels[0]
    repeats = sum(r.repeat_of is not None for r in run.requests if r.level == 0)
    assert repeats >= 4
    assert level.server["prefix_cache_hit_rate"] > 0.15


def test_no_metrics_endpoint_is_noted(load, mock_server):
    url, _ = mock_server(ttft_s=0.005, itl_s=0.001, metrics=False)
    run = load(url, requests=2)
    assert not run.metrics and "404" in run.metrics_note


def test_chat_with_messages_from_a_prompts_file(load, mock_server, tmp_path):
    prompts = tmp_path / "chat.jsonl"
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    prompts.write_text(json.dumps({"messages": messages, "output_tokens": 3}) + "\n")
    url, server = mock_server(ttft_s=0.01, itl_s=0.002)
    run = load(f"{url}/v1/chat/completions", requests=3, prompts_file=str(prompts))
    assert run.server["endpoint"] == "/v1/chat/completions"
    ok = [r for r in run.requests if r.level == 0]
    assert all(r.ok and r.output_tokens == 3 for r in ok)
    assert server.state.bodies[-1]["max_tokens"] == 3


@pytest.mark.parametrize("path", ["/version", "/api/version", "/info"])
def test_server_version_is_found_where_the_server_says_it(load, mock_server, path):
    url, _ = mock_server(ttft_s=0.002, itl_s=0.001, version="9.9", version_path=path)
    run = load(url, requests=1)
    assert (run.server["version"], run.server["version_from"]) == ("9.9", path)
    assert run.server["server_header"] == "mock-openai"


def test_a_request_on_a_connection_the_server_closed_is_sent_again():
    """A server that closes kept-alive connections (llama.cpp's llama-server does) can make a
    pooled connection fail on its first write; the request goes out again on a new connection,
    is marked resent, and succeeds. The pooled session here fails as aiohttp does then."""
    import asyncio
    import socket
    import threading

    import aiohttp

    from lmprof.clock import Clock
    from lmprof.load.client import RequestSender
    from lmprof.load.options import LoadOptions
    from lmprof.load.prompts import Prompt
    from lmprof.record.load import RequestRecord

    body = b'{"choices":[{"text":"hi","finish_reason":"length"}],"usage":{"completion_tokens":1,"prompt_tokens":2}}'

    def serve(listener):
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))  # fmt: skip

    class StalePool:
        async def post(self, *args, **kwargs):
            raise aiohttp.ClientOSError(None, "Can not write request body for http://127.0.0.1")

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    threading.Thread(target=serve, args=(listener,), daemon=True).start()

    async def go():
        opts = LoadOptions(base_url=f"http://127.0.0.1:{listener.getsockname()[1]}", stream=False)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
            sender = RequestSender(StalePool(), opts, "m", Clock(), 0.0, fresh_session=fresh)
            record = RequestRecord(index=0, level=0, warmup=False, scheduled_s=0.0, sent_s=0.0, end_s=0.0)
            return await sender.send(record, Prompt(text="hello", output_tokens=1))

    record = asyncio.run(go())
    listener.close()
    assert record.ok and record.resent and record.output_tokens == 1, record.error
