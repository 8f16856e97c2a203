"""The model thread of `--scheduler continuous`: one thread stepping lmprof's ContinuousBatcher.

Requests join the running batch between decode steps and leave it when they finish (see
lmprof.engine.continuous). This module only wires the batcher to the server: a Job becomes
a batcher Request whose token callback feeds the same RowDecoder the other schedulers use
(text, stop strings, the events the relay streams), a client that goes away cancels its
request in the batcher (its row is free at the next step), and every step is recorded for
the server's profile with its decode batch size and prefill tokens. The thread sleeps in
`wait_for_work` while there is nothing to step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lmprof.engine.continuous import ContinuousBatcher, Request, RequestState, StepRecord
from lmprof.engine.prefix_cache import PrefixCache
from lmprof.errors import UsageError
from lmprof.record.serve import EngineStep
from lmprof.serve.backends import LoadedModel
from lmprof.serve.protocol import ApiError
from lmprof.serve.worker import Job, RowDecoder

IDLE_WAIT_S = 0.1  # how often an idle engine thread looks whether it should stop
PREFIX_BLOCK_TOKENS = 16


@dataclass
class _Live:
    job: Job
    row: RowDecoder
    state: RequestState | None = None


class ContinuousWorker:
    """Same face as ModelWorker (submit, start, stop, running, waiting), over a batcher.
    `submit` is safe from any thread."""

    def __init__(
        self,
        model: LoadedModel,
        tokenizer: Any,
        *,
        threads: int,
        max_batch: int,
        max_seq_len: int,
        prefill_chunk: int,
        prefix_cache_bytes: int,
        batch_wait_s: float = 0.0,
        now_s: Callable[[], float],
        on_step: Callable[[EngineStep], None],
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.threads = threads
        self.now_s = now_s
        self.batch_wait_s = batch_wait_s
        self.on_step = on_step
        self.prefix_cache = (
            PrefixCache(prefix_cache_bytes, PREFIX_BLOCK_TOKENS) if prefix_cache_bytes else None
        )
        self.batcher = ContinuousBatcher(
            model.model, max_batch=max_batch, max_seq_len=max_seq_len, prefill_chunk=prefill_chunk,
            prefix_cache=self.prefix_cache, keep_steps=1,  # the profiler keeps the steps
        )  # fmt: skip
        self._eos = frozenset(model.eos_token_ids)
        self._live: dict[str, _Live] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._step_start_s = 0.0  # the running step's start (engine thread only)
        self._thread = threading.Thread(target=self._run, name="lmprof-model", daemon=True)

    @property
    def running(self) -> int:
        return self.batcher.running

    @property
    def waiting(self) -> int:
        return self.batcher.waiting

    @property
    def kv_bytes_in_use(self) -> int:
        return self.batcher.kv_bytes_in_use

    @property
    def kv_usage(self) -> float:
        """Share of the token budget held (vLLM's kv_cache_usage_perc is this fraction)."""
        return self.batcher.kv_tokens / self.batcher.kv_budget_tokens

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish what the batcher holds, then end the thread."""
        self._stopping.set()
        self._thread.join(timeout_s)

    def submit(self, job: Job, max_waiting: int) -> bool:
        """Queue `job` unless `max_waiting` requests already wait; False means it was refused.
        Raises ApiError 400 for a prompt the batcher refuses (a token id past the vocabulary)."""
        if self.batcher.waiting >= max_waiting:
            return False
        job.record.admitted_s = self.now_s()
        live = _Live(job, RowDecoder(job, self.tokenizer, set(self._eos), self.model.device, lambda: None))
        request = Request(
            prompt=list(job.prompt_ids), max_new_tokens=job.max_tokens, temperature=job.temperature,
            seed=job.seed, eos_token_ids=frozenset() if job.ignore_eos else self._eos,
            on_token=lambda token: self._on_token(live, token), on_finish=lambda s: self._on_finish(live, s),
            request_id=job.record.request_id,
        )  # fmt: skip
        with self._lock:
            self._live[request.request_id] = live
        try:
            live.state = self.batcher.submit(request)
        except UsageError as exc:  # the batcher checks what the handler could not (token ids)
            with self._lock:
                self._live.pop(request.request_id, None)
            raise ApiError(400, str(exc), param="prompt", code="invalid_value") from exc
        job.on_cancel = lambda: self.batcher.cancel(request.request_id)
        if job.cancelled.is_set():  # gone before the hook was set
            self.batcher.cancel(request.request_id)
        return True

    # ---- the engine thread ----

    def _run(self) -> None:
        torch.set_num_threads(self.threads)  # on the thread that runs the ops (OpenMP counts per thread)
        while True:
            if not self.batcher.wait_for_work(IDLE_WAIT_S, gather_s=self.batch_wait_s):
                if self._stopping.is_set():
                    return
                continue
            start_s = self._step_start_s = self.now_s()
            try:
                record = self.batcher.step()
            except Exception as exc:  # noqa: BLE001 (a bug in a step must not end the server)
                self._fail_all(f"internal error in the model thread: {type(exc).__name__}")
                continue
            self._step_done(record, start_s, self.now_s())

    def _step_done(self, record: StepRecord, start_s: float, end_s: float) -> None:
        with self._lock:
            lives = list(self._live.values())
        for live in lives:  # admitted this step: its prefill began at the step's start
            if live.job.record.started_s is None and live.state is not None and live.state.admitted:
                live.job.record.started_s = start_s
                live.job.record.batch_size = max(1, record.decode_rows)
        kind = "decode" if record.decode_rows else "prefill"
        rows = record.decode_rows or record.prefill_requests
        self.on_step(
            EngineStep(
                start_s,
                end_s,
                kind,
                rows,
                rows,
                prefill_tokens=record.prefill_tokens,
                waiting=record.waiting,
                kv_tokens=record.kv_tokens,
                kv_columns=self.batcher.pool.clock,
            )  # fmt: skip
        )

    def _on_token(self, live: _Live, token: int) -> None:
        row, record = live.row, live.job.record
        if not row.active:
            return
        t_s = self.now_s()
        if record.first_token_s is None:
            record.first_token_s = t_s
            if record.started_s is None:  # admitted in this step: its prefill began with it
                record.started_s = self._step_start_s
            record.cached_tokens = live.state.cached_tokens if live.state is not None else 0
        row.push(token, t_s)
        ends_in_batcher = token in live.state.request.eos_token_ids or len(row.ids) >= row.job.max_tokens
        if not row.active and not ends_in_batcher:  # a stop string ended it: the batcher must hear
            self.batcher.cancel(record.request_id)

    def _on_finish(self, live: _Live, state: RequestState) -> None:
        with self._lock:
            self._live.pop(state.request_id, None)
        row, record = live.row, live.job.record
        record.cached_tokens = state.cached_tokens
        if not row.active:
            return
        if state.finish_reason == "error":
            error = state.error
            first = (str(error).strip().splitlines() or [""])[0] if error is not None else ""
            row.fail(f"generation failed: {type(error).__name__}: {first}", self.now_s())
        else:  # cancelled by its client (stop and length were pushed by the token callback)
            row.active = False
            record.outcome = "cancelled"
            record.finished_s = self.now_s()

    def _fail_all(self, message: str) -> None:
        with self._lock:
            lives = list(self._live.values())
            self._live.clear()
        for live in lives:
            self.batcher.cancel(live.job.record.request_id)
            if live.row.active:
                live.row.fail(message, self.now_s())
