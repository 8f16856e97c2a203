"""`--scheduler continuous` on lmprof's engine: greedy outputs of concurrent requests equal each
prompt alone (fp32), requests really share decode steps, a client that leaves frees its row,
the prefix cache's hits show in usage and /metrics and answer as a miss would, the response
cache still answers repeats, and continuous on transformers is refused in one line."""

from __future__ import annotations

import asyncio

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

from lmprof.cli.main import main
from lmprof.serve.settings import ServeSettings

PROMPTS = ["Hi", "The quick brown fox jumps over", "Tell me a story about the sea and the sky", "x y"]
GREEDY = {"temperature": 0, "max_tokens": 10, "ignore_eos": True}
CONTINUOUS = {"scheduler": "continuous", "max_batch_rows": 4, "prefill_chunk": 4, "max_model_len": 2048}
# A token-id prompt of 40 tokens: two 16-token blocks can come from the prefix cache.
SHARED = [(7 * i + 3) % 500 + 1 for i in range(40)]


async def _all(url: str, bodies: list[dict], streamed: bool) -> list[str]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        if streamed:
            answers = await asyncio.gather(*(stream(s, url, b) for b in bodies))
            assert all(status == 200 and items[-1] == "[DONE]" for status, items in answers), answers
            return [streamed_text(items) for _, items in answers]
        answers = await asyncio.gather(*(post(s, url, b) for b in bodies))
        assert all(status == 200 for status, _, _ in answers), answers
        return [completion_text(body) for _, body, _ in answers]


@pytest.fixture(scope="module")
def alone(model_engine):
    with RunningServer(model_engine, scheduler="sequential") as server:
        url = server.url + "/v1/completions"
        return [run(_all(url, [{"prompt": p, **GREEDY}], streamed=False))[0] for p in PROMPTS]


def test_greedy_outputs_of_concurrent_requests_equal_each_prompt_alone(model_engine, alone):
    # Different output lengths, so requests leave the batch at different steps.
    bodies = [{"prompt": p, **GREEDY, "max_tokens": 10 + 3 * i} for i, p in enumerate(PROMPTS)]
    with RunningServer(model_engine, **CONTINUOUS) as server:
        url = server.url + "/v1/completions"
        whole = run(_all(url, bodies, streamed=False))
        streamed = run(_all(url, bodies, streamed=True))
    assert [w[: len(a)] for w, a in zip(whole, alone, strict=True)] == alone
    assert streamed == whole
    steps, requests = server.profiler.steps, server.profiler.requests
    assert max(s.batch_size for s in steps if s.kind == "decode") > 1, "no decode step ran two requests"
    assert any(s.prefill_tokens == 4 for s in steps), "prompts were not prefilled in chunks"
    assert all(
        r.arrived_s <= r.admitted_s <= r.started_s < r.first_token_s <= r.finished_s for r in requests
    ), "a request's prefill phase (admission to its first token) is not measured"
    assert all(len(set(a)) > 1 for a in alone), "outputs too uniform to tell rows apart"


def test_a_client_that_leaves_mid_stream_frees_its_row(model_engine):
    long = {"prompt": "Go on", "temperature": 0, "max_tokens": 1500, "ignore_eos": True, "stream": True}

    async def go(server):
        url = server.url + "/v1/completions"
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            resp = await s.post(url, json=long)
            chunks = 0
            async for line in resp.content:
                chunks += line.startswith(b"data: ")
                if chunks == 3:
                    break
            resp.close()  # the client hangs up mid-stream
            return await post(s, url, {"prompt": "Next", "max_tokens": 3, "ignore_eos": True})

    with RunningServer(model_engine, **{**CONTINUOUS, "max_batch_rows": 1}) as server:
        status, body, _ = run(go(server))
        running = server.server.worker.running
    assert status == 200 and body["usage"]["completion_tokens"] == 3
    gone = server.profiler.requests[0]
    assert gone.outcome == "cancelled" and gone.completion_tokens < 1500
    # With one row, the next request could only run once the first left its row.
    assert len(server.profiler.steps) < 300, "the cancelled request kept decoding"
    assert running == 0


def test_a_prefix_cache_hit_is_reported_and_answers_as_a_miss(model_engine):
    body = {"prompt": SHARED, **GREEDY}

    async def go(url):
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            _, miss, _ = await post(s, url + "/v1/completions", body)
            _, hit, _ = await post(s, url + "/v1/completions", body)
            _, items = await stream(
                s, url + "/v1/completions", {**body, "stream_options": {"include_usage": True}}
            )
            return miss, hit, items, await metric_values(s, url)

    with RunningServer(model_engine, **CONTINUOUS, prefix_cache_bytes=16 << 20) as server:
        miss, hit, items, metrics = run(go(server.url))
    assert miss["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert hit["usage"]["prompt_tokens_details"] == {"cached_tokens": 32}
    assert items[-2]["usage"]["prompt_tokens_details"] == {"cached_tokens": 32}
    assert completion_text(hit) == completion_text(miss) == streamed_text(items)
    assert [r.cached_tokens for r in server.profiler.requests] == [0, 32, 32]
    for ns in ("vllm", "lmprof"):
        assert metrics[f"{ns}:prefix_cache_queries_total"] == 3 * 40
        assert metrics[f"{ns}:prefix_cache_hits_total"] == 2 * 32
    assert "vllm:kv_cache_usage_perc" in metrics and "lmprof:kv_cache_bytes" in metrics
    # The hit skipped prefill: two prompts of 40 tokens ran 8 each, not 40.
    assert sum(s.prefill_tokens for s in server.profiler.steps) == 40 + 8 + 8


def test_the_response_cache_answers_repeats_under_continuous(model_engine):
    body = {"prompt": "Cache me", **GREEDY}

    async def go(url):
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            _, first, _ = await post(s, url, body)
            _, again, _ = await post(s, url, body)
            return first, again

    with RunningServer(model_engine, **CONTINUOUS, response_cache_bytes=1 << 20) as server:
        first, again = run(go(server.url + "/v1/completions"))
    assert first["usage"]["lmprof"] == {"response_cache": "miss"}
    assert again["usage"]["lmprof"] == {"response_cache": "hit"}
    assert completion_text(first) == completion_text(again)
    ran, replayed = server.profiler.requests
    assert ran.started_s is not None and ran.outcome == "ok"
    assert replayed.outcome == "cache_hit" and replayed.started_s is None, "a hit ran the model"
    # A request that ends at max_tokens leaves the batcher by itself: no empty step after it.
    assert all(s.batch_size > 0 for s in server.profiler.steps)


def test_a_token_id_past_the_vocabulary_is_refused_alone(model_engine):
    async def go(url):
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            return await asyncio.gather(
                post(s, url, {"prompt": [10**6], "max_tokens": 5}), post(s, url, {"prompt": "Hi", **GREEDY})
            )

    with RunningServer(model_engine, **CONTINUOUS) as server:
        (bad_status, bad, _), (good_status, good, _) = run(go(server.url + "/v1/completions"))
    live = dict(server.server.worker._live)  # after the drain: the engine thread is done
    assert bad_status == 400 and "token ids" in bad["error"]["message"]
    assert good_status == 200 and good["usage"]["completion_tokens"] == 10
    assert live == {}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["tiny", "--scheduler", "continuous"], "--engine lmprof"),
        (["tiny", "--engine", "lmprof", "--prefix-cache", "1M"], "--scheduler continuous"),
        (["tiny", "--engine", "lmprof", "--scheduler", "continuous", "--max-batch", "0"], "--max-batch"),
        (["tiny", "--native"], "--engine lmprof"),
        (["tiny", "--huge-pages"], "--engine lmprof"),
        (["tiny", "--engine", "lmprof", "--scheduler", "continuous", "--batch-size", "4"], "--max-batch"),
        (["tiny", "--batch-wait-ms", "5"], "static-batch or continuous"),
        (["tiny", "--engine", "lmprof", "--scheduler", "continuous", "--batch-wait-ms", "-1"], "0 or more"),
    ],
)
def test_bad_continuous_command_lines_are_one_line_and_exit_2(args, words, serve_cache, capsys, monkeypatch):
    monkeypatch.setenv("LMPROF_CACHE", str(serve_cache))
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and words in err


def test_batch_wait_is_the_idle_engines_gather_under_continuous_and_nothing_under_sequential():
    from lmprof.serve.settings import DEFAULT_BATCH_WAIT_MS, ServeSettings

    continuous = ServeSettings(engine="lmprof", scheduler="continuous")
    assert continuous.batch_wait_s == DEFAULT_BATCH_WAIT_MS / 1000
    assert ServeSettings(engine="lmprof", scheduler="continuous", batch_wait_ms=0).batch_wait_s == 0
    assert ServeSettings(scheduler="sequential").batch_wait_s == 0
    assert continuous.as_record()["batch_wait_s"] == DEFAULT_BATCH_WAIT_MS / 1000


def test_an_engine_server_runs_the_native_step_where_it_can(random_llama):
    """A server is run for speed: left alone, lmprof's engine on a CPU float32 model takes the
    native decode step (where the kernels build) and fused projections; --no-native is the torch
    path. Both serve the same greedy text."""
    from lmprof.engine.native import is_built
    from lmprof.serve.server import load_server_model

    def load(native):
        return load_server_model(
            ServeSettings(
                model=str(random_llama), engine="lmprof", device="cpu", dtype="float32", native=native
            )
        )

    default, torch_ops = load(None), load(False)
    switches = default.description["engine_switches"]
    if is_built() or switches["native_decode"]:
        assert switches["native_decode"] is True and switches["why"]["native_decode"] == "default"
        assert default.model.model.options.native_decode
    assert default.model.model.options.fuse_qkv and default.model.model.options.fuse_gate_up
    assert torch_ops.description["engine_switches"]["native_decode"] is False
    assert not torch_ops.model.model.options.native_decode
    answers = []
    for loaded in (default, torch_ops):
        with RunningServer(loaded, **CONTINUOUS) as server:
            _, body, _ = run(_post_once(server.url + "/v1/completions", {"prompt": "Once upon", **GREEDY}))
        answers.append(body["choices"][0]["text"])
    assert answers[0] == answers[1]


async def _post_once(url, body):
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        return await post(s, url, body)
