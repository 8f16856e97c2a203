"""The `lmprof ablate` report as saved and re-read (OUT/ablation.json): every row's rounds, the
table's figures, and where each row's Runs are.

Torch-free: the table renders from a saved report without loading the runner, a session or a
collector. The rows' roles (baseline, reference, best) are named here because the report and
its table both speak of them; which rows exist is `lmprof.ablation.plan`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmprof.record.files import write_atomic

REPORT_FILE = "ablation.json"

BASELINE = "transformers"
REFERENCE = "engine"  # the engine as it loads by default: fp32, static KV cache, SDPA, grouped GQA
BEST = "best"
# A switch joins the best combination only when it beat the engine row by 10% in round 1: on
# the shared 2-core machine two rows of the same configuration differed by up to 9% in a round.
MIN_GAIN = 1.10


@dataclass(frozen=True)
class RoundFigures:
    """What one row's Run in one round measured."""

    ttft_s: float | None
    decode_tokens_per_s: float | None  # all sequences of the batch counted
    step_s: float | None  # one decode step (every sequence advances one token)
    peak_memory_bytes: int | None
    new_token_ids: list[int] = field(default_factory=list)
    forced_agreement: float | None = None  # teacher-forced, against the reference's tokens
    other_cpu_share: float | None = None  # CPU time other processes took during the run
    file_backed_bytes: int | None = None  # of the resident memory, file-backed pages (mapped weights)


@dataclass
class RowResult:
    """One ablation row as measured: its rounds (None where a round did not run it)."""

    name: str
    label: str
    status: str  # "ran", "skipped" or "failed"
    reason: str | None = None
    rounds: list[RoundFigures | None] = field(default_factory=list)
    decode_weight_bytes: int | None = None  # what one decode step must read, for the floor
    batch: int = 1


@dataclass
class RowFigures:
    name: str
    label: str
    status: str
    reason: str | None
    rounds_run: int
    ttft_s: float | None = None
    decode_tokens_per_s: float | None = None
    step_s: float | None = None
    peak_memory_bytes: int | None = None
    speedup_vs_baseline: float | None = None
    speedup_vs_previous: float | None = None
    floor_s: float | None = None
    floor_share: float | None = None
    agreement: float | None = None  # free-running: position by position
    agreement_prefix_tokens: int | None = None
    forced_agreement: float | None = None  # teacher-forced on the reference's tokens
    batch: int = 1
    busy_rounds: list[int] = field(default_factory=list)  # 1-based rounds that competed for the CPU
    file_backed_bytes: int | None = None  # file-backed part of the resident memory after generating


@dataclass
class AblationReport:
    """Everything the table shows, and where each row's Runs are."""

    created_at: str
    model: str
    model_path: str
    request: dict[str, Any]
    threads: int
    prompt_source: str
    read_bandwidth_gbps: float | None
    probes: dict[str, Any]  # when and where the bandwidth was measured
    load_avg_start: list[float]
    load_avg_end: list[float]
    rows: list[RowResult]
    figures: list[RowFigures]
    runs: dict[str, list[str]] = field(default_factory=dict)  # row -> run folders, one per round
    best_combines: list[str] = field(default_factory=list)  # rows whose switches the best row merges
    best_note: str = ""  # why the best row is not the set first chosen (measured_best), if it is not
    system: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AblationReport:
        """Read back what `to_dict` wrote (OUT/ablation.json), to render it again."""
        kwargs = dict(data)
        kwargs["rows"] = [
            RowResult(**{**r, "rounds": [RoundFigures(**f) if f else None for f in r["rounds"]]})
            for r in data["rows"]
        ]
        kwargs["figures"] = [RowFigures(**f) for f in data["figures"]]
        return cls(**kwargs)


def save_report(out: Path, report: AblationReport) -> Path:
    """OUT/ablation.json, written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    return write_atomic(out / REPORT_FILE, json.dumps(report.to_dict(), indent=1) + "\n")


def load_report(out: Path) -> AblationReport:
    return AblationReport.from_dict(json.loads((out / REPORT_FILE).read_text(encoding="utf-8")))
