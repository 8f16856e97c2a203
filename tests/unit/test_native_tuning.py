"""The per-CPU table of native-kernel choices (engine/native/tuning.py)."""

from __future__ import annotations

import pytest

from lmprof.engine.native.tuning import ENV_PREFETCH, CpuId, Prefetch, cpu_id, prefetch_bytes
from lmprof.errors import UsageError


def cpuinfo(vendor: str, family: int, model: int = 2) -> str:
    processor = f"processor\t: {{n}}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
    return "\n".join(processor.format(n=n) for n in range(2))


def test_the_table_prefetches_where_it_was_measured_to_pay(monkeypatch):
    monkeypatch.delenv(ENV_PREFETCH, raising=False)
    assert cpu_id(cpuinfo("AuthenticAMD", 25, 1)) == CpuId("AuthenticAMD", 25, 1)
    assert prefetch_bytes(cpuinfo("AuthenticAMD", 26)) == Prefetch(4096, 4096)  # Zen 5: both paid
    assert prefetch_bytes(cpuinfo("AuthenticAMD", 25, 1)) == Prefetch(0, 2048)  # Zen 3 (Milan): wide tiles
    assert prefetch_bytes(cpuinfo("AuthenticAMD", 25, 0x21)) == Prefetch(0, 2048)  # Zen 3 (Vermeer)
    assert prefetch_bytes(cpuinfo("AuthenticAMD", 25, 0x11)) == Prefetch(0, 0)  # Zen 4: cost at batch 1
    assert prefetch_bytes(cpuinfo("GenuineIntel", 6, 0xCF)) == Prefetch(2048, 2048)  # Emerald Rapids
    assert prefetch_bytes(cpuinfo("GenuineIntel", 6)) == Prefetch(0, 0)  # unmeasured
    assert prefetch_bytes(cpuinfo("GenuineIntel", 6, 0x8F)) == Prefetch(0, 0)  # Sapphire Rapids: unmeasured
    assert prefetch_bytes("Features\t: fp asimd\n") == Prefetch(0, 0)  # no vendor or family (Arm)


def test_the_environment_overrides_the_table(monkeypatch):
    monkeypatch.setenv(ENV_PREFETCH, "0")
    assert prefetch_bytes(cpuinfo("AuthenticAMD", 26)) == Prefetch(0, 0)
    monkeypatch.setenv(ENV_PREFETCH, "8192")
    assert prefetch_bytes(cpuinfo("GenuineIntel", 6)) == Prefetch(8192, 8192)
    monkeypatch.setenv(ENV_PREFETCH, "0, 2048")
    assert prefetch_bytes(cpuinfo("GenuineIntel", 6)) == Prefetch(0, 2048)
    for bad in ("-64", "4k", "", "1,2,3", "1,"):
        monkeypatch.setenv(ENV_PREFETCH, bad)
        with pytest.raises(UsageError, match=ENV_PREFETCH):
            prefetch_bytes(cpuinfo("AuthenticAMD", 26))


@pytest.mark.parametrize(
    ("noted", "words"),
    [
        ([0, 2048], "software prefetch none at batch 1-3, 2.0 KiB ahead at batch >= 4"),
        ([4096, 4096], "software prefetch 4.0 KiB ahead"),
        ([0, 0], "software prefetch none at batch 1, the rows ahead at batch > 1"),
        (4096, "software prefetch 4.0 KiB ahead"),  # a Run saved when one distance served both
    ],
)
def test_the_run_says_which_prefetch_the_kernels_ran_with(noted, words):
    from lmprof.record.run import Phase, Run
    from lmprof.render.generation_facts import native_kernels_fact

    phase = Phase("load_native_kernels", 0.0, 0.1, 0, None, 0.1, 0, 0, 0, 0, 0)
    phase.detail["prefetch_bytes"] = noted
    run = Run(run_id="r", created_at="2026-12-03T00:00:00+00:00", lmprof_version="0", phases=[phase])
    assert native_kernels_fact(run).startswith(words)
