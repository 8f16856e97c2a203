"""What `lmprof bench throughput` runs, checked once (bad input is one UsageError line).

Rows are server configurations on workloads that exercise them. Every row runs on lmprof's
engine in fp32, so a row differs from another only by its scheduler and caches:

- no sharing: the four schedulers (sequential, async, static-batch, continuous);
- mixed lengths (no sharing, each request's input and output lengths drawn within +-75% of
  the asked ones, lmprof load's --range-ratio): the four schedulers again, since continuous
  batching's reuse of a finished request's row pays where answers differ in length;
- a shared 256-token system prompt: sequential, continuous, continuous + prefix cache,
  continuous + both caches;
- a share of exact repeats: sequential, continuous, continuous + response cache,
  continuous + both caches.

Each row's gain is taken over the sequential row of its workload at the same concurrency in
the same round (a cache row's gain over the same scheduler without caches is given too).
`--quick` leaves out async, which serves one request at a time as sequential does (at 8 users
its row is as slow as sequential's, the slowest of the run, and tells little more), and the
sequential and both-caches rows of the cache workloads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmprof.errors import UsageError
from lmprof.record.load import length_bounds
from lmprof.record.throughput import BenchRow

NO_SHARING, MIXED_LENGTHS = "no-sharing", "mixed-lengths"
SHARED_PREFIX, REPEATS = "shared-prefix", "repeats"
WORKLOADS = (NO_SHARING, MIXED_LENGTHS, SHARED_PREFIX, REPEATS)
SCHEDULERS = ("sequential", "async", "static-batch", "continuous")
QUICK_SCHEDULERS = ("sequential", "static-batch", "continuous")
MIXED_RANGE_RATIO = 0.75  # 32 output tokens asked: 8 to 56
DEFAULT_CONCURRENCY = [1, 2, 4, 8, 16]
QUICK_CONCURRENCY = [1, 8]
DEFAULT_SLO = "ttft=2s,tpot=200ms"  # a chat user on this class of CPU: first words within 2 s, 5+ tokens/s
RESPONSE_CACHE_BYTES = 64 << 20
PREFIX_CACHE_BYTES = 512 << 20


@dataclass
class BenchOptions:
    model: str | None
    out: Path
    concurrency: list[int] = field(default_factory=lambda: list(DEFAULT_CONCURRENCY))
    requests: int | None = None  # per level; None: 4 per user, at least 8
    input_tokens: int = 64
    output_tokens: int = 32
    prefix_tokens: int = 256
    repeat_share: float = 0.5
    mixed_range_ratio: float = MIXED_RANGE_RATIO  # lmprof load --range-ratio on mixed-lengths
    rounds: int = 2
    quick: bool = False
    slo: str = DEFAULT_SLO
    threads: int | None = None  # the server's model thread (default: lmprof serve's)
    native: bool | None = None  # every server's decode step: None lets lmprof serve choose (on where it runs)
    timeout_s: float = 120.0  # per request
    startup_timeout_s: float = 300.0
    workloads: list[str] = field(default_factory=lambda: list(WORKLOADS))

    def validate(self) -> None:
        for name in ("input_tokens", "output_tokens", "rounds"):
            if getattr(self, name) < 1:
                raise UsageError(
                    f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}"
                )
        if self.requests is not None and self.requests < 1:
            raise UsageError(f"--requests must be a positive integer, got {self.requests}")
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise UsageError("--concurrency needs positive levels, e.g. 1,2,4,8")
        if max(self.concurrency) > 64:
            raise UsageError(
                f"--concurrency {max(self.concurrency)}: at most 64 users on one loopback server"
            )
        if not 0.0 < self.repeat_share < 1.0:
            raise UsageError(f"--repeat-share {self.repeat_share}: a share strictly between 0 and 1")
        if not 0.0 <= self.mixed_range_ratio < 1.0:
            raise UsageError(f"mixed-lengths range ratio {self.mixed_range_ratio}: a ratio in [0, 1)")
        if self.prefix_tokens < 16:
            raise UsageError(f"--prefix-tokens {self.prefix_tokens}: at least one 16-token cache block")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be a positive integer, got {self.threads}")
        unknown = [w for w in self.workloads if w not in WORKLOADS]
        if unknown or not self.workloads:
            raise UsageError(
                f"--workloads {','.join(unknown) or '(none)'}: choose from {', '.join(WORKLOADS)}"
            )
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--out '{self.out}' exists and is not a folder")

    def requests_at(self, concurrency: int) -> int:
        return self.requests if self.requests is not None else max(8, 4 * concurrency)

    @property
    def max_batch(self) -> int:
        """Rows of static-batch's batch and of continuous's KV pool: the most users offered."""
        return max(self.concurrency)

    @property
    def max_model_len(self) -> int:
        """The continuous pool's context: synthetic prompts made of random token ids may encode
        to more tokens than asked (a decoded id run re-encodes differently), hence the margin."""
        longest, longest_output = self.input_tokens, self.output_tokens
        if SHARED_PREFIX in self.workloads:
            longest = self.input_tokens + self.prefix_tokens
        if MIXED_LENGTHS in self.workloads:
            longest = max(longest, length_bounds(self.input_tokens, self.mixed_range_ratio)[1])
            longest_output = length_bounds(self.output_tokens, self.mixed_range_ratio)[1]
        return max(512, 2 * longest + longest_output + 64)

    def to_settings(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out)
        data["max_batch"] = self.max_batch
        data["max_model_len"] = self.max_model_len
        data["response_cache_bytes"] = RESPONSE_CACHE_BYTES
        data["prefix_cache_bytes"] = PREFIX_CACHE_BYTES
        return data


def _row(scheduler: str, workload: str, response: bool = False, prefix: bool = False) -> BenchRow:
    row = BenchRow("", scheduler, workload, response, prefix)
    return BenchRow(f"{row.technique} @ {workload}", scheduler, workload, response, prefix)


def plan_rows(opts: BenchOptions) -> list[BenchRow]:
    rows: list[BenchRow] = []
    schedulers = QUICK_SCHEDULERS if opts.quick else SCHEDULERS
    for workload in (NO_SHARING, MIXED_LENGTHS):
        if workload in opts.workloads:
            rows += [_row(s, workload) for s in schedulers]
    baseline = [] if opts.quick else [_row("sequential", SHARED_PREFIX)]
    if SHARED_PREFIX in opts.workloads:
        rows += baseline + [_row("continuous", SHARED_PREFIX), _row("continuous", SHARED_PREFIX, prefix=True)]
        if not opts.quick:
            rows.append(_row("continuous", SHARED_PREFIX, response=True, prefix=True))
    if REPEATS in opts.workloads:
        rows += ([] if opts.quick else [_row("sequential", REPEATS)]) + [
            _row("continuous", REPEATS),
            _row("continuous", REPEATS, response=True),
        ]
        if not opts.quick:
            rows.append(_row("continuous", REPEATS, response=True, prefix=True))
    return rows


def serve_args(row: BenchRow, opts: BenchOptions) -> list[str]:
    """`lmprof serve` options of a row (after MODEL)."""
    args = ["--engine", "lmprof", "--dtype", "float32", "--device", "cpu", "--port", "0",
            "--scheduler", row.scheduler, "--max-queue", str(4 * opts.max_batch + 16)]  # fmt: skip
    if opts.threads is not None:
        args += ["--threads", str(opts.threads)]
    if opts.native is not None:  # the same for every row, so each gain compares schedulers alone
        args.append("--native" if opts.native else "--no-native")
    if row.scheduler == "static-batch":
        args += ["--batch-size", str(opts.max_batch)]
    if row.scheduler == "continuous":
        args += ["--max-batch", str(opts.max_batch), "--max-model-len", str(opts.max_model_len)]
    if row.response_cache:
        args += ["--response-cache", str(RESPONSE_CACHE_BYTES)]
    if row.prefix_cache:
        args += ["--prefix-cache", str(PREFIX_CACHE_BYTES)]
    return args


def workload_options(workload: str, opts: BenchOptions) -> dict[str, Any]:
    """lmprof load's prompt options for a workload."""
    if workload == SHARED_PREFIX:
        return {"input_tokens": opts.prefix_tokens + opts.input_tokens, "prefix_tokens": opts.prefix_tokens,
                "prefix_share": 1.0}  # fmt: skip
    if workload == REPEATS:
        return {"input_tokens": opts.input_tokens, "repeat_share": opts.repeat_share}
    if workload == MIXED_LENGTHS:
        return {"input_tokens": opts.input_tokens, "range_ratio": opts.mixed_range_ratio}
    return {"input_tokens": opts.input_tokens}
