"""The schedulers under concurrency: greedy outputs equal each prompt run alone (both engines,
fp32), static-batch really batches, a failing request fails alone, a client that leaves frees
its slot, and a full queue answers 429."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from serve_helpers import TIMEOUT, RunningServer, completion_text, post, run, stream, streamed_text

PROMPTS = ["Hi", "The quick brown fox jumps over", "Tell me a story about the sea and the sky", "x y"]
GREEDY = {"temperature": 0, "max_tokens": 10, "ignore_eos": True}
LONG = {"temperature": 0, "max_tokens": 1500, "ignore_eos": True}  # seconds of decoding on tiny


async def _all(url: str, bodies: list[dict], streamed: bool) -> list[str]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        if streamed:
            answers = await asyncio.gather(*(stream(s, url, b) for b in bodies))
            assert all(status == 200 and items[-1] == "[DONE]" for status, items in answers)
            return [streamed_text(items) for _, items in answers]
        answers = await asyncio.gather(*(post(s, url, b) for b in bodies))
        assert all(status == 200 for status, _, _ in answers), answers
        return [completion_text(body) for _, body, _ in answers]


@pytest.fixture(scope="module", params=["transformers", "lmprof"])
def loaded(request, model_transformers, model_engine):
    return model_transformers if request.param == "transformers" else model_engine


@pytest.fixture(scope="module")
def alone(loaded):
    """Each prompt's greedy completion, run by itself on the sequential server."""
    with RunningServer(loaded, scheduler="sequential") as server:
        url = server.url + "/v1/completions"
        return [run(_all(url, [{"prompt": p, **GREEDY}], streamed=False))[0] for p in PROMPTS]


@pytest.mark.parametrize(
    ("scheduler", "extra"),
    [("sequential", {}), ("async", {}), ("static-batch", {"batch_size": 4, "batch_wait_ms": 500})],
)
def test_greedy_outputs_equal_each_prompt_alone(loaded, alone, scheduler, extra):
    bodies = [{"prompt": p, **GREEDY} for p in PROMPTS]
    with RunningServer(loaded, scheduler=scheduler, **extra) as server:
        url = server.url + "/v1/completions"
        whole = run(_all(url, bodies, streamed=False))
        streamed = run(_all(url, bodies, streamed=True))
    steps, requests = server.profiler.steps, server.profiler.requests  # after the drain: complete
    assert whole == alone and streamed == alone
    widest = max(step.batch_size for step in steps)
    if scheduler == "static-batch":
        assert widest > 1, "static-batch ran no request in a batch with another"
        assert max(r.batch_size for r in requests) > 1
    else:
        assert widest == 1
    assert all(len(set(a)) > 1 for a in alone), "outputs too uniform to tell rows apart"


def test_sequential_serves_one_http_request_at_a_time(model_transformers):
    body = {"prompt": "Hello", "temperature": 0, "max_tokens": 30, "ignore_eos": True}
    with RunningServer(model_transformers, scheduler="sequential") as server:
        run(_all(server.url + "/v1/completions", [body] * 3, streamed=True))
    reqs = sorted(server.profiler.requests, key=lambda r: r.admitted_s)
    # The next request enters the worker only after the previous one's response is written.
    for earlier, later in zip(reqs, reqs[1:], strict=False):
        assert later.admitted_s >= earlier.responded_s


def test_async_queues_requests_and_measures_it(model_transformers):
    body = {"prompt": "Hello", "temperature": 0, "max_tokens": 200, "ignore_eos": True}
    with RunningServer(model_transformers, scheduler="async") as server:
        run(_all(server.url + "/v1/completions", [body] * 3, streamed=True))
    reqs = server.profiler.requests
    # All admitted at once (before the first finished), and the later ones measurably queued.
    assert max(r.admitted_s for r in reqs) < min(r.finished_s for r in reqs)
    assert sorted(r.started_s - r.admitted_s for r in reqs)[-1] > 0.005


@pytest.mark.parametrize("scheduler", ["async", "static-batch"])
def test_a_failing_request_fails_alone(model_transformers, scheduler):
    """A token id past the vocabulary makes the model raise: that request gets a 500 (or an SSE
    error event), the request beside it completes as it would alone."""
    extra = {"batch_size": 4, "batch_wait_ms": 500} if scheduler == "static-batch" else {}
    bad = {"prompt": [10**6], "max_tokens": 5}
    good = {"prompt": "The quick brown fox jumps over", **GREEDY}

    async def go(url):
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            return await asyncio.gather(post(s, url, bad), post(s, url, good), stream(s, url, bad))

    with RunningServer(model_transformers, scheduler=scheduler, **extra) as server:
        url = server.url + "/v1/completions"
        (bad_status, bad_body, _), (good_status, good_body, _), (sse_status, items) = run(go(url))
        again = run(_all(url, [good], streamed=False))
    assert bad_status == 500 and bad_body["error"]["type"] == "server_error"
    assert good_status == 200 and good_body["usage"]["completion_tokens"] == 10
    assert completion_text(good_body) == again[0]
    # Streaming had started (headers sent) when the model failed: an error event, then [DONE].
    assert sse_status == 200 and "error" in items[-2] and items[-1] == "[DONE]"


def test_a_client_that_leaves_frees_its_slot(model_transformers):
    async def go(url):
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            resp = await s.post(url, json={"prompt": "Go on", **LONG, "stream": True})
            chunks = 0
            async for line in resp.content:
                chunks += line.startswith(b"data: ")
                if chunks == 3:
                    break
            resp.close()  # the client hangs up mid-stream
            return await post(s, url, {"prompt": "Next", "max_tokens": 3})

    with RunningServer(model_transformers, scheduler="async") as server:
        status, body, _ = run(go(server.url + "/v1/completions"))
    steps = len(server.profiler.steps)
    gone = server.profiler.requests[0]
    assert status == 200 and body["usage"]["completion_tokens"] == 3
    assert gone.outcome == "cancelled"
    # The next request ran right after the hang-up, not after 1500 tokens of the first.
    assert steps < 300, f"{steps} engine steps: the cancelled request kept decoding"


def _waiting(server: RunningServer) -> int:
    """Requests admitted but not running: in the worker's queue, or at the sequential lock."""
    return server.server.worker.waiting + server.server.state.lock_waiters


@pytest.mark.parametrize("scheduler", ["async", "sequential"])
def test_full_queue_answers_429_with_retry_after(model_transformers, scheduler):
    async def go(server):
        url = server.url + "/v1/completions"
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            running = await s.post(url, json={"prompt": "Busy", **LONG, "stream": True})
            await running.content.readline()  # it is running
            queued = asyncio.ensure_future(post(s, url, {"prompt": "Wait", "max_tokens": 2}))
            for _ in range(1000):
                if _waiting(server) == 1:
                    break
                await asyncio.sleep(0.01)
            assert _waiting(server) == 1, "the second request never reached the queue"
            refused = await post(s, url, {"prompt": "No room", "max_tokens": 2})
            running.close()
            return refused, await queued

    with RunningServer(model_transformers, scheduler=scheduler, max_queue=1) as server:
        (status, body, headers), (queued_status, _, _) = run(go(server))
    assert status == 429 and int(headers["Retry-After"]) >= 1
    assert body["error"]["code"] == "queue_full"
    assert queued_status == 200


def test_static_batch_rows_leave_when_done_while_the_batch_runs_on(model_transformers):
    short = {"prompt": "Short one", "temperature": 0, "max_tokens": 3, "ignore_eos": True}
    long = {"prompt": "A longer one", "temperature": 0, "max_tokens": 60, "ignore_eos": True}
    with RunningServer(
        model_transformers, scheduler="static-batch", batch_size=2, batch_wait_ms=500
    ) as server:
        run(_all(server.url + "/v1/completions", [short, long], streamed=True))
    quick, slow = sorted(server.profiler.requests, key=lambda r: r.completion_tokens)
    assert (quick.completion_tokens, slow.completion_tokens) == (3, 60)
    assert quick.batch_size == slow.batch_size == 2
    assert quick.responded_s < slow.finished_s, "the short request waited for the batch to end"
    steps = server.profiler.steps
    assert len(steps) == 60  # one batch: a prefill and 59 decode steps, not one run per request
    assert [s.active_rows for s in steps[3:]] == [1] * 57  # the finished row rides along, inactive
