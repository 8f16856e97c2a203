"""The throughput experiment's record (`lmprof bench throughput`): one versioned, torch-free
file holding every measured point as the load run that measured it, so every figure of the
report (medians, paired gains, hit rates, plots) is derived again from the file alone.

A *row* is one server configuration on one workload (scheduler, caches, prompts); a *point*
is one row at one concurrency in one round. Round k ran every row once, servers fresh.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmprof.errors import RunFileError
from lmprof.record.files import read_record, record_path, save_record

THROUGHPUT_KIND = "throughput"
THROUGHPUT_SCHEMA_VERSION = 1
REPORT_FILE = "throughput.json"


@dataclass(frozen=True)
class BenchRow:
    name: str  # e.g. "continuous+prefix-cache @ shared-prefix"
    scheduler: str
    workload: str  # "no-sharing", "shared-prefix", "repeats"
    response_cache: bool = False
    prefix_cache: bool = False

    @property
    def technique(self) -> str:
        caches = [
            c
            for c, on in (("response-cache", self.response_cache), ("prefix-cache", self.prefix_cache))
            if on
        ]
        return "+".join([self.scheduler, *caches])


@dataclass
class BenchPoint:
    row: str
    round: int  # 1-based
    concurrency: int
    load: dict[str, Any]  # the LoadRun of this level (lmprof.record.load), as a dict
    server_rss_peak_bytes: int | None = None  # sampled on the server's pid while the level ran
    server_cpu_s: float | None = None  # the server process's CPU seconds over the level
    other_cpu_share: float | None = None  # processes other than the client and server, share of all CPUs
    load_avg_start: list[float] = field(default_factory=list)
    error: str | None = None  # the level could not be measured (server gone, ...)


@dataclass
class ServerLife:
    """One server start (a row in a round): how it was started and how long loading took."""

    row: str
    round: int
    command: list[str]
    startup_line: str = ""
    startup_s: float | None = None
    error: str | None = None


@dataclass
class ThroughputReport:
    created_at: str
    lmprof_version: str
    command: list[str]
    settings: dict[str, Any]  # model, concurrency, requests, tokens, slo, rounds, ...
    machine: dict[str, Any]  # cpu model, logical cores, load averages at start and end
    rows: list[BenchRow] = field(default_factory=list)
    points: list[BenchPoint] = field(default_factory=list)
    servers: list[ServerLife] = field(default_factory=list)
    wall_s: float = 0.0
    complete: bool = False
    kind: str = THROUGHPUT_KIND
    schema_version: int = THROUGHPUT_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ThroughputReport:
        if data.get("kind") != THROUGHPUT_KIND:
            raise RunFileError(f"not a throughput report: kind is {data.get('kind')!r}")
        if data.get("schema_version") != THROUGHPUT_SCHEMA_VERSION:
            raise RunFileError(
                f"throughput report has schema_version {data.get('schema_version')!r}; "
                f"this lmprof reads version {THROUGHPUT_SCHEMA_VERSION}"
            )
        body = dict(data)
        body["rows"] = [BenchRow(**r) for r in data.get("rows", [])]
        body["points"] = [BenchPoint(**p) for p in data.get("points", [])]
        body["servers"] = [ServerLife(**s) for s in data.get("servers", [])]
        return cls(**body)

    def save(self, out_dir: str | os.PathLike[str]) -> Path:
        return save_record(out_dir, self.to_json(), REPORT_FILE)


def is_throughput_report(location: str | os.PathLike[str]) -> bool:
    """Whether `location` is a `lmprof bench throughput` folder (or its throughput.json)."""
    path = record_path(location, REPORT_FILE)
    return path.name == REPORT_FILE and path.is_file()


def load_throughput_report(location: str | os.PathLike[str]) -> ThroughputReport:
    data = read_record(location, written_by="lmprof bench throughput --out", file_name=REPORT_FILE)
    try:
        return ThroughputReport.from_dict(data)
    except TypeError as exc:
        raise RunFileError(
            f"'{record_path(location, REPORT_FILE)}' does not match the report schema: {exc}"
        ) from exc
