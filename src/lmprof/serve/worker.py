"""The model thread: takes jobs, forms batches, runs them step by step, hands tokens to the loop.

One thread owns the model, so forwards never overlap and the event loop never waits on one
(torch releases the GIL inside its ops). Between steps the thread picks each row's next
token, turns tokens into text, checks stop conditions and cancellation, and hands each
request its new text through `Job.emit` (which the server wires to
`loop.call_soon_threadsafe`). A batch is formed from up to `max_batch` jobs that arrive
within `batch_wait_s` of the first; with max_batch 1 the worker serves one job at a time.
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lmprof.record.serve import EngineStep, ServedRequest
from lmprof.serve.backends import LoadedModel


@dataclass
class TextDelta:
    text: str
    completion_tokens: int


@dataclass
class Finished:
    reason: str  # "stop" (eos or a stop string) or "length"
    completion_tokens: int
    text: str  # the whole completion, for the response cache and non-streaming answers


@dataclass
class Failed:
    message: str


Event = TextDelta | Finished | Failed


@dataclass
class Job:
    """One request's generation, as the worker sees it."""

    record: ServedRequest  # the worker marks started/first_token/finished on it
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    emit: Callable[[Event], None] = print  # must be safe to call from the model thread
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Set by a worker that must hear of a cancel at once (the continuous batcher's cancel).
    on_cancel: Callable[[], None] | None = None

    def cancel(self) -> None:
        """The client went away: the job leaves its batch at the next step."""
        self.cancelled.set()
        if self.on_cancel is not None:
            self.on_cancel()


class RowDecoder:
    """One batch row: its tokens so far, their text, and when it stops."""

    def __init__(
        self, job: Job, tokenizer: Any, eos_ids: set[int], device: torch.device, on_done: Callable[[], None]
    ) -> None:
        self.job = job
        self.on_done = on_done  # called before the last event, so gauges never lag the answer
        self.tokenizer = tokenizer
        self.eos_ids = set() if job.ignore_eos else eos_ids
        self.ids: list[int] = []
        self.text = ""
        self.sent_chars = 0
        self.active = True
        self.t_s = 0.0
        # Held back from the stream: a stop string may still complete across the next tokens.
        self.hold_chars = max((len(s) for s in job.stop), default=1) - 1
        self.generator: torch.Generator | None = None
        if job.temperature > 0:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(job.seed if job.seed is not None else random.getrandbits(63))

    def sample(self, logits: Tensor) -> Tensor:
        probs = torch.softmax(logits / self.job.temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator)[0]

    def push(self, token_id: int, t_s: float) -> None:
        """Take the row's next token, picked at `t_s` on the server clock."""
        self.t_s = t_s
        self.ids.append(token_id)
        if token_id in self.eos_ids:
            self._finish("stop")
            return
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for stop in self.job.stop:
            at = self.text.find(stop, max(0, self.sent_chars - len(stop)))
            if at >= 0:
                self.text = self.text[:at]
                self._finish("stop")
                return
        if len(self.ids) >= self.job.max_tokens:
            self._finish("length")
            return
        # A byte-level token may end inside a UTF-8 character: send it once it is whole.
        end = len(self.text) - self.hold_chars
        while end > self.sent_chars and self.text[end - 1] == "\ufffd":
            end -= 1
        if end > self.sent_chars:
            self.job.emit(TextDelta(self.text[self.sent_chars : end], len(self.ids)))
            self.sent_chars = end

    def _finish(self, reason: str) -> None:
        self.active = False
        self.on_done()
        self.job.record.finished_s = self.t_s  # before the loop can see Finished
        if len(self.text) > self.sent_chars:
            self.job.emit(TextDelta(self.text[self.sent_chars :], len(self.ids)))
            self.sent_chars = len(self.text)
        self.job.record.finish_reason = reason
        self.job.emit(Finished(reason, len(self.ids), self.text))

    def fail(self, message: str, t_s: float) -> None:
        self.active = False
        self.on_done()
        self.job.record.outcome = "error"
        self.job.record.finished_s = t_s
        self.job.emit(Failed(message))


class ModelWorker:
    """The one thread that runs the model. `submit` is safe from any thread."""

    def __init__(
        self,
        model: LoadedModel,
        tokenizer: Any,
        *,
        threads: int,
        max_batch: int,
        batch_wait_s: float,
        now_s: Callable[[], float],
        on_step: Callable[[EngineStep], None],
    ) -> None:
        self.model = model
        self.threads = threads
        self.tokenizer = tokenizer  # the worker's own instance: fast tokenizers are not shared
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.now_s = now_s
        self.on_step = on_step
        self.running = 0  # rows still generating (the metrics gauge reads it; only this thread writes)
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="lmprof-model", daemon=True)
        self._eos = set(model.eos_token_ids)

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._waiting

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job, max_waiting: int) -> bool:
        """Queue `job` unless `max_waiting` jobs already wait; False means it was refused."""
        with self._lock:
            if self._waiting >= max_waiting:
                return False
            self._waiting += 1
        job.record.admitted_s = self.now_s()
        self._jobs.put(job)
        return True

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the jobs already queued, then end the thread."""
        self._jobs.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        # Intra-op threads are set here, on the thread that runs the ops (OpenMP keeps the
        # count per calling thread).
        torch.set_num_threads(self.threads)
        while True:
            first = self._jobs.get()
            if first is None:
                return
            jobs = [first]
            deadline = self.now_s() + self.batch_wait_s
            ended = False
            while len(jobs) < self.max_batch:
                remaining = deadline - self.now_s()
                try:
                    job = self._jobs.get(timeout=remaining) if remaining > 0 else self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    ended = True
                    break
                jobs.append(job)
            with self._lock:
                self._waiting -= len(jobs)
            live = [job for job in jobs if not job.cancelled.is_set()]
            for job in jobs:
                if job.cancelled.is_set():
                    job.record.outcome = "cancelled"
            if live:
                try:
                    self._run_batch(live)
                except Exception as exc:  # noqa: BLE001 (a bug here must not stop the model thread)
                    for job in live:  # a handler reads only its first final event: no double answer
                        job.emit(Failed(f"internal error in the model thread: {type(exc).__name__}"))
                self.running = 0  # one batch at a time: none of its rows runs now
            if ended:
                return

    def _run_batch(self, jobs: list[Job]) -> None:
        started = False
        rows = [RowDecoder(job, self.tokenizer, self._eos, self.model.device, self._row_done) for job in jobs]
        self.running += len(rows)
        try:
            with torch.inference_mode():
                batch = self.model.open_batch([j.prompt_ids for j in jobs], max(j.max_tokens for j in jobs))
                start_s = self.now_s()
                for job in jobs:
                    job.record.started_s = start_s
                    job.record.batch_size = len(jobs)
                logits = batch.prefill()  # [B, V]
                started = True
                tokens = self._pick(logits, rows)
                self._advance(rows, tokens, start_s, "prefill")
                while True:
                    for row in rows:
                        if row.active and row.job.cancelled.is_set():
                            row.active = False
                            self._row_done()
                            row.job.record.outcome = "cancelled"
                            row.job.record.finished_s = self.now_s()
                    if not any(row.active for row in rows):
                        return
                    start_s = self.now_s()
                    tokens = self._pick(batch.decode(tokens), rows)
                    self._advance(rows, tokens, start_s, "decode")
        except Exception as exc:  # noqa: BLE001 (one request's failure must not end the server)
            message = f"generation failed: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
            if not started and len(jobs) > 1:
                # A prompt the model rejects fails the whole prefill: run each alone, so only
                # the guilty request fails. Nothing was streamed yet, so nothing repeats.
                self.running -= len(rows)
                for job in jobs:
                    self._run_batch([job])
                return
            for row in rows:
                if row.active:
                    row.fail(message, self.now_s())

    def _row_done(self) -> None:
        self.running -= 1

    def _pick(self, logits: Tensor, rows: list[RowDecoder]) -> Tensor:
        tokens = logits.argmax(dim=-1)  # [B]
        for i, row in enumerate(rows):
            if row.active and row.generator is not None:
                tokens[i] = row.sample(logits[i])
        return tokens

    def _advance(self, rows: list[RowDecoder], tokens: Tensor, start_s: float, kind: str) -> None:
        ids = tokens.tolist()  # waits for the device: the step is over when its tokens are on the host
        self.model.synchronize()
        end_s = self.now_s()
        active = sum(row.active for row in rows)
        self.on_step(EngineStep(start_s, end_s, kind, len(rows), active))
        for row, token_id in zip(rows, ids, strict=True):
            if not row.active:
                continue
            if kind == "prefill":
                row.job.record.first_token_s = end_s
            row.push(token_id, end_s)
