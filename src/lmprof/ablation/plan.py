"""Which rows `lmprof ablate` runs: a transformers baseline, the engine, each switch alone,
and the best combination of the switches that paid off.

A row that cannot run here stays in the plan with the reason, so the table says what was
not measured instead of hiding it. Pure: no model is loaded and nothing is measured here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lmprof.errors import LmprofError, UsageError
from lmprof.record.ablation import BASELINE, BEST, MIN_GAIN, REFERENCE

if TYPE_CHECKING:
    from lmprof.engine import EngineOptions

BATCH_ROW_SIZE = 8
WEIGHT_FORMAT = "weight format"
WEIGHT_FORMAT_KEYS = ("int8", "dtype", "column_major")


@dataclass(frozen=True)
class AblationRow:
    name: str  # folder name under OUT and the --only key
    label: str  # the table's first column
    runner: str  # "transformers" or "engine"
    options: dict[str, Any] = field(default_factory=dict)  # EngineOptions fields this row changes
    batch: int = 1
    skip_reason: str | None = None
    combines: list[str] = field(default_factory=list)  # the best combination: the rows it merges

    def engine_options(self, threads: int | None) -> EngineOptions:
        """The row's switches over the engine's defaults; threads from the run unless the row sets them."""
        from lmprof.engine import EngineOptions  # imports torch: not before a row's process times that

        return EngineOptions(**{"threads": threads, **self.options})

    def weight_dtype(self) -> str:
        """How the weights a decode step reads are stored ("int8" or a float dtype): sizes the floor."""
        return "int8" if self.options.get("int8") else self.options.get("dtype", "float32")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "runner": self.runner,
            "options": dict(self.options),
            "batch": self.batch,
            "skip_reason": self.skip_reason,
            "combines": list(self.combines),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AblationRow:
        return cls(
            **{k: data[k] for k in ("name", "label", "runner", "options", "batch", "skip_reason", "combines")}
        )


def plan_rows(
    *,
    threads: int,
    logical_cores: int,
    prompt_tokens: int,
    compile_decode: bool = False,
    unrunnable_dtypes: Mapping[str, str] | None = None,
    native_unavailable: str | None = None,
    huge_pages_unavailable: str | None = None,
    w8a8_unavailable: str | None = None,
) -> list[AblationRow]:
    """Every row, in table order, the best combination excepted (it depends on measurements).

    unrunnable_dtypes: dtype -> why it has no kernels here (from the hardware probes).
    native_unavailable: why lmprof's C++ decode kernels cannot run here, if they cannot.
    huge_pages_unavailable: why weights cannot go on transparent huge pages here, if they cannot.
    w8a8_unavailable: why the native step cannot quantize activations here (no AVX2 or VNNI).
    """
    unrunnable = dict(unrunnable_dtypes or {})
    chunk = max(1, prompt_tokens // 4)
    other_threads = 1 if threads > 1 else (2 if logical_cores >= 2 else None)
    rows = [
        AblationRow(BASELINE, "transformers fp32", "transformers"),
        AblationRow(REFERENCE, "engine fp32", "engine"),
        AblationRow("kv-off", "KV cache off", "engine", {"kv_cache": "off"}),
        AblationRow("kv-growing", "KV cache growing", "engine", {"kv_cache": "growing"}),
        AblationRow("naive-attention", "naive attention", "engine", {"attention": "naive"}),
        AblationRow("gqa-repeat", "GQA repeat K/V", "engine", {"gqa": "repeat"}),
        AblationRow("fused", "fused QKV+gate-up", "engine", {"fuse_qkv": True, "fuse_gate_up": True}),
        AblationRow("column-major", "column-major W", "engine", {"column_major": True}),
        AblationRow(
            "bf16", "bf16 weights", "engine", {"dtype": "bfloat16"}, skip_reason=unrunnable.get("bfloat16")
        ),
        AblationRow(
            "fp16", "fp16 weights", "engine", {"dtype": "float16"}, skip_reason=unrunnable.get("float16")
        ),
        AblationRow(
            "native",
            "native decode step",
            "engine",
            {"native_decode": True},
            skip_reason=native_unavailable,
        ),
        AblationRow(
            "huge-pages",
            "huge pages",
            "engine",
            {"huge_pages": True},
            skip_reason=huge_pages_unavailable,
        ),
        AblationRow("int8", "int8 weight-only", "engine", {"int8": True}),
        AblationRow(
            # W8A8 exists only inside the native step, so the row carries it (and int8 weights)
            "w8a8",
            "int8 weights + activations (native)",
            "engine",
            {"int8": True, "native_decode": True, "int8_activations": True},
            skip_reason=native_unavailable or w8a8_unavailable,
        ),
        AblationRow(
            "int4", "int4 weight-only", "engine", skip_reason="the engine has no int4 path (int8 only)"
        ),
        AblationRow(
            "compile",
            "torch.compile",
            "engine",
            {"compile_decode": True},
            skip_reason=None
            if compile_decode
            else "off by default: pass --compile (compiling takes 20-90 s on a CPU)",
        ),
        AblationRow(f"batch-{BATCH_ROW_SIZE}", f"batch {BATCH_ROW_SIZE}", "engine", batch=BATCH_ROW_SIZE),
        AblationRow("chunked-prefill", f"prefill chunks of {chunk}", "engine", {"prefill_chunk_size": chunk}),
        AblationRow(
            "threads",
            f"{other_threads} thread{'s' if other_threads != 1 else ''}" if other_threads else "thread count",
            "engine",
            {"threads": other_threads} if other_threads else {},
            skip_reason=None if other_threads else "one core: no other thread count to try",
        ),
    ]
    return rows


def select_rows(rows: Sequence[AblationRow], only: Sequence[str] | None) -> list[AblationRow]:
    """The rows `--only` names (in plan order), or all; unknown names are an error."""
    if not only:
        return list(rows)
    known = [r.name for r in rows] + [BEST]
    unknown = [name for name in only if name not in known]
    if unknown:
        raise UsageError(f"unknown ablation rows {', '.join(unknown)}; rows: {', '.join(known)}")
    return [r for r in rows if r.name in only]


def _switch_groups(options: Mapping[str, Any]) -> set[str]:
    # int8, a float dtype and column-major storage are three ways to store the weights: a
    # combination takes one of them, the fastest.
    return {WEIGHT_FORMAT if key in WEIGHT_FORMAT_KEYS else key for key in options}


def _switch_rows(rows: Sequence[AblationRow]) -> list[AblationRow]:
    """The rows a best combination is made of: engine switches at batch 1 that can run."""
    return [r for r in rows if r.runner == "engine" and r.batch == 1 and r.options and r.skip_reason is None]


def best_combination(
    rows: Sequence[AblationRow],
    decode_tokens_per_s: Mapping[str, float | None],
    reference: str = REFERENCE,
    min_gain: float = MIN_GAIN,
) -> AblationRow:
    """The engine with the set of switches, each of which made batch-1 decode at least `min_gain`
    times faster than `reference` alone, whose speed-ups multiply to the most; a set is allowed
    when its switches combine (one weight format, one setting per option, no compile with a
    growing cache, no native step with half-precision weights...). Taking the fastest switch
    first and then whatever still fits can miss the best set (fp16 alone beating the native
    step, which combines with int8), so every allowed set is scored. The margin keeps a
    one-round measurement's noise from picking switches that do nothing. A skipped row when
    none helped."""
    ref_rate = decode_tokens_per_s.get(reference)
    winners = [
        row
        for row in _switch_rows(rows)
        if row.name != reference
        and ref_rate
        and (decode_tokens_per_s.get(row.name) or 0.0) >= min_gain * ref_rate
    ]
    winners.sort(key=lambda row: decode_tokens_per_s[row.name] or 0.0, reverse=True)
    if not winners:
        reason = (
            f"no switch beat the engine row by {min_gain - 1:.0%}"
            if ref_rate
            else "the engine row did not run"
        )
        return AblationRow(BEST, "best combination", "engine", skip_reason=reason)
    from lmprof.engine import EngineOptions

    def gain(row: AblationRow) -> float:
        return (decode_tokens_per_s[row.name] or 0.0) / ref_rate

    best: tuple[float, list[AblationRow], dict[str, Any]] = (0.0, [], {})
    for size in range(1, len(winners) + 1):
        for chosen in itertools.combinations(winners, size):
            groups = [_switch_groups(row.options) for row in chosen]
            if sum(len(g) for g in groups) != len(set().union(*groups)):
                continue  # two rows set the same option or two weight formats
            merged = {k: v for row in chosen for k, v in row.options.items()}
            try:
                EngineOptions(**merged)
            except LmprofError:
                continue
            score = math.prod(gain(row) for row in chosen)
            if score > best[0]:
                best = (score, list(chosen), merged)
    _, taken, merged = best
    return AblationRow(BEST, "best combination", "engine", merged, combines=[row.name for row in taken])


def measured_best(
    best: AblationRow,
    rows: Sequence[AblationRow],
    decode_tokens_per_s: Mapping[str, float | None],
    best_rate: float | None,
) -> tuple[AblationRow, str] | None:
    """A replacement for `best` when one of the rows it was chosen from ran faster alone than
    `best` ran in round 1 (best_rate): the product of one-switch speed-ups is an estimate, and
    it can overrate a set (int8 on torch ops times the native step, against a measured W8A8
    row). Returns (that row's switches as the best combination, why), or None to keep `best`."""
    if best.skip_reason or len(best.combines) < 2 or not best_rate:
        return None
    candidates = [row for row in _switch_rows(rows) if (decode_tokens_per_s.get(row.name) or 0.0) > best_rate]
    if not candidates:
        return None
    fastest = max(candidates, key=lambda row: decode_tokens_per_s[row.name] or 0.0)
    why = (
        f"{' + '.join(best.combines)} ran {best_rate:.1f} tok/s in round 1, below the {fastest.name} row alone "
        f"({decode_tokens_per_s[fastest.name]:.1f}): the best combination is {fastest.name}"
    )
    return AblationRow(
        BEST, "best combination", "engine", dict(fastest.options), combines=[fastest.name]
    ), why
