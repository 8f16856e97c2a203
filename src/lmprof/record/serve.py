"""The serve Run: one versioned record of an `lmprof serve` server's life, torch-free.

Every time is seconds on one monotonic timeline whose zero is the server's start, so
request phases, engine steps and memory samples line up. `lmprof show DIR` reads it back
with no model and no torch.
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

SERVE_KIND = "serve"
SERVE_SCHEMA_VERSION = 1


def scheduler_words(settings: dict[str, Any], max_len: int | None = None) -> str:
    """The scheduler and its settings, from a serve Run's `settings` (ServeSettings.as_record):
    the server's startup line and `lmprof show` both say it this way."""
    scheduler = settings.get("scheduler", "?")
    wait = f"wait {settings.get('batch_wait_s', 0) * 1000:g} ms"
    if scheduler == "static-batch":
        return f"{scheduler} (batch {settings.get('max_batch')}, {wait})"
    if scheduler != "continuous":
        return scheduler
    chunk = settings.get("prefill_chunk_tokens") or settings.get("prefill_chunk") or "default"
    words = f"max batch {settings.get('max_batch')}, prefill chunk {chunk}, {wait}"
    return f"{scheduler} ({words}{'' if max_len is None else f', max len {max_len}'})"


@dataclass
class ServedRequest:
    """One HTTP request's way through the server; phase marks are None where it never got there."""

    request_id: str
    endpoint: str  # "completions" or "chat.completions"
    stream: bool
    arrived_s: float  # the handler saw the request
    admitted_s: float | None = None  # entered the worker queue (sequential: after the server lock)
    started_s: float | None = None  # its batch's prefill began
    first_token_s: float | None = None  # prefill and the first pick done
    finished_s: float | None = None  # its last token was handed to the loop (or it was dropped)
    responded_s: float | None = None  # the last byte was written
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache (continuous scheduler)
    batch_size: int = 0  # rows in the batch it ran in (continuous: decode rows when it joined)
    status: int = 200
    outcome: str = "ok"  # ok, cache_hit, cancelled, rejected, error
    finish_reason: str | None = None


@dataclass
class EngineStep:
    """One forward of the model worker: a prefill or one decode step of a batch."""

    start_s: float
    end_s: float
    kind: str  # "prefill" or "decode"
    batch_size: int  # rows in the batch
    active_rows: int  # rows still producing tokens (the rest are finished or cancelled)
    # continuous: one step may decode `batch_size` rows and prefill chunks of others
    prefill_tokens: int = 0
    waiting: int = 0  # requests queued after the step
    kv_tokens: int = 0  # tokens held in the KV pool after the step
    kv_columns: int = 0  # cache columns a decode step's attention spans (the pool's clock, gaps included)


@dataclass
class MemorySample:
    t_s: float
    rss_bytes: int
    device_allocated_bytes: int | None = None  # CUDA only


@dataclass
class ServeRun:
    settings: dict[str, Any]
    model: dict[str, Any]
    environment: dict[str, Any]
    started_unix_s: float
    ended_s: float = 0.0
    requests: list[ServedRequest] = field(default_factory=list)
    steps: list[EngineStep] = field(default_factory=list)
    memory: list[MemorySample] = field(default_factory=list)
    steps_dropped: int = 0  # engine steps past the profiler's cap: counted, not kept
    kind: str = SERVE_KIND
    schema_version: int = SERVE_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        # kind and version first: show and compare tell a serve run from the file's first bytes.
        return {"kind": data.pop("kind"), "schema_version": data.pop("schema_version"), **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeRun:
        if data.get("kind") != SERVE_KIND:
            raise RunFileError(f"not a serve run: kind is {data.get('kind')!r}")
        if data.get("schema_version") != SERVE_SCHEMA_VERSION:
            raise RunFileError(
                f"serve run has schema_version {data.get('schema_version')!r}; "
                f"this lmprof reads version {SERVE_SCHEMA_VERSION}"
            )
        body = dict(data)
        body["requests"] = [ServedRequest(**r) for r in data.get("requests", [])]
        body["steps"] = [EngineStep(**s) for s in data.get("steps", [])]
        body["memory"] = [MemorySample(**m) for m in data.get("memory", [])]
        return cls(**body)

    def save(self, run_dir: str | os.PathLike[str]) -> Path:
        return save_record(run_dir, self.to_json())


def is_serve_run(location: str | os.PathLike[str]) -> bool:
    """Whether the run file at `location` is a serve Run (from its first bytes)."""
    return record_kind(location) == SERVE_KIND


def load_serve_run(location: str | os.PathLike[str]) -> ServeRun:
    data = read_record(location, written_by="lmprof serve --profile-out")
    try:
        return ServeRun.from_dict(data)
    except TypeError as exc:
        raise RunFileError(f"'{record_path(location)}' does not match the serve run schema: {exc}") from exc
