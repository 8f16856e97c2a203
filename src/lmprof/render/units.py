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


def fmt_share(share: float | None) -> str:
    """A share as a percentage, one decimal below 10% (4.2%), whole from there (62%)."""
    if share is None:
        return "-"
    return f"{share * 100:.1f}%" if share < 0.1 else f"{share * 100:.0f}%"


def fmt_number(value: float | None, digits: int = 1, whole_from: float = 1000, suffix: str = "") -> str:
    """`digits` decimals below `whole_from`, whole with thousands separators from it: 20.5, 1,234."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}{suffix}" if value < whole_from else f"{value:,.0f}{suffix}"


def fmt_rate(value: float | None, unit: str) -> str:
    return fmt_number(value, suffix=f" {unit}")


def fmt_times(ratio: float | None) -> str:
    """A speed-up: 2.00×, 8.29×; whole from 100× (1,250×)."""
    return fmt_number(ratio, digits=2, whole_from=100, suffix="×")


def fmt_count(n: int | None) -> str:
    if n is None:
        return "-"
    for suffix, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(n)
