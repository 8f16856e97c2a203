"""The per-CPU table of native-kernel choices (engine/native/tuning.py)."""

from __future__ import annotations

import pytest

from lmprof.engine.native.tuning import ENV_PREFETCH, cpu_vendor_family, prefetch_bytes
from lmprof.errors import UsageError


def cpuinfo(vendor: str, family: int) -> str:
    processor = f"processor\t: {{n}}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: 2\n"
    return "\n".join(processor.format(n=n) for n in range(2))


def test_the_table_prefetches_on_zen5_only(monkeypatch):
    monkeypatch.delenv(ENV_PREFETCH, raising=False)
    assert cpu_vendor_family(cpuinfo("AuthenticAMD", 26)) == ("AuthenticAMD", 26)
    assert prefetch_bytes(cpuinfo("AuthenticAMD", 26)) == 4096  # Zen 5: measured to pay
    assert prefetch_bytes(cpuinfo("AuthenticAMD", 25)) == 0  # Zen 3/4: measured to cost on Zen 4
    assert prefetch_bytes(cpuinfo("GenuineIntel", 6)) == 0  # unmeasured
    assert prefetch_bytes("Features\t: fp asimd\n") == 0  # no vendor or family (Arm)


def test_the_environment_overrides_the_table(monkeypatch):
    monkeypatch.setenv(ENV_PREFETCH, "0")
    assert prefetch_bytes(cpuinfo("AuthenticAMD", 26)) == 0
    monkeypatch.setenv(ENV_PREFETCH, "8192")
    assert prefetch_bytes(cpuinfo("GenuineIntel", 6)) == 8192
    for bad in ("-64", "4k", ""):
        monkeypatch.setenv(ENV_PREFETCH, bad)
        with pytest.raises(UsageError, match=ENV_PREFETCH):
            prefetch_bytes(cpuinfo("AuthenticAMD", 26))
