"""Continuous batching: requests join the running batch between decode steps and leave it when
they finish, over one loaded engine model.

    batcher = ContinuousBatcher(model, max_batch=8, max_seq_len=1024, prefill_chunk=256)
    state = batcher.submit(Request(prompt_ids, max_new_tokens=64, on_token=push))
    while batcher.has_work:
        record = batcher.step()  # one iteration; record.wall_s, record.decode_rows, ...

Each `step()` is one iteration: cancellations are applied; waiting requests are admitted while
a row of the KV pool is free and the token budget holds their context; every request already
decoding gets ONE token, and at most `prefill_chunk` prompt tokens of the prefilling ones,
oldest first, run beside them (IDLE_PREFILL_CHUNKS chunks when none decodes), all as one
forward pass with no padding (pool_passes: the native decode step when nothing prefills). A
long prompt thus stalls the streams by one chunk a step at most. A request whose prefill ends
gets its first token in that step and decodes from the next; it leaves on one of its eos ids,
at max_new_tokens, or on `cancel(request_id)`, and its row is free at that step.

Memory: slot_pool.KVSlotPool (one row per request; why rows and not pages is said there).
`kv_budget_tokens` caps the tokens the pool may hold at once (default: every row full; a
server with a KV byte limit passes bytes // pool.bytes_per_token). The pool itself is
allocated up front, so the budget is the admission and preemption rule, not an allocator.
When a decode step would go past it, the most recently admitted request is preempted: its
K/V go to the prefix cache when there is one, its row is freed, and it goes back to the front
of the queue to be recomputed (prompt + the tokens it already produced); it is never
dropped, and its stream goes on where it stopped.

Prefix caching: with a PrefixCache, a request that ends leaves its full blocks of tokens there
and an admitted request starts from the blocks its context begins with (RequestState.
cached_tokens), skipping that much prefill.

`submit` and `cancel` may be called from other threads (an event loop); `step` runs in one
thread. Callbacks run in the stepping thread and must not block. A forward pass that raises
fails only the requests it ran (one request's prefill chunk, or every row of a decode step):
they finish with finish_reason "error" and `error` set, and the others go on.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import torch
from torch import Tensor

from lmprof.engine.generate import sample
from lmprof.engine.model import Transformer
from lmprof.engine.native_decode import NativeInputs, check_native_decode, native_inputs
from lmprof.engine.pool_passes import decode_rows, mixed_rows, prefill_rows
from lmprof.engine.prefix_cache import PrefixCache
from lmprof.engine.requests import Request, RequestState, StepRecord
from lmprof.engine.slot_pool import KVSlotPool
from lmprof.errors import UsageError

# Attention scans every column up to the shared decode column (masking the gaps), so once the
# gaps outgrow the longest row's tokens the rows are compacted: attention then never scans more
# than twice the longest row (plus this), and a compaction (one copy of the live cache) comes at
# most once every `longest` steps. Waiting for the last column instead let the default model's
# 8-row decode step scan up to 920 columns for 96-token requests: 60 ms a step against 44 ms for
# a static batch of the same requests (lmprof bench throughput, native step, 2026-12-07).
COMPACT_MIN_GAP = 32
PrefillPlan = tuple[RequestState, int, int]  # a request and the context tokens [start, end) to run
# Chunks protect the streams that decode: with none decoding, nothing waits on the prefill, so
# it takes this many chunks at once (a burst of equal prompts prefills as one pass, as a static
# batch does, and its rows then decode and finish together).
IDLE_PREFILL_CHUNKS = 4


class ContinuousBatcher:
    def __init__(
        self,
        model: Transformer,
        max_batch: int = 8,
        max_seq_len: int = 1024,
        prefill_chunk: int = 256,
        kv_budget_tokens: int | None = None,
        prefix_cache: PrefixCache | None = None,
        native_decode: bool | None = None,
        columns: int | None = None,
        mixed_steps: bool = True,
        clock: Callable[[], float] = time.perf_counter,
        keep_steps: int | None = 100_000,
    ) -> None:
        """max_seq_len: the longest context (prompt + new tokens) a request may have;
        columns: cache columns a row has (default max_seq_len + a quarter, at least 16 more:
        see slot_pool); native_decode: default the model's own option (it runs the decode steps
        with no prefill beside them); mixed_steps: a step with both decode rows and a prefill
        chunk runs them as one forward pass (False: two); keep_steps: the StepRecords kept in
        `steps` (the newest; None: all)."""
        if prefill_chunk < 1 or max_batch < 1 or max_seq_len < 2:
            raise UsageError("max_batch, prefill_chunk must be positive and max_seq_len at least 2")
        self.model, self.max_batch, self.max_seq_len = model, max_batch, max_seq_len
        self.prefill_chunk = prefill_chunk
        self.kv_budget_tokens = kv_budget_tokens or max_batch * max_seq_len
        self.prefix_cache = prefix_cache
        self.native = model.options.native_decode if native_decode is None else native_decode
        self.mixed_steps = mixed_steps
        self.clock = clock
        with torch.inference_mode():
            self.pool = KVSlotPool(model, max_batch, columns or max_seq_len + max(16, max_seq_len // 4))
        if self.pool.columns <= max_seq_len:
            raise UsageError(f"columns must exceed max_seq_len ({max_seq_len})")
        self._native_inputs: NativeInputs | None = None
        if self.native:
            check_native_decode(model)
            with torch.inference_mode():
                self._native_inputs = native_inputs(model, max_seq_len)
        self._inbox: deque[RequestState] = deque()  # submitted, not yet seen by step()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # wakes wait_for_work on submit and cancel
        self._waiting: deque[RequestState] = deque()
        self._prefilling: list[RequestState] = []  # admission order
        self._decoding: list[RequestState] = []  # index = pool row
        self._free_rows = list(range(max_batch - 1, -1, -1))  # pop() takes the lowest
        self._by_id: dict[str, RequestState] = {}
        self.steps: deque[StepRecord] = deque(maxlen=keep_steps)
        self.step_count = 0
        self.preemptions = 0
        self._admissions = 0

    # ---- the API other threads call ----

    def submit(self, request: Request) -> RequestState:
        n = len(request.prompt)
        if n == 0 or request.max_new_tokens < 1:
            raise UsageError("a request needs at least one prompt token and max_new_tokens >= 1")
        longest = n + request.max_new_tokens
        if longest > min(self.max_seq_len, self.kv_budget_tokens):
            raise UsageError(
                f"prompt ({n}) + max_new_tokens ({request.max_new_tokens}) exceeds "
                f"{min(self.max_seq_len, self.kv_budget_tokens)} tokens"
            )
        vocab = self.model.config.vocab_size
        if any(not 0 <= t < vocab for t in request.prompt):
            raise UsageError(f"prompt token ids must lie in [0, {vocab})")
        state = RequestState(request)
        if request.temperature > 0 and request.seed is not None:
            state.generator = torch.Generator(device=self.pool.positions.device).manual_seed(request.seed)
        with self._lock:
            if request.request_id in self._by_id:
                raise UsageError(f"request id {request.request_id!r} is already in use")
            self._by_id[request.request_id] = state
            self._inbox.append(state)
            self._arrived.notify_all()
        return state

    def cancel(self, request_id: str) -> None:
        """The request leaves at the next step (a client disconnect); unknown ids are ignored."""
        with self._lock:
            self._cancelled.add(request_id)
            self._arrived.notify_all()

    def wait_for_work(self, timeout: float | None = None, gather_s: float = 0.0) -> bool:
        """Block until there is something to step (or `timeout`); True when there is. A
        server's engine thread loops `if batcher.wait_for_work(0.1): batcher.step()`.

        gather_s: when the batcher was idle, wait up to this long after the first arrival for
        more, until every row could be taken (static batching's --batch-wait-ms): closed-loop
        clients whose answers ended in one step return within milliseconds and share one
        prefill; the first, admitted alone, would run a step ahead of the rest for as long as
        the load lasts (benchmarks/RESULTS.md, 2026-12-07)."""
        with self._arrived:
            if not self._arrived.wait_for(self._busy, timeout):
                return False
            if gather_s > 0 and not (self._waiting or self._prefilling or self._decoding):
                deadline = time.monotonic() + gather_s
                while len(self._inbox) < self.max_batch and not self._cancelled:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._arrived.wait(remaining)
            return True

    def _busy(self) -> bool:
        return bool(self._inbox or self._cancelled or self._waiting or self._prefilling or self._decoding)

    @property
    def has_work(self) -> bool:
        with self._lock:
            return self._busy()

    @property
    def running(self) -> int:
        return len(self._prefilling) + len(self._decoding)

    @property
    def waiting(self) -> int:
        return len(self._waiting) + len(self._inbox)

    @property
    def kv_tokens(self) -> int:
        return sum(s.kv_tokens for s in self._prefilling + self._decoding)

    @property
    def kv_bytes_in_use(self) -> int:
        return self.kv_tokens * self.pool.bytes_per_token

    # ---- one iteration ----

    @torch.inference_mode()
    def step(self) -> StepRecord:
        start = self.clock()
        with self._lock:
            self._waiting.extend(self._inbox)
            self._inbox.clear()
            cancelled, self._cancelled = self._cancelled, set()
        finished = self._apply_cancels(cancelled)
        admitted = self._admit()
        # Those decoding now take a step; those whose prefill ends below join from the next one.
        preempted = self._make_room_for_decode()
        decode_rows = len(self._decoding)
        plan = self._plan_prefill(streams_waiting=decode_rows > 0)
        outcome = self._mixed(plan) if decode_rows and plan and self.mixed_steps else None
        if outcome is None:  # apart, or the joint pass failed: then each failure stays its own
            if decode_rows:
                finished += self._decode()
            outcome = self._prefill(plan)
        prefill_tokens, prefill_requests, done = outcome
        finished += done
        record = StepRecord(
            index=self.step_count, start_s=start, wall_s=self.clock() - start,
            decode_rows=decode_rows, prefill_tokens=prefill_tokens, prefill_requests=prefill_requests,
            admitted=admitted, finished=finished, preempted=preempted, waiting=self.waiting,
            kv_tokens=self.kv_tokens,
        )  # fmt: skip
        self.steps.append(record)
        self.step_count += 1
        return record

    def run_until_idle(self, max_steps: int = 1_000_000) -> None:
        for _ in range(max_steps):
            if not self.has_work:
                return
            self.step()
        raise RuntimeError(f"still busy after {max_steps} steps")

    # ---- admission, preemption, leaving ----

    def _reserved(self, state: RequestState) -> int:
        # A prefilling request holds room for its whole context, so its chunks never run out.
        return state.prefill_target if state in self._prefilling else state.kv_tokens

    def _reserved_total(self) -> int:
        return sum(self._reserved(s) for s in self._prefilling + self._decoding)

    def _admit(self) -> int:
        admitted = 0
        while self._waiting and self._free_rows:
            state = self._waiting[0]
            # Room for its context and its first decode token, beside this step's decode tokens
            # of the rows already decoding (else it would be preempted at once).
            need = state.prefill_target + 1 + len(self._decoding)
            if self._reserved_total() + need > self.kv_budget_tokens:
                break
            self._waiting.popleft()
            state.row = self._free_rows.pop()
            self._admissions += 1
            state.admission = self._admissions
            self.pool.reset_row(state.row)
            state.kv_tokens = self._take_cached_prefix(state)
            self._prefilling.append(state)
            admitted += 1
        return admitted

    def _take_cached_prefix(self, state: RequestState) -> int:
        cache = self.prefix_cache
        tokens = 0 if cache is None else cache.restore(self.pool, state.row, state.context)
        if not state.admitted:
            state.cached_tokens = tokens
        state.admitted = True
        return tokens

    def _make_room_for_decode(self) -> int:
        """Preempt the most recently admitted requests until one more token a decoding row fits."""
        preempted = 0
        while self._decoding and self._reserved_total() + len(self._decoding) > self.kv_budget_tokens:
            victim = max(self._prefilling + self._decoding, key=lambda s: s.admission)
            self._leave(victim, reason=None)
            victim.preemptions += 1
            self._waiting.appendleft(victim)
            preempted += 1
        self.preemptions += preempted
        return preempted

    def _apply_cancels(self, cancelled: set[str]) -> int:
        finished = 0
        for request_id in cancelled:
            state = self._by_id.get(request_id)
            if state is None or state.finish_reason is not None:
                continue
            if state in self._waiting:
                self._waiting.remove(state)
                self._finish(state, "cancelled")
            else:
                self._leave(state, "cancelled")
            finished += 1
        return finished

    def _leave(self, state: RequestState, reason: str | None) -> None:
        """Free the request's row (keeping its blocks in the prefix cache); finish it unless it
        is preempted (reason None)."""
        row = state.row
        keep = reason != "error"  # a failed pass may have left anything in the row
        if keep and self.prefix_cache is not None and state.kv_tokens >= self.prefix_cache.block_tokens:
            self.pool.compact_row(row)  # column = position, as the cache stores blocks
            self.prefix_cache.keep(self.pool, row, state.context, state.kv_tokens)
        if state in self._prefilling:
            self._prefilling.remove(state)
            self.pool.reset_row(row)
            self._free_rows.append(row)
        else:
            last = len(self._decoding) - 1
            moved = self._decoding[last]
            self.pool.move_row(last, row)  # keep decoding rows a prefix of the pool
            self._decoding[row] = moved
            moved.row = row
            self._decoding.pop()
            self.pool.reset_row(last)
            self._free_rows.append(last)
        self._free_rows.sort(reverse=True)
        state.row, state.kv_tokens = None, 0
        if reason is not None:
            self._finish(state, reason)

    def _finish(self, state: RequestState, reason: str) -> None:
        state.finish_reason = reason
        with self._lock:
            self._by_id.pop(state.request_id, None)
        if state.request.on_finish is not None:
            state.request.on_finish(state)

    def _take_token(self, state: RequestState, token: int) -> bool:
        """Record and deliver a new token; True when the request left with it. A last token
        frees the row before it is delivered, so whoever sees it sees the batcher without it."""
        state.tokens.append(token)
        if token in state.request.eos_token_ids:
            state.finish_reason = "stop"
        elif len(state.tokens) >= state.request.max_new_tokens:
            state.finish_reason = "length"
        if state.finish_reason is not None:
            self._leave(state, None)
        if state.request.on_token is not None:
            try:
                state.request.on_token(token)
            except Exception as error:  # the consumer failed: this request ends, the others go on
                state.error, state.finish_reason = error, "error"
        if state.finish_reason is None:
            return False
        if state.row is not None:
            self._leave(state, None)
        self._finish(state, state.finish_reason)
        return True

    def _pick(self, logits: Tensor, states: list[RequestState]) -> list[int]:
        picks = logits.argmax(dim=-1).tolist()  # [B]; greedy rows keep these
        for i, state in enumerate(states):
            request = state.request
            if request.temperature > 0:
                picks[i] = int(sample(logits[i : i + 1], request.temperature, request.top_k, state.generator))
        return picks

    # ---- the forward passes ----

    def _compact_if_gapped(self) -> None:
        pool = self.pool
        longest = max(state.kv_tokens for state in self._decoding)
        if pool.clock >= pool.columns or pool.clock - longest > max(longest, COMPACT_MIN_GAP):
            pool.compact(len(self._decoding))

    def _decode(self) -> int:
        self._compact_if_gapped()
        states = list(self._decoding)
        try:
            tokens = [state.tokens[-1] for state in states]
            logits = decode_rows(self.model, self.pool, tokens, self._native_inputs if self.native else None)
            picks = self._pick(logits, states)
        except Exception as error:  # the whole batch ran as one: every row of it fails
            return self._fail_all(states, error)
        finally:
            self.pool.clock += 1
        return self._take_decoded(states, picks)

    def _fail_all(self, states: list[RequestState], error: Exception) -> int:
        for state in states:
            state.error = error
            self._leave(state, "error")
        return len(states)

    def _take_decoded(self, states: list[RequestState], picks: list[int]) -> int:
        finished = 0
        for state, token in zip(states, picks, strict=True):
            state.kv_tokens += 1
            finished += self._take_token(state, token)
        return finished

    def _mixed(self, plan: list[PrefillPlan]) -> tuple[int, int, int] | None:
        """The decode step and the prefill plan as one forward pass (pool_passes.mixed_rows);
        None when that pass raised, its marks undone, for the caller to run the two apart."""
        self._compact_if_gapped()
        states = list(self._decoding)
        chunks = [(state.row, state.context[start:end], start) for state, start, end in plan]
        try:
            decode_logits, prefill_logits = mixed_rows(
                self.model, self.pool, [state.tokens[-1] for state in states], chunks
            )
        except Exception:  # noqa: BLE001 (the passes apart tell whose failure it is)
            for state, start, _ in plan:
                self.pool.key_valid[state.row, start:] = False
            return None
        self.pool.clock += 1
        try:
            picks = self._pick(decode_logits, states)
        except Exception as error:
            finished = self._fail_all(states, error)
        else:
            finished = self._take_decoded(states, picks)
        tokens_run, requests, done = self._take_prefilled(list(zip(plan, prefill_logits, strict=True)))
        return tokens_run, requests, finished + done

    def _plan_prefill(self, streams_waiting: bool) -> list[PrefillPlan]:
        """Up to prefill_chunk context tokens of the prefilling requests (IDLE_PREFILL_CHUNKS
        times that when no stream decodes this step), oldest first."""
        budget = self.prefill_chunk * (1 if streams_waiting else IDLE_PREFILL_CHUNKS)
        plan = []
        for state in self._prefilling:
            if budget == 0:
                break
            end = min(state.prefill_target, state.kv_tokens + budget)
            plan.append((state, state.kv_tokens, end))
            budget -= end - state.kv_tokens
        return plan

    def _prefill(self, plan: list[PrefillPlan]) -> tuple[int, int, int]:
        """The plan as one forward pass over its rows (one pass each if that one raises, so
        only the failing request fails); a request whose context is done gets its first token."""
        if not plan:
            return 0, 0, 0
        try:
            outcomes = list(zip(plan, self._prefill_rows(plan), strict=True))
        except Exception as error:  # a request alone fails (a prompt too long for memory...)
            if len(plan) == 1:
                outcomes = [(plan[0], error)]
            else:
                outcomes = [(chunk, self._prefill_alone(chunk)) for chunk in plan]
        return self._take_prefilled(outcomes)

    def _take_prefilled(self, outcomes: list[tuple[PrefillPlan, Tensor | Exception]]) -> tuple[int, int, int]:
        tokens_run = sum(end - start for (_, start, end), _ in outcomes)
        finished = 0
        for (state, _, end), logits in outcomes:
            if isinstance(logits, Exception):
                state.error = logits
                self._leave(state, "error")
                finished += 1
                continue
            state.kv_tokens = end
            if end < state.prefill_target:
                continue
            if self._take_token(state, self._pick(logits[None], [state])[0]):
                finished += 1
            else:
                self._join_decoding(state)
        return tokens_run, len(outcomes), finished

    def _prefill_alone(self, chunk: PrefillPlan) -> Tensor | Exception:
        state, start, _ = chunk
        self.pool.key_valid[state.row, start:] = False  # undo what the failed joint pass marked
        try:
            return self._prefill_rows([chunk])[0]
        except Exception as error:
            return error

    def _prefill_rows(self, plan: list[PrefillPlan]) -> Tensor:
        chunks = [(state.row, state.context[start:end], start) for state, start, end in plan]
        return prefill_rows(self.model, self.pool, chunks)  # [k, V]

    def _join_decoding(self, state: RequestState) -> None:
        pool, target = self.pool, len(self._decoding)
        if self.prefix_cache is not None:
            # Its prompt's blocks are kept as soon as they exist (its keys sit at columns equal to
            # their positions here), so a request admitted while this one still decodes, with the
            # same system prompt, finds them; when it leaves, its reply's blocks join them.
            self.prefix_cache.keep(pool, state.row, state.context, state.kv_tokens)
        self._prefilling.remove(state)
        if state.row != target:
            holder = next((s for s in self._prefilling if s.row == target), None)
            if holder is not None:
                pool.swap_rows(state.row, target)
                holder.row = state.row
            else:
                pool.move_row(state.row, target)
                self._free_rows.remove(target)
                self._free_rows.append(state.row)
                self._free_rows.sort(reverse=True)
            state.row = target
        self._decoding.append(state)
        # Its keys sit at columns [0, kv_tokens): the shared decode column must lie past them.
        pool.clock = max(pool.clock, state.kv_tokens)
