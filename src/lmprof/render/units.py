"""Human units for renderers: seconds, bytes, rates. Binary prefixes for memory (MiB, GiB)
as nvidia-smi and torch report them; decimal GB/s for bandwidth, as datasheets do."""

from __future__ import annotations


def fmt_s(seconds: float | None) -> str:
    """Three significant digits: 38 µs, 5.21 ms, 367 ms, 1.30 s, 112 s."""
    if seconds is None:
        return "-"
    a = abs(seconds)
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if a >= scale or unit == "µs":
            v = seconds / scale
            r = round(abs(v), 2)  # so 9.999 prints as 10.0, not 10.00
            digits = 0 if r >= 99.95 else (1 if r >= 9.995 else 2)
            return f"{v:.{digits}f} {unit}"
    return "-"


def fmt_bytes(n: float | None, signed: bool = False) -> str:
    if n is None:
        return "-"
    sign = "+" if signed and n > 0 else ("-" if n < 0 else "")
    a = abs(n)
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if a >= scale:
            return f"{sign}{a / scale:.1f} {unit}" if a / scale < 100 else f"{sign}{a / scale:.0f} {unit}"
    return f"{sign}{a:.0f} B"


def fmt_pct(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def fmt_rate(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} {unit}" if value < 1000 else f"{value:,.0f} {unit}"


def fmt_count(n: int | None) -> str:
    if n is None:
        return "-"
    for suffix, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(n)
