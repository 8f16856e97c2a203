"""The Run: one versioned, serializable record of a profiled inference run.

Everything a report shows comes from this record, so a run can be rendered again,
diffed or compared later without running a model. Collectors fill it; analysis and
renderers only read it. The JSON Schema in `schema/run.schema.json` documents it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmprof.errors import RunFileError
from lmprof.record.deep import DeepProfile, deep_from_dict, deep_to_dict
from lmprof.record.files import read_record, record_path, save_record

SCHEMA_VERSION = 2  # 2: phase_gaps
READABLE_VERSIONS = (1, 2)  # a version-1 run has no phase_gaps; the renderers derive them

STATUS_COMPLETE = "complete"
STATUS_INCOMPLETE = "incomplete"
STATUS_FAILED = "failed"


@dataclass
class Phase:
    """One named span of the run on the session clock, with what it cost."""

    name: str
    start_s: float
    end_s: float
    depth: int
    parent_index: int | None
    cpu_s: float
    rss_start_bytes: int
    rss_end_bytes: int
    rss_peak_bytes: int
    file_rss_start_bytes: int  # file-backed resident pages (mmapped weights land here)
    file_rss_end_bytes: int
    disk_read_bytes: int | None = None  # block-device reads (0 when served from page cache)
    major_faults: int | None = None
    minor_faults: int | None = None
    device_allocated_start_bytes: int | None = None
    device_allocated_end_bytes: int | None = None
    device_reserved_end_bytes: int | None = None
    device_peak_allocated_bytes: int | None = None
    payload_bytes: int | None = None  # bytes this phase moved: read, copied to device, downloaded
    complete: bool = True  # False when the run stopped inside this phase
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def wall_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def payload_gbps(self) -> float | None:
        if self.payload_bytes is None or self.wall_s <= 0:
            return None
        return self.payload_bytes / self.wall_s / 1e9


@dataclass
class Generation:
    """One generation call: its tokens and the latency of each step."""

    call: str  # "pipeline" or "generate"
    batch_size: int
    prompt_tokens: int
    new_tokens: int
    start_s: float  # when the user-visible call began (pipeline call, or generate)
    first_token_s: float  # session time at which the first new token existed
    end_s: float
    prefill_s: float
    decode_s: float
    decode_step_latencies_s: list[float]
    timing: str  # "host_clock" or "host_clock_cuda_synchronized"
    prompt: str | None = None
    text: str | None = None
    traced: bool = False  # run under torch.profiler (--deep): its times are inflated by the tracer
    # Derived figures, filled by lmprof.analyze.generation at finalize.
    ttft_s: float | None = None
    tpot_s: float | None = None
    itl_percentiles_s: dict[str, float] = field(default_factory=dict)
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None


@dataclass
class MemoryTimeline:
    """Memory sampled over time on the session clock, host and (on CUDA) device."""

    interval_s: float
    host: dict[str, list[float]] = field(default_factory=dict)  # t_s, rss_bytes, file_rss_bytes
    device: dict[str, list[float]] | None = None  # t_s, allocated_bytes, reserved_bytes, nvml_used_bytes
    peak_rss_bytes: int = 0
    peak_rss_t_s: float | None = None
    os_peak_rss_bytes: int | None = None  # the kernel's high-water mark (VmHWM) for the whole process
    peak_device_allocated_bytes: int | None = None
    peak_device_reserved_bytes: int | None = None
    peak_nvml_used_bytes: int | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Run:
    """The record. `status` says whether it finished; `error` says why not."""

    run_id: str
    created_at: str
    lmprof_version: str
    status: str = STATUS_INCOMPLETE
    error: dict[str, str] | None = None
    command: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] | None = None
    system: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    phases: list[Phase] = field(default_factory=list)
    generation: Generation | None = None  # the primary call (the one `lmprof profile` made)
    generations: list[Generation] = field(default_factory=list)  # every call seen, in order
    memory: MemoryTimeline | None = None
    wall_s: float = 0.0
    instrumented: list[str] = field(default_factory=list)  # entry points lmprof wrapped
    # Time inside a phase that no child names, over 2% of the run (lmprof.analyze.phases.phase_gaps)
    phase_gaps: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    deep: DeepProfile | None = None  # `--deep`: operators, modules, flame graphs, memory by kind
    schema_version: int = SCHEMA_VERSION

    # --- serialization -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["phases"] = [_phase_dict(p) for p in self.phases]
        data["deep"] = deep_to_dict(self.deep) if self.deep is not None else None
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False, default=_json_default)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Run:
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise RunFileError(
                f"run record has schema_version {version!r}; this lmprof reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}"
            )
        kwargs = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        kwargs["phases"] = [_phase_from_dict(p) for p in data.get("phases", [])]
        kwargs["generations"] = [_dataclass_from_dict(Generation, g) for g in data.get("generations", [])]
        if data.get("generation") is not None:
            kwargs["generation"] = _dataclass_from_dict(Generation, data["generation"])
        if data.get("memory") is not None:
            kwargs["memory"] = _dataclass_from_dict(MemoryTimeline, data["memory"])
        if data.get("deep") is not None:
            kwargs["deep"] = deep_from_dict(data["deep"])
        return cls(**kwargs)

    def save(self, run_dir: str | os.PathLike[str]) -> Path:
        """Write RUN_DIR/run.json atomically (a temp file renamed into place)."""
        return save_record(run_dir, self.to_json() + "\n")


def load_run(location: str | os.PathLike[str]) -> Run:
    """Read a Run from a run folder or a run.json path."""
    data = read_record(location, written_by="lmprof profile --out")
    try:
        return Run.from_dict(data)
    except (TypeError, KeyError) as exc:
        raise RunFileError(f"'{record_path(location)}' does not match the run schema: {exc}") from exc


def _phase_dict(phase: Phase) -> dict[str, Any]:
    data = dataclasses.asdict(phase)
    data["wall_s"] = phase.wall_s
    data["payload_gbps"] = phase.payload_gbps
    return data


def _phase_from_dict(data: dict[str, Any]) -> Phase:
    return _dataclass_from_dict(Phase, data)


def _dataclass_from_dict(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"cannot serialize {type(value).__name__} in a run record")


def run_schema() -> dict[str, Any]:
    """The JSON Schema of run.json (shipped in the package)."""
    from importlib.resources import files

    return json.loads(files("lmprof").joinpath("schema/run.schema.json").read_text(encoding="utf-8"))


def validate_run_dict(data: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when `data` is not a valid run record."""
    import jsonschema

    jsonschema.Draft202012Validator(run_schema()).validate(data)
