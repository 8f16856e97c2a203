"""The words and numbers of a comparison, shared by its terminal, markdown and HTML
renderers so that all three say the same thing: values in the figure's unit, the change
with its arrow and verdict, the noise verdict, and threshold results."""

from __future__ import annotations

from lmprof.analyze.compare import BYTES, SECONDS, TOKENS_PER_S, Change, Comparison, Measure
from lmprof.analyze.thresholds import ThresholdCheck
from lmprof.render.units import fmt_bytes, fmt_rate, fmt_s

ARROW_UP = "▲"
ARROW_DOWN = "▼"
ARROW_SAME = "="

NOISE_RULE = (
    "beyond noise: |change of medians| > spread A + spread B (spread = half the min-max range; "
    "a side with one sample borrows the other's)"
)


def fmt_value(unit: str, value: float | None) -> str:
    if value is None:
        return "-"
    if unit == SECONDS:
        return fmt_s(value)
    if unit == BYTES:
        return fmt_bytes(value)
    if unit == TOKENS_PER_S:
        return fmt_rate(value, "tok/s")
    return f"{value:g}"


def fmt_delta(unit: str, delta: float) -> str:
    """An absolute change with its sign: +30.0 ms, -1.5 MiB, +12.0 tok/s."""
    if unit == BYTES:
        return fmt_bytes(delta, signed=True)
    text = fmt_value(unit, delta)
    return "+" + text if delta > 0 else text


def fmt_relative(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:+.1f}%"


def fmt_measure(unit: str, measure: Measure | None) -> str:
    """The median, with ±spread as a share of it when the group has repeats."""
    if measure is None:
        return "-"
    text = fmt_value(unit, measure.center)
    spread = measure.spread
    if spread is not None and measure.center != 0:
        text += f" ±{abs(spread / measure.center) * 100:.1f}%"
    return text


def arrow(change: Change) -> str:
    return ARROW_SAME if change.delta == 0 else (ARROW_UP if change.delta > 0 else ARROW_DOWN)


def fmt_change(change: Change | None) -> str:
    """`▲ +25.0% worse`; the relative change when the baseline is not zero."""
    if change is None:
        return "-"
    if change.delta == 0:
        return f"{ARROW_SAME} same"
    amount = fmt_relative(change.relative) if change.relative is not None else "from 0"
    return f"{arrow(change)} {amount} {change.verdict}"


def fmt_beyond_noise(change: Change | None) -> str:
    if change is None:
        return "-"
    if change.beyond_noise is None:
        return "unknown"
    word = "yes" if change.beyond_noise else "no"
    if change.noise_relative is not None:
        return f"{word} (±{change.noise_relative * 100:.1f}%)"
    return word


def fmt_check(check: ThresholdCheck, comparison: Comparison) -> str:
    """One line: `breached ttft_s>+10%: B +25.0% against A (beyond noise: unknown)`."""
    t = check.threshold
    base = comparison.groups[0].label
    if not check.evaluated:
        return f"not checked {t.text}: {check.reason}"
    spec_row = comparison.row(t.figure)
    assert spec_row is not None and check.value is not None
    value = fmt_relative(check.value) if t.relative else fmt_delta(spec_row.spec.unit, check.value)
    noise = {None: "unknown", True: "yes", False: "no"}[check.beyond_noise]
    state = "breached" if check.breached else "ok"
    return f"{state} {t.text}: {check.group} {value} against {base} (beyond noise: {noise})"


def group_line(comparison: Comparison, index: int) -> str:
    """`A  runs/base  tiny · float32 · cpu  (3 repeat runs)`: one line per group."""
    g = comparison.groups[index]
    what = " · ".join(str(x) for x in (g.model_id, g.dtype, g.device) if x)
    role = ", baseline" if index == 0 else ""
    return f"{g.label}  {g.source or ', '.join(g.run_ids)}  {what}  ({g.description}{role})"
