"""The load Run: one versioned record of an `lmprof load` run against an HTTP endpoint.

Its own kind (`"kind": "load"`) beside the profile Run, because it holds other things:
every request's scheduled, sent, first-token and end times on one clock, the load levels
(a concurrency or a rate each), the client's own CPU and event-loop lag, and the server's
Prometheus metrics scraped during the run. Figures (percentiles, throughput, goodput) are
derived from it by `lmprof.analyze.load`, never stored, so a saved run can be re-analysed.
All times are seconds on the run's clock, counted from the run's start.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmprof.errors import RunFileError
from lmprof.record.files import read_record, record_kind, record_path, save_record
from lmprof.record.run import STATUS_INCOMPLETE

LOAD_KIND = "load"
LOAD_SCHEMA_VERSION = 1

MODE_CLOSED = "closed"  # N users, each sends its next request when its last one ends
MODE_OPEN = "open"  # arrivals at a rate, whatever the server does

# How a request's output tokens were counted, best first.
COUNT_USAGE = "usage"  # the server's `usage.completion_tokens`
COUNT_TOKENIZER = "tokenizer"  # the client's tokenizer on the generated text
COUNT_CHUNKS = "chunks"  # one token per content chunk (streaming, no tokenizer)
COUNT_WORDS = "words"  # whitespace words of the text (non-streaming, no tokenizer)

# Request outcomes other than success; an HTTP error is "http_<status>".
ERROR_TIMEOUT = "timeout"
ERROR_DISCONNECT = "disconnect"
ERROR_CONNECT = "connect"
ERROR_BAD_STREAM = "bad_stream"
ERROR_CANCELLED = "cancelled"  # in flight when the run was interrupted: not the server's fault


def length_bounds(length: int, range_ratio: float) -> tuple[int, int]:
    """What `settings.range_ratio` means: each request's input and output lengths were drawn
    uniformly from [round(L*(1-R)), round(L*(1+R))], at least 1, around --input-tokens and
    --output-tokens (vLLM's `--random-range-ratio`); R = 0 is the length itself."""
    return max(1, round(length * (1 - range_ratio))), max(1, round(length * (1 + range_ratio)))


@dataclass
class RequestRecord:
    """One request. `scheduled_s` is when it should have been sent (its arrival in an open
    loop; when its user became free in a closed loop); `sent_s` is when it was."""

    index: int
    level: int
    warmup: bool
    scheduled_s: float
    sent_s: float
    end_s: float
    first_token_s: float | None = None
    last_token_s: float | None = None
    chunk_gaps_s: list[float] = field(default_factory=list)  # every gap between content chunks
    output_tokens: int | None = None
    output_tokens_method: str | None = None
    input_tokens: int | None = None  # the server's usage.prompt_tokens, else what was planned
    input_tokens_method: str | None = None
    planned_output_tokens: int | None = None
    error_kind: str | None = None
    error: str | None = None
    http_status: int | None = None
    user: int | None = None  # closed loop: which user sent it
    prefixed: bool = False  # starts with the shared prefix
    repeat_of: int | None = None  # repeats this earlier request's prompt exactly
    # sent again on a fresh connection: its pooled keep-alive connection had been closed by the
    # server before the request could be written (the time of that attempt stays in its latency)
    resent: bool = False

    @property
    def ok(self) -> bool:
        return self.error_kind is None


@dataclass
class LevelRecord:
    """One load level: a concurrency (closed loop) or a rate (open loop), and what the
    client itself did while it ran."""

    index: int
    mode: str
    concurrency: int | None = None  # closed loop: users
    rate_rps: float | None = None  # open loop: mean arrivals per second
    burstiness: float = 1.0  # gamma shape of the gaps between arrivals (1 = Poisson)
    max_concurrency: int | None = None
    start_s: float = 0.0  # after warm-up: the measured window begins here
    end_s: float = 0.0
    cpu_s: float = 0.0  # the client process's CPU time in the window
    loop_lag_s: list[float] = field(default_factory=list)  # how late the lag ticker woke, each tick
    loop_tick_s: float = 0.01
    complete: bool = True
    label: str = ""  # "probe" for the --sweep throughput probe


@dataclass
class MetricsSample:
    """One scrape of the server's /metrics: counters and gauges summed over their labels."""

    t_s: float
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class LoadRun:
    run_id: str
    created_at: str
    lmprof_version: str
    status: str = STATUS_INCOMPLETE
    error: dict[str, str] | None = None
    command: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)  # url, endpoint, model, models, version
    client: dict[str, Any] = field(default_factory=dict)  # cpu model, python, aiohttp
    levels: list[LevelRecord] = field(default_factory=list)
    requests: list[RequestRecord] = field(default_factory=list)
    metrics: list[MetricsSample] = field(default_factory=list)
    metrics_note: str = ""  # why there are no server metrics, when there are none
    wall_s: float = 0.0
    warnings: list[str] = field(default_factory=list)
    kind: str = LOAD_KIND
    schema_version: int = LOAD_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        # kind and version first: `is_load_run` tells a load run from the file's first bytes.
        return {"kind": data.pop("kind"), "schema_version": data.pop("schema_version"), **data}

    def to_json(self) -> str:
        # Compact: a run keeps every gap between chunks of every request, and indenting
        # would put each of them on a line of its own.
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadRun:
        if data.get("kind") != LOAD_KIND:
            raise RunFileError(f"not a load run record (kind {data.get('kind')!r})")
        version = data.get("schema_version")
        if version != LOAD_SCHEMA_VERSION:
            raise RunFileError(
                f"load run record has schema_version {version!r}; this lmprof reads version "
                f"{LOAD_SCHEMA_VERSION}"
            )
        kwargs = _known(cls, data)
        kwargs["levels"] = [LevelRecord(**_known(LevelRecord, d)) for d in data.get("levels", [])]
        kwargs["requests"] = [RequestRecord(**_known(RequestRecord, d)) for d in data.get("requests", [])]
        kwargs["metrics"] = [MetricsSample(**_known(MetricsSample, d)) for d in data.get("metrics", [])]
        return cls(**kwargs)

    def save(self, run_dir: str | os.PathLike[str]) -> Path:
        """Write RUN_DIR/run.json atomically: readers see the old file or the new one whole."""
        return save_record(run_dir, self.to_json() + "\n")


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def is_load_run(location: str | os.PathLike[str]) -> bool:
    """Whether a run folder or run.json holds a load run, so show and compare can dispatch
    to it (from the file's first bytes: a load run names its kind first)."""
    return record_kind(location) == LOAD_KIND


def load_load_run(location: str | os.PathLike[str]) -> LoadRun:
    """Read a load run from a run folder or its run.json."""
    data = read_record(location, written_by="lmprof load --out")
    try:
        return LoadRun.from_dict(data)
    except TypeError as exc:
        raise RunFileError(f"'{record_path(location)}' does not match the load run schema: {exc}") from exc
