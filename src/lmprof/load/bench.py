"""Drives a load run: find the server and model, negotiate the request extras, warm up,
run each level (closed loop: N users; open loop: arrivals at a rate), scrape the server's
metrics, and fill a LoadRun as it goes, so an interrupted run still holds every request
that was sent.

Every request gets a scheduled time (its arrival, or when its user became free) and an
actual send time. Latency from the scheduled time includes the client's own queueing
(a --max-concurrency cap, a late event loop), so a server stall that holds the client
back cannot hide behind the requests that were not sent during it (coordinated omission).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import math
import platform
import uuid
from dataclasses import dataclass

import aiohttp

from lmprof._version import __version__
from lmprof.clock import Clock
from lmprof.errors import LmprofError, UsageError
from lmprof.load.arrivals import arrival_times_s
from lmprof.load.client import RequestSender, request_headers
from lmprof.load.client_health import LoopLagTicker
from lmprof.load.options import LoadOptions
from lmprof.load.prompts import Prompt, PromptSource, TokenCounter
from lmprof.load.server_view import MetricsScraper, get_models, get_version
from lmprof.record.load import ERROR_CONNECT, MODE_CLOSED, MODE_OPEN, LevelRecord, LoadRun, RequestRecord

SWEEP_PROBE_CONCURRENCY = 32
# This many connection failures in a row and no success between: the server is gone, and a
# closed loop would otherwise fill the record with instant failures until --duration ends.
SERVER_GONE_AFTER = 50  # the --sweep probe's users when --max-concurrency is not given
_PREFLIGHT_TRIES = 3


@dataclass
class LevelPlan:
    mode: str
    concurrency: int | None = None
    rate_rps: float | None = None
    label: str = ""

    @property
    def title(self) -> str:
        if self.mode == MODE_CLOSED:
            return f"{self.label + ' ' if self.label else ''}concurrency {self.concurrency}"
        return f"rate {self.rate_rps:.3g} req/s" if self.rate_rps != math.inf else "rate inf"


class ServerGoneError(LmprofError):
    """The server stopped accepting connections during the run."""


class LoadProgress:
    """What a caller may show while the run goes: the CLI draws a progress bar from it."""

    def level_started(self, title: str, total_requests: int | None, duration_s: float | None) -> None:
        pass

    def request_done(self, record: RequestRecord) -> None:
        pass

    def level_finished(self) -> None:
        pass


def plan_levels(opts: LoadOptions) -> list[LevelPlan]:
    if opts.rates_rps:
        return [LevelPlan(MODE_OPEN, rate_rps=r) for r in opts.rates_rps]
    return [LevelPlan(MODE_CLOSED, concurrency=c) for c in opts.concurrency or [1]]


def sweep_rates(probe_rps: float, steps: int) -> list[float]:
    """Rates spread evenly up to the probed saturation rate, as guidellm's sweep spreads
    them between its synchronous and throughput rates; the top one is the saturation."""
    return [round(probe_rps * k / steps, 4) for k in range(1, steps + 1)]


def new_load_run(opts: LoadOptions, command: list[str]) -> LoadRun:
    from lmprof.collect.system import collect_cpu

    return LoadRun(
        run_id=uuid.uuid4().hex[:12],
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        lmprof_version=__version__,
        command=command,
        settings=opts.to_settings(),
        server={"base_url": opts.base_url, "endpoint": opts.endpoint},
        client={
            "cpu_model": collect_cpu().get("model"),
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "host": platform.node(),
        },
    )


class LoadBench:
    def __init__(
        self,
        opts: LoadOptions,
        run: LoadRun,
        clock: Clock | None = None,
        progress: LoadProgress | None = None,
        counter: TokenCounter | None = None,
    ) -> None:
        self.opts = opts
        self.run = run
        self.clock = clock or Clock()
        self.progress = progress or LoadProgress()
        self.counter = counter
        self.prompts = PromptSource(opts, counter)
        self.origin_s = self.clock.wall()
        self._next_index = 0
        self._connect_failures = 0  # in a row
        self._prompt_cache: dict[int, Prompt] = {}

    def now_s(self) -> float:
        return self.clock.wall() - self.origin_s

    async def main(self) -> LoadRun:
        timeout = aiohttp.ClientTimeout(total=self.opts.timeout_s)
        # limit=0: no connection pool cap, or aiohttp's default of 100 would queue requests
        # in the client without a trace in their timings.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout, read_bufsize=1 << 20) as session,
            aiohttp.ClientSession(  # resends (client.RequestSender.send): a new connection each
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
                timeout=timeout,
                read_bufsize=1 << 20,
            ) as fresh_session,
        ):
            model = await self._discover(session)
            headers = request_headers(self.opts)
            scraper = MetricsScraper(
                session, self.opts.base_url, headers, self.now_s, self.opts.scrape_interval_s
            )
            await scraper.scrape()
            self.run.metrics = scraper.samples  # the same list: filled live
            self.run.metrics_note = scraper.note
            scraper.start()
            sender = RequestSender(
                session,
                self.opts,
                model,
                self.clock,
                self.origin_s,
                self.counter,
                fresh_session=fresh_session,
            )
            try:
                await self._preflight(sender)
                plans = plan_levels(self.opts)
                if self.opts.warmup:
                    await self._warmup(sender, plans[0] if not self.opts.sweep_steps else None)
                if self.opts.sweep_steps:
                    probe = LevelPlan(
                        MODE_CLOSED, self.opts.max_concurrency or SWEEP_PROBE_CONCURRENCY, label="probe"
                    )
                    level = await self._run_level(sender, probe)
                    rps = _request_rate(self.run, level)
                    if rps <= 0:
                        raise UsageError("the --sweep probe completed no request: the server is not serving")
                    plans = [
                        LevelPlan(MODE_OPEN, rate_rps=r) for r in sweep_rates(rps, self.opts.sweep_steps)
                    ]
                for plan in plans:
                    await self._run_level(sender, plan)
            finally:
                await scraper.stop()
                if scraper.available:
                    await asyncio.shield(scraper.scrape())
                # The completions' own Server header first: a proxy may answer /version.
                self.run.server["server_header"] = sender.server_header or self.run.server.get(
                    "server_header"
                )
                self.run.wall_s = self.now_s()
        return self.run

    async def _discover(self, session: aiohttp.ClientSession) -> str:
        headers = request_headers(self.opts)
        try:
            status, models = await get_models(
                session, self.opts.base_url, headers, min(self.opts.timeout_s, 30.0)
            )
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise UsageError(f"cannot reach {self.opts.base_url}: {exc or type(exc).__name__}") from None
        if status in (401, 403):
            raise UsageError(
                f"{self.opts.base_url}/v1/models answered HTTP {status}: pass a valid key with --api-key"
            )
        self.run.server["models"] = models
        self.run.server.update(await get_version(session, self.opts.base_url, headers))
        model = self.opts.model or (models[0] if models else None)
        if model is None:
            raise UsageError(
                f"{self.opts.base_url}/v1/models lists no model; pass --model NAME as the server knows it"
            )
        self.run.server["model"] = model
        return model

    def _new_record(self, level: int, scheduled_s: float, warmup: bool, user: int | None) -> RequestRecord:
        record = RequestRecord(
            index=self._next_index, level=level, warmup=warmup, scheduled_s=scheduled_s,
            sent_s=scheduled_s, end_s=scheduled_s, user=user,
        )  # fmt: skip
        self._next_index += 1
        self.run.requests.append(record)  # now, so an interrupt keeps it
        return record

    def _done(self, record: RequestRecord, stop_when_gone: bool = True) -> None:
        self.progress.request_done(record)
        if not stop_when_gone:  # an open loop's arrivals are bounded already
            return
        self._connect_failures = self._connect_failures + 1 if record.error_kind == ERROR_CONNECT else 0
        if self._connect_failures >= SERVER_GONE_AFTER:
            raise ServerGoneError(
                f"{self.opts.base_url} refused {SERVER_GONE_AFTER} connections in a row: the server stopped "
                f"({record.error})"
            )

    def _prefetch_prompts(self, count: int) -> None:
        """Make the next `count` prompts before a level's window opens: with a tokenizer a
        prompt takes about a millisecond to make, which would land in the client's queueing."""
        start = self._next_index
        self._prompt_cache = {i: self.prompts.get(i) for i in range(start, start + count)}

    def _prompt_for(self, record: RequestRecord) -> Prompt:
        prompt = self._prompt_cache.pop(record.index, None) or self.prompts.get(record.index)
        record.prefixed, record.repeat_of = prompt.prefixed, prompt.repeat_of
        return prompt

    async def _preflight(self, sender: RequestSender) -> None:
        """One short request before anything is measured: drop the extras (`ignore_eos`,
        `stream_options`) a strict server refuses, and fail fast on a bad model or key."""
        prompt = Prompt(text="Hello", output_tokens=2)
        record = None
        for _ in range(_PREFLIGHT_TRIES):
            record = self._new_record(-1, self.now_s(), True, None)
            await sender.send(record, prompt)
            refused = (record.error or "").lower()
            dropped = [
                key for key in ("ignore_eos", "stream_options")
                if record.http_status == 400 and key in refused and sender.extras.get(key, True)
            ]  # fmt: skip
            if not dropped:
                break
            for key in dropped:
                sender.extras[key] = False
        self.run.server["extras_refused"] = sorted(k for k, v in sender.extras.items() if v is False)
        self.run.settings["ignore_eos_sent"] = self.opts.ignore_eos and sender.extras.get("ignore_eos", True)
        status = record.http_status if record is not None else None
        if record is not None and not record.ok:
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                raise UsageError(
                    f"the server refused a first test request to {self.opts.url}: HTTP {status}: "
                    f"{(record.error or '').splitlines()[0][:200] if record.error else 'no message'}"
                )
            if record.error_kind == "connect":
                raise UsageError(f"cannot reach {self.opts.url}: {record.error}")
            self.run.warnings.append(f"the first test request failed ({record.error_kind}); measuring anyway")

    async def _warmup(self, sender: RequestSender, plan: LevelPlan | None) -> None:
        users = min(self.opts.warmup, (plan.concurrency if plan and plan.concurrency else None)
                    or self.opts.max_concurrency or 1)  # fmt: skip
        left = [self.opts.warmup]

        async def user(u: int) -> None:
            free_s = self.now_s()
            while left[0] > 0:
                left[0] -= 1
                record = self._new_record(-1, free_s, True, u)
                await sender.send(record, self._prompt_for(record))
                free_s = record.end_s

        await _gather_or_cancel([user(u) for u in range(users)])

    async def _run_level(self, sender: RequestSender, plan: LevelPlan) -> LevelRecord:
        opts = self.opts
        if opts.requests is not None:
            self._prefetch_prompts(opts.requests)
        level = LevelRecord(
            index=len(self.run.levels), mode=plan.mode, concurrency=plan.concurrency,
            rate_rps=None if plan.rate_rps == math.inf else plan.rate_rps,  # JSON has no infinity
            burstiness=opts.burstiness if plan.mode == MODE_OPEN else 1.0,
            max_concurrency=opts.max_concurrency if plan.mode == MODE_OPEN else None,
            start_s=self.now_s(), complete=False, label=plan.label,
        )  # fmt: skip
        self.run.levels.append(level)
        self.progress.level_started(plan.title, opts.requests, opts.duration_s)
        ticker = LoopLagTicker(self.clock, level.loop_tick_s)
        level.loop_lag_s = ticker.lags_s  # the same list: filled live
        ticker.start()
        cpu0 = self.clock.cpu()
        try:
            if plan.mode == MODE_CLOSED:
                await self._closed_loop(sender, level)
            else:
                await self._open_loop(sender, level, plan.rate_rps or math.inf)
            level.complete = True
        finally:
            level.end_s = self.now_s()
            level.cpu_s = self.clock.cpu() - cpu0
            await asyncio.shield(ticker.stop())
            self.progress.level_finished()
        return level

    def _more(self, level: LevelRecord, issued: int, at_s: float) -> bool:
        if self.opts.requests is not None and issued >= self.opts.requests:
            return False
        return self.opts.duration_s is None or at_s < level.start_s + self.opts.duration_s

    async def _closed_loop(self, sender: RequestSender, level: LevelRecord) -> None:
        issued = [0]

        async def user(u: int) -> None:
            free_s = level.start_s
            while self._more(level, issued[0], free_s):
                issued[0] += 1
                record = self._new_record(level.index, free_s, False, u)
                await sender.send(record, self._prompt_for(record))
                self._done(record)
                free_s = record.end_s

        await _gather_or_cancel([user(u) for u in range(level.concurrency or 1)])

    async def _open_loop(self, sender: RequestSender, level: LevelRecord, rate_rps: float) -> None:
        cap = asyncio.Semaphore(level.max_concurrency) if level.max_concurrency else None
        tasks: set[asyncio.Task] = set()

        async def one(record: RequestRecord) -> None:
            prompt = self._prompt_for(record)
            if cap is None:
                await sender.send(record, prompt)
            else:
                async with cap:  # waiting here is the client's queueing: scheduled_s keeps it
                    await sender.send(record, prompt)
            self._done(record, stop_when_gone=False)

        issued = 0
        try:
            for offset_s in arrival_times_s(rate_rps, level.burstiness, self.opts.seed):
                due_s = level.start_s + offset_s
                if not self._more(level, issued, due_s):
                    break
                delay_s = due_s - self.now_s()
                if delay_s > 0:
                    await asyncio.sleep(delay_s)
                issued += 1
                record = self._new_record(level.index, due_s, False, None)
                task = asyncio.get_running_loop().create_task(one(record))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await _gather_or_cancel(list(tasks))
        except BaseException:
            await _cancel_all(list(tasks))
            raise


async def _gather_or_cancel(coros_or_tasks: list) -> None:
    """Run them all; when cancelled (Ctrl-C), cancel each and wait, so every request in
    flight records itself as cancelled before the run is saved."""
    tasks = [asyncio.ensure_future(c) for c in coros_or_tasks]
    try:
        await asyncio.gather(*tasks)
    except BaseException:  # Ctrl-C, or one user's error (ServerGoneError): stop the others too
        await _cancel_all(tasks)
        raise


async def _cancel_all(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _request_rate(run: LoadRun, level: LevelRecord) -> float:
    done = [r for r in run.requests if r.level == level.index and r.ok and not r.warmup]
    window_s = level.end_s - level.start_s
    return len(done) / window_s if window_s > 0 else 0.0


def run_load(
    opts: LoadOptions,
    run: LoadRun,
    *,
    clock: Clock | None = None,
    progress: LoadProgress | None = None,
    counter: TokenCounter | None = None,
) -> LoadRun:
    """Run the load synchronously (its own event loop). `run` is filled as the run goes:
    on KeyboardInterrupt it holds what was measured, for the caller to save."""
    bench = LoadBench(opts, run, clock=clock, progress=progress, counter=counter)
    asyncio.run(bench.main())
    return run
