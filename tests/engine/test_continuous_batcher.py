"""The continuous batcher (engine/continuous.py) against the same prompts run alone through
lmprof.engine.generate, greedy fp32, on the tiny checkpoints of helpers/engine_models.py:
requests of different lengths joining at random steps, chunked prefill, cancellation,
preemption under a small token budget, cache compaction and the native decode step."""

from __future__ import annotations

import queue
import random
import threading
import time

import pytest
from helpers.engine_models import VOCAB

from lmprof.engine import EngineOptions, generate, load_hf_folder
from lmprof.engine.continuous import IDLE_PREFILL_CHUNKS, ContinuousBatcher, Request
from lmprof.engine.generate import torch_threads
from lmprof.errors import UsageError

MAX_NEW = 12
MAX_SEQ = 64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops: on a shared 2-core host, torch's thread pool makes each one cost milliseconds."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def engines(model_dirs):
    return {name: load_hf_folder(model_dirs[name]) for name in ("llama3-untied", "qwen2")}


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(7)
    return [[rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 40))] for _ in range(12)]


_ALONE: dict[tuple[int, int], list[int]] = {}


def alone(model, prompt: list[int]) -> list[int]:
    """MAX_NEW greedy tokens of `prompt` run by itself through generate()."""
    key = (id(model), hash(tuple(prompt)))
    if key not in _ALONE:
        _ALONE[key] = generate(model, [prompt], MAX_NEW).tokens[0].tolist()
    return _ALONE[key]


def expected(model, prompt: list[int], max_new: int, eos: frozenset[int]) -> list[int]:
    tokens = alone(model, prompt)[:max_new]
    cut = next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))
    return tokens[:cut]


def failing_on(forward_segments, poison: int, what: str):
    """model.forward_segments that raises "<what> out of memory" for a pass holding `poison`."""

    def failing(segments):
        if any(bool((s.tokens == poison).any()) for s in segments):
            raise RuntimeError(f"{what} out of memory")
        return forward_segments(segments)

    return failing


def run_scenario(model, prompts, seed: int, **batcher_kwargs) -> ContinuousBatcher:
    """Submit every prompt at a random step with random lengths, eos and cancellations; check
    every request's tokens against the prompt alone."""
    rng = random.Random(seed)
    batcher = ContinuousBatcher(model, **batcher_kwargs)
    order = rng.sample(range(len(prompts)), k=rng.randint(3, len(prompts)))
    arrivals = sorted(rng.randint(0, 12) for _ in order)
    plans = []
    for index, arrival in zip(order, arrivals, strict=True):
        prompt = prompts[index]
        max_new = rng.randint(1, MAX_NEW)
        reference = alone(model, prompt)
        eos = frozenset({reference[rng.randrange(MAX_NEW)]}) if rng.random() < 0.3 else frozenset()
        cancel_at = arrival + rng.randint(0, 10) if rng.random() < 0.2 else None
        plans.append((arrival, cancel_at, Request(prompt, max_new, eos_token_ids=eos)))
    states, step = [], 0
    while step <= 12 or batcher.has_work:
        for arrival, cancel_at, request in plans:
            if arrival == step:
                states.append((batcher.submit(request), cancel_at))
            if cancel_at == step:
                batcher.cancel(request.request_id)
        batcher.step()
        step += 1
        assert step < 2000
    for state, cancel_at in states:
        request = state.request
        want = expected(model, request.prompt, request.max_new_tokens, request.eos_token_ids)
        if state.finish_reason == "cancelled":
            assert cancel_at is not None and state.tokens == want[: len(state.tokens)]
        else:
            assert state.tokens == want, (seed, state.request_id)
            assert state.finish_reason == ("stop" if want[-1] in request.eos_token_ids else "length")
    return batcher


@pytest.mark.parametrize("name", ["llama3-untied", "qwen2"])
def test_random_arrivals_equal_each_prompt_alone(engines, prompts, name):
    model = engines[name]
    rng = random.Random(name)
    compactions = joint_prefills = 0
    for seed in range(40):
        batcher = run_scenario(
            model, prompts, seed,
            max_batch=rng.randint(1, 5), max_seq_len=MAX_SEQ, prefill_chunk=rng.choice([1, 3, 8, 64]),
            columns=rng.choice([MAX_SEQ + 1, MAX_SEQ + 7, 2 * MAX_SEQ]),  # small: compaction often
        )  # fmt: skip
        assert not batcher.has_work and batcher.kv_tokens == 0
        assert all(r.decode_rows <= batcher.max_batch for r in batcher.steps)
        for r in batcher.steps:  # a chunk a step beside decoding rows; more with none decoding
            assert r.prefill_tokens <= batcher.prefill_chunk * (1 if r.decode_rows else IDLE_PREFILL_CHUNKS)
        compactions += batcher.pool.compactions
        joint_prefills += sum(r.prefill_requests > 1 for r in batcher.steps)
    assert compactions > 0  # the shared decode column did wrap
    assert joint_prefills > 0  # several requests' chunks ran as one padded pass


def test_preemption_under_a_small_budget_recomputes_and_loses_nothing(engines, prompts):
    model = engines["llama3-untied"]
    preempted = 0
    for seed in range(25):
        batcher = run_scenario(
            model,
            prompts,
            100 + seed,
            max_batch=4,
            max_seq_len=MAX_SEQ,
            prefill_chunk=16,
            kv_budget_tokens=60,
        )
        assert max(r.kv_tokens for r in batcher.steps) <= 60
        preempted += batcher.preemptions
    assert preempted > 0  # the budget did bite


def test_native_decode_step_runs_the_continuous_batch(engines, prompts, model_dirs, ops):
    model = load_hf_folder(model_dirs["llama3-untied"], EngineOptions(native_decode=True))
    torch_model = engines["llama3-untied"]
    for prompt in prompts:  # same weights: references from the torch model are shared
        _ALONE[(id(model), hash(tuple(prompt)))] = alone(torch_model, prompt)
    for seed in range(8):
        run_scenario(model, prompts, 200 + seed, max_batch=4, max_seq_len=MAX_SEQ, prefill_chunk=8,
                     columns=MAX_SEQ + 3)  # fmt: skip


def test_a_long_prompt_is_chunked_and_running_streams_get_a_token_every_step(engines):
    model = engines["qwen2"]
    batcher = ContinuousBatcher(model, max_batch=2, max_seq_len=MAX_SEQ, prefill_chunk=4)
    short = batcher.submit(Request([5, 6, 7], max_new_tokens=MAX_NEW))
    batcher.step()  # its prefill and first token
    seen = len(short.tokens)
    long = batcher.submit(Request(list(range(1, 41)), max_new_tokens=2))
    while not long.tokens:
        record = batcher.step()
        assert long.admitted  # from its first chunk's step (a server's prefill start), cache or not
        assert record.prefill_tokens <= 4 and record.decode_rows == 1
        assert len(short.tokens) == seen + 1  # the running stream was not stalled
        seen += 1
    assert long.tokens == expected(model, list(range(1, 41)), 2, frozenset())[:1]


def test_with_no_stream_decoding_a_burst_prefills_as_one_pass(engines):
    model = engines["qwen2"]
    batcher = ContinuousBatcher(model, max_batch=5, max_seq_len=MAX_SEQ, prefill_chunk=4)
    burst = [[1 + i, 2 + i, 3 + i] for i in range(4)]  # 12 tokens: 3 chunks
    states = [batcher.submit(Request(prompt, max_new_tokens=3)) for prompt in burst]
    first = batcher.step()
    assert first.decode_rows == 0 and first.prefill_tokens == 12 and first.prefill_requests == 4
    assert all(len(state.tokens) == 1 for state in states)  # every row decodes from the next step
    late = batcher.submit(Request(list(range(1, 13)), max_new_tokens=1))
    second = batcher.step()  # four streams decode now: the newcomer gets one chunk
    assert second.decode_rows == 4 and second.prefill_tokens == 4 and not late.tokens
    batcher.run_until_idle()
    for prompt, state in zip(burst, states, strict=True):
        assert state.tokens == expected(model, prompt, 3, frozenset())


def test_an_idle_engine_gathers_a_burst_for_gather_s(engines):
    model = engines["qwen2"]
    batcher = ContinuousBatcher(model, max_batch=3, max_seq_len=MAX_SEQ)
    batcher.submit(Request([1, 2], max_new_tokens=1))
    straggler = threading.Timer(0.05, lambda: batcher.submit(Request([3, 4], max_new_tokens=1)))
    straggler.start()
    assert batcher.wait_for_work(timeout=1.0, gather_s=0.5)  # the straggler comes within it
    straggler.join()
    assert batcher.step().prefill_requests == 2
    # With every row claimable at once there is nothing to wait for, and without gather_s the
    # first arrival runs alone.
    for prompt in ([1], [2], [3]):
        batcher.submit(Request(prompt, max_new_tokens=1))
    start = time.perf_counter()
    assert batcher.wait_for_work(timeout=1.0, gather_s=5.0)
    assert time.perf_counter() - start < 2.0
    assert batcher.step().prefill_requests == 3
    batcher.submit(Request([5], max_new_tokens=1))
    straggler = threading.Timer(0.05, lambda: batcher.submit(Request([6], max_new_tokens=1)))
    straggler.start()
    assert batcher.wait_for_work(timeout=1.0)
    assert batcher.step().prefill_requests == 1
    straggler.join()


def test_sampling_settings_are_per_request(engines, prompts):
    model = engines["llama3-untied"]

    def run(company: list[Request]) -> tuple[list[int], list[list[int]]]:
        batcher = ContinuousBatcher(model, max_batch=4, max_seq_len=MAX_SEQ)
        sampled = batcher.submit(Request(prompts[0], MAX_NEW, temperature=1.5, seed=3))
        others = [batcher.submit(request) for request in company]
        batcher.run_until_idle()
        return sampled.tokens, [state.tokens for state in others]

    lone, _ = run([])
    assert lone != alone(model, prompts[0])  # it did sample
    beside, (greedy, _) = run([Request(prompts[1], MAX_NEW), Request(prompts[2], 5, temperature=0.7, seed=9)])
    assert beside == lone  # its own generator, whatever the company
    assert greedy == alone(model, prompts[1])  # greedy rows beside sampled ones stay greedy


def test_callbacks_stream_every_token_once_and_finish_once(engines, prompts):
    model = engines["qwen2"]
    streamed: dict[str, list[int]] = {}
    finished: list[str] = []
    batcher = ContinuousBatcher(model, max_batch=2, max_seq_len=MAX_SEQ, kv_budget_tokens=50)
    states = []
    for i, prompt in enumerate(prompts[:5]):
        streamed[str(i)] = []
        states.append(batcher.submit(Request(
            prompt, MAX_NEW, request_id=str(i), on_token=streamed[str(i)].append,
            on_finish=lambda s: finished.append(s.request_id),
        )))  # fmt: skip
    batcher.cancel("4")  # still waiting: leaves without a token
    batcher.run_until_idle()
    assert sorted(finished) == ["0", "1", "2", "3", "4"]
    for state in states:
        assert streamed[state.request_id] == state.tokens
    assert states[4].finish_reason == "cancelled" and states[4].tokens == []


def test_step_records_use_the_injected_clock(engines):
    ticks = iter(range(1000))
    batcher = ContinuousBatcher(engines["qwen2"], max_batch=2, max_seq_len=MAX_SEQ, clock=lambda: next(ticks))
    batcher.submit(Request([1, 2, 3], max_new_tokens=3))
    batcher.run_until_idle()
    assert [(r.start_s, r.wall_s) for r in batcher.steps] == [(0, 1), (2, 1), (4, 1)]
    assert [(r.decode_rows, r.prefill_tokens, r.finished) for r in batcher.steps] == [
        (0, 3, 0),
        (1, 0, 0),
        (1, 0, 1),
    ]


def test_requests_that_cannot_fit_are_refused(engines):
    batcher = ContinuousBatcher(engines["qwen2"], max_batch=2, max_seq_len=16, kv_budget_tokens=12)
    with pytest.raises(UsageError):
        batcher.submit(Request([1] * 10, max_new_tokens=7))  # > max_seq_len
    with pytest.raises(UsageError):
        batcher.submit(Request([1] * 10, max_new_tokens=4))  # > kv budget
    with pytest.raises(UsageError):
        batcher.submit(Request([VOCAB], max_new_tokens=1))
    batcher.submit(Request([1], max_new_tokens=1, request_id="x"))
    with pytest.raises(UsageError):
        batcher.submit(Request([1], max_new_tokens=1, request_id="x"))


def test_an_engine_thread_wakes_on_submit_and_streams_to_another_thread(engines):
    model = engines["qwen2"]
    batcher = ContinuousBatcher(model, max_batch=2, max_seq_len=MAX_SEQ)
    assert not batcher.wait_for_work(timeout=0.01)
    stop = threading.Event()

    def engine_loop():
        with torch_threads(1):
            while not stop.is_set():
                if batcher.wait_for_work(timeout=0.05):
                    batcher.step()

    tokens: queue.Queue[int | None] = queue.Queue()
    worker = threading.Thread(target=engine_loop)
    worker.start()
    try:
        batcher.submit(Request([3, 4, 5], 6, on_token=tokens.put, on_finish=lambda s: tokens.put(None)))
        got = list(iter(lambda: tokens.get(timeout=30), None))
    finally:
        stop.set()
        worker.join()
    assert got == expected(model, [3, 4, 5], 6, frozenset())


def test_a_failing_pass_fails_only_the_requests_it_ran(engines, prompts, monkeypatch):
    model = engines["llama3-untied"]
    poison = VOCAB - 1  # a prompt holding it fails in prefill
    forward = model.forward
    decode_calls = []

    def failing(tokens, *args, **kwargs):
        if tokens.shape[1] > 1 and bool((tokens == poison).any()):
            raise RuntimeError("prefill out of memory")
        if tokens.shape[1] == 1 and tokens.shape[0] == 2:
            decode_calls.append(1)
            if len(decode_calls) == 3:
                raise RuntimeError("decode out of memory")
        return forward(tokens, *args, **kwargs)

    monkeypatch.setattr(model, "forward", failing)
    # prompts of different lengths prefill as segments of one pass
    monkeypatch.setattr(model, "forward_segments", failing_on(model.forward_segments, poison, "prefill"))
    batcher = ContinuousBatcher(model, max_batch=2, max_seq_len=MAX_SEQ, prefill_chunk=8)
    clean = [p for p in prompts if poison not in p]
    bad = batcher.submit(Request([3, poison, 4, 5], MAX_NEW))
    first, second = (batcher.submit(Request(p, MAX_NEW)) for p in clean[:2])
    batcher.step()
    assert bad.finish_reason == "error" and "prefill" in str(bad.error)
    batcher.run_until_idle()
    for state in (first, second):  # they decoded together until the third two-row step failed
        assert state.finish_reason == "error" and "decode" in str(state.error)
    later = batcher.submit(Request(clean[2], MAX_NEW))
    batcher.run_until_idle()
    monkeypatch.undo()
    assert later.finish_reason == "length" and later.tokens == alone(model, clean[2])


def test_decode_rows_and_a_prefill_chunk_run_as_one_pass_and_equal_each_prompt_alone(
    engines, prompts, monkeypatch
):
    model = engines["qwen2"]
    passes: list[str] = []
    forward, forward_segments = model.forward, model.forward_segments
    monkeypatch.setattr(model, "forward", lambda *a, **k: passes.append("forward") or forward(*a, **k))
    monkeypatch.setattr(
        model, "forward_segments", lambda *a, **k: passes.append("mixed") or forward_segments(*a, **k)
    )
    batcher = ContinuousBatcher(model, max_batch=3, max_seq_len=MAX_SEQ, prefill_chunk=4)
    first = batcher.submit(Request(prompts[0], MAX_NEW))
    while not first.tokens:
        batcher.step()
    late = [batcher.submit(Request(p, MAX_NEW)) for p in prompts[1:3]]
    passes.clear()
    record = batcher.step()
    assert record.decode_rows == 1 and record.prefill_tokens > 0 and passes == ["mixed"]
    batcher.run_until_idle()
    monkeypatch.undo()
    for prompt, state in zip(prompts[:3], [first, *late], strict=True):
        assert state.tokens == alone(model, prompt)
    apart = ContinuousBatcher(model, max_batch=3, max_seq_len=MAX_SEQ, prefill_chunk=4, mixed_steps=False)
    monkeypatch.setattr(model, "forward", lambda *a, **k: passes.append("forward") or forward(*a, **k))
    again = apart.submit(Request(prompts[0], MAX_NEW))
    while not again.tokens:
        apart.step()
    apart.submit(Request(prompts[1], MAX_NEW))
    passes.clear()
    apart.step()
    assert passes == ["forward", "forward"]


def test_prompts_of_different_lengths_prefill_in_one_pass_with_no_padding(engines, prompts, monkeypatch):
    model = engines["qwen2"]
    tokens_run: list[int] = []
    forward_segments = model.forward_segments

    def counting(segments):
        tokens_run.append(sum(s.tokens.numel() for s in segments))
        return forward_segments(segments)

    monkeypatch.setattr(model, "forward_segments", counting)
    batcher = ContinuousBatcher(model, max_batch=4, max_seq_len=MAX_SEQ, prefill_chunk=64)
    chosen = sorted(prompts[:4], key=len)
    assert len({len(p) for p in chosen}) > 1
    states = [batcher.submit(Request(p, MAX_NEW)) for p in chosen]
    record = batcher.step()
    assert record.prefill_requests == 4 and tokens_run == [sum(len(p) for p in chosen)]
    batcher.run_until_idle()
    monkeypatch.undo()
    for prompt, state in zip(chosen, states, strict=True):
        assert state.tokens == alone(model, prompt)


def test_a_failing_mixed_pass_is_rerun_apart_and_fails_only_its_culprit(engines, prompts, monkeypatch):
    model = engines["llama3-untied"]
    poison = VOCAB - 1
    clean = [p for p in prompts if poison not in p]
    forward = model.forward

    def failing(tokens, *args, **kwargs):
        if bool((tokens == poison).any()):
            raise RuntimeError("prefill out of memory")
        return forward(tokens, *args, **kwargs)

    monkeypatch.setattr(model, "forward", failing)
    monkeypatch.setattr(model, "forward_segments", failing_on(model.forward_segments, poison, "mixed pass"))
    batcher = ContinuousBatcher(model, max_batch=2, max_seq_len=MAX_SEQ, prefill_chunk=8)
    good = batcher.submit(Request(clean[0], MAX_NEW))
    while not good.tokens:
        batcher.step()
    bad = batcher.submit(Request([3, poison, 4, 5], MAX_NEW))
    record = batcher.step()  # the joint pass fails; decode alone runs, prefill alone fails
    assert record.decode_rows == 1 and bad.finish_reason == "error" and "prefill" in str(bad.error)
    batcher.run_until_idle()
    monkeypatch.undo()
    assert good.finish_reason == "length" and good.tokens == alone(model, clean[0])


def test_the_row_is_free_when_the_last_token_is_delivered(engines):
    batcher = ContinuousBatcher(engines["qwen2"], max_batch=1, max_seq_len=MAX_SEQ)
    running_at_token: list[int] = []
    batcher.submit(Request([1, 2, 3], 3, on_token=lambda token: running_at_token.append(batcher.running)))
    batcher.run_until_idle()
    assert running_at_token == [1, 1, 0]  # a client that sees its last token sees its row free


def test_attention_never_scans_more_than_twice_the_longest_row(engines, prompts):
    """Requests joining one after another push the shared decode column right; the batcher
    compacts once the gaps outgrow the longest row, long before the pool's last column, and
    every request still decodes what it would alone."""
    from lmprof.engine.continuous import COMPACT_MIN_GAP

    model = engines["llama3-untied"]
    batcher = ContinuousBatcher(
        model, max_batch=3, max_seq_len=MAX_SEQ, prefill_chunk=64, columns=16 * MAX_SEQ
    )
    states, widest = [], 0
    for step in range(400):
        if step % 5 == 0 and step < 300:
            prompt = prompts[(step // 5) % len(prompts)]
            states.append(batcher.submit(Request(prompt, MAX_NEW)))
        batcher.step()
        decoding = [s.kv_tokens for s in batcher._decoding]
        if decoding:
            widest = max(widest, batcher.pool.clock - max(max(decoding), COMPACT_MIN_GAP))
            assert batcher.pool.clock <= 2 * max(max(decoding), COMPACT_MIN_GAP) + 2
        if not batcher.has_work and step >= 300:
            break
    assert batcher.pool.compactions > 0 and batcher.pool.clock < batcher.pool.columns
    for state in states:
        assert state.tokens == alone(model, state.request.prompt)
