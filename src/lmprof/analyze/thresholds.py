"""`--fail-on` thresholds: parse `ttft_s>+10%`-style expressions and check them against a
Comparison. Pure; parse errors are UsageErrors with one line that says how to write it.

An expression is FIGURE, `>` or `<`, and a signed amount:

    ttft_s>+10%                  breached when TTFT rose by more than 10 %
    decode_tokens_per_s<-5%      breached when decode throughput fell by more than 5 %
    peak_rss_bytes>+50MB         breached when peak RSS grew by more than 50 MB
    itl_p99_s>+2ms               absolute amounts take a unit of the figure's kind

The amount is compared with the change of each group's median against the baseline's
(relative for `%`, absolute otherwise). The sign is required so that a threshold reads
one way only. Bytes: B, kB/KB, MB, GB, TB (powers of 1000) and KiB, MiB, GiB, TiB
(powers of 1024). Seconds: s, ms, us/µs, ns. Throughput: tok/s or tokens/s. A bare
number is in the figure's own unit.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from lmprof.analyze.compare import BYTES, FIGURES, SECONDS, TOKENS_PER_S, Comparison, figure_spec
from lmprof.errors import UsageError

_EXPRESSION = re.compile(
    r"^(?P<figure>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>[<>])\s*(?P<sign>[+-])?\s*"
    r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>%|[A-Za-zµ/]+)?$"
)

_UNITS: dict[str, dict[str, float]] = {
    BYTES: {
        "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
        "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
    },
    SECONDS: {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9},
    TOKENS_PER_S: {"tok/s": 1.0, "tokens/s": 1.0},
}  # fmt: skip


@dataclass(frozen=True)
class Threshold:
    text: str  # as the user wrote it
    figure: str
    op: str  # ">" or "<"
    amount: float  # signed; a fraction (0.10 for +10 %) when relative, else in the figure's unit
    relative: bool

    def breached_by(self, value: float) -> bool:
        return value > self.amount if self.op == ">" else value < self.amount


@dataclass(frozen=True)
class ThresholdCheck:
    """One threshold against one group. `value` is the change it was compared with
    (a fraction when relative); None when the figure or the baseline was missing."""

    threshold: Threshold
    group: str
    value: float | None
    breached: bool
    beyond_noise: bool | None
    reason: str = ""  # why it was not evaluated

    @property
    def evaluated(self) -> bool:
        return self.value is not None


def parse_thresholds(expressions: Iterable[str]) -> list[Threshold]:
    """Parse --fail-on values; each may hold several expressions separated by commas."""
    out: list[Threshold] = []
    for expression in expressions:
        for part in expression.split(","):
            if part.strip():
                out.append(parse_threshold(part))
    return out


def parse_threshold(text: str) -> Threshold:
    expr = text.strip()
    if not expr:
        raise UsageError("--fail-on: empty threshold; write e.g. 'ttft_s>+10%'")
    match = _EXPRESSION.match(expr)
    if match is None:
        raise UsageError(
            f"--fail-on '{expr}': expected FIGURE>AMOUNT or FIGURE<AMOUNT with a signed amount, "
            "e.g. 'ttft_s>+10%', 'peak_rss_bytes>+50MB', 'decode_tokens_per_s<-5%'"
        )
    name, op, sign, number, unit = match.group("figure", "op", "sign", "number", "unit")
    spec = figure_spec(name)
    if spec is None:
        close = difflib.get_close_matches(name, [s.name for s in FIGURES], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(
            f"--fail-on '{expr}': unknown figure '{name}'{hint}; figures: "
            + ", ".join(s.name for s in FIGURES)
            + ", memory_<kind>_bytes"
        )
    if sign is None:
        raise UsageError(
            f"--fail-on '{expr}': give the amount a sign, e.g. '{name}{op}{'+' if op == '>' else '-'}{number}{unit or ''}' "
            "(+ for a rise, - for a fall)"
        )
    amount = float(number) * (-1 if sign == "-" else 1)
    if unit == "%":
        return Threshold(expr, name, op, amount / 100, relative=True)
    if unit is None:
        return Threshold(expr, name, op, amount, relative=False)
    scale = _UNITS[spec.unit].get(unit.lower())
    if scale is None:
        raise UsageError(
            f"--fail-on '{expr}': '{unit}' is not a unit of {name} ({spec.unit}); use %, or one of "
            + ", ".join(_UNITS[spec.unit])
        )
    return Threshold(expr, name, op, amount * scale, relative=False)


def check_thresholds(comparison: Comparison, thresholds: Iterable[Threshold]) -> list[ThresholdCheck]:
    """Each threshold against each group after the baseline. A figure that a side lacks is
    not evaluated (and not breached): the check says why."""
    checks: list[ThresholdCheck] = []
    for threshold in thresholds:
        row = comparison.row(threshold.figure)
        base = comparison.groups[0].label
        for i, group in enumerate(comparison.groups[1:]):
            change = row.changes[i] if row is not None else None
            if change is None:
                missing = [
                    g
                    for g, m in ((base, row and row.measures[0]), (group.label, row and row.measures[i + 1]))
                    if m is None
                ]
                reason = f"not measured in {' or '.join(missing)}"
                checks.append(ThresholdCheck(threshold, group.label, None, False, None, reason))
                continue
            value = change.relative if threshold.relative else change.delta
            if value is None:
                checks.append(ThresholdCheck(threshold, group.label, None, False, None, "baseline is 0"))
                continue
            checks.append(
                ThresholdCheck(
                    threshold, group.label, value, threshold.breached_by(value), change.beyond_noise
                )
            )
    return checks


def breaches(checks: Iterable[ThresholdCheck]) -> list[ThresholdCheck]:
    return [c for c in checks if c.breached]
