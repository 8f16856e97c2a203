"""Hardware probes: tiny real measurements, timing logic on a fake clock, the per-machine cache,
the read ceiling chosen from them, their table, and `lmprof sysinfo --measure` reusing the cache."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import asdict, replace

import pytest
import torch
from rich.console import Console

from lmprof.analyze.hardware import best_read_gbps
from lmprof.collect.hardware_probes import (
    last_level_cache_bytes,
    measure_hardware,
    probe_device,
    repeat_op,
    sizes_for_device,
)
from lmprof.collect.probe_cache import cache_path, machine_key, measured_hardware, save_probes
from lmprof.engine.huge_pages import thp_mode
from lmprof.record.probes import MIB, HardwareProbes, ProbeResult, ProbeSizes
from lmprof.render.probes_view import render_probes

TINY = replace(
    ProbeSizes(), read_bytes=MIB, matvec_weight_bytes=MIB, matvec_in_features=256, matmul_n=64, repeats=3
)


def test_every_probe_measures_positive_finite_rates():
    probes = probe_device("cpu", TINY)
    names = {(p.name, p.dtype) for p in probes}
    assert {
        ("read", "float32"),
        ("copy", "float32"),
        ("matvec", "float32"),
        ("matvec_column_major", "float32"),
    } <= names
    assert {("matmul", "float32"), ("matmul", "bfloat16"), ("matvec", "bfloat16")} <= names
    ran = [p for p in probes if p.skipped is None]
    assert len(ran) >= 8
    for p in ran:
        assert 2 <= len(p.times_s) <= TINY.repeats
        assert all(t > 0 for t in p.times_s)
        assert math.isfinite(p.best_gbps) and p.best_gbps > 0
        assert p.best_gbps >= p.median_gbps  # best is the fastest repeat
        if p.kind in ("matvec", "matmul"):
            assert math.isfinite(p.best_gflops) and p.best_gflops > 0
    copy = next(p for p in probes if p.name == "copy")
    assert copy.bytes_per_repeat == 2 * TINY.read_bytes  # read once and written once
    matvec = next(p for p in probes if p.name == "matvec" and p.dtype == "float32")
    n, k = matvec.shape
    assert matvec.bytes_per_repeat == n * k * 4 and matvec.flops_per_repeat == 2 * n * k
    native = {p.dtype: p for p in probes if p.name == "matvec_native"}
    assert set(native) == {"float32", "int8"} and all(p.skipped is None for p in native.values())
    n, k = native["int8"].shape
    assert native["int8"].bytes_per_repeat == n * k  # one byte a weight
    huge = next(p for p in probes if p.name == "matvec_native_huge_pages")
    assert huge.dtype == "float32" and huge.shape == native["float32"].shape
    if thp_mode() in ("always", "madvise"):
        assert huge.skipped is None and huge.best_gbps > 0
    else:
        assert huge.skipped  # says why


def test_matmul_probe_shrinks_when_one_product_is_too_slow():
    slow = replace(TINY, matmul_n=256, max_matmul_op_s=0.0)  # every size is "too slow": halve to 128
    matmul = next(p for p in probe_device("cpu", slow, dtypes=("float32",)) if p.kind == "matmul")
    assert matmul.shape == [128, 128, 128]
    assert matmul.flops_per_repeat == 2 * 128**3


class StepClock:
    """Each reading advances by `step_s`: an op timed on it takes exactly one step."""

    def __init__(self, step_s: float) -> None:
        self.now_s, self.step_s = 0.0, step_s

    def __call__(self) -> float:
        self.now_s += self.step_s
        return self.now_s


def test_repeats_stop_on_the_time_budget_but_never_below_the_minimum():
    calls = []
    clock = StepClock(1.0)

    def timer(op):
        op()
        return 0.5

    sizes = replace(TINY, warmup=2, repeats=10, max_probe_s=1.5)
    times = repeat_op(lambda: calls.append(1), timer, sizes, clock)
    assert len(calls) == 2 + len(times)  # warm-up runs are not timed
    # The budget is checked from the second repeat on; the clock reads 1 s more each time.
    assert times == [0.5, 0.5, 0.5]
    assert len(repeat_op(lambda: None, timer, replace(sizes, max_probe_s=0.0), StepClock(1.0))) == 2
    assert repeat_op(lambda: None, timer, replace(sizes, max_probe_s=100.0), StepClock(1.0)) == [0.5] * 10


def probe(name, kind, gbps, device="cpu", skipped=None):
    return ProbeResult(name, kind, device, "float32", [1], int(gbps * 1e9), 0, [1.0], skipped=skipped)


def test_best_read_bandwidth_counts_only_read_only_probes_on_the_device():
    probes = [
        probe("read", "read", 20.0),
        probe("matvec", "matvec", 25.0),
        probe("copy", "copy", 40.0),  # read + written: not a read rate
        probe("matvec", "matvec", 90.0, skipped="no kernel"),
        probe("read", "read", 900.0, device="cuda:0"),
        probe("matmul", "matmul", 300.0),
    ]
    assert best_read_gbps(probes, "cpu") == pytest.approx(25.0)
    assert best_read_gbps(probes, "cuda:0") == pytest.approx(900.0)
    assert best_read_gbps([probe("copy", "copy", 40.0)]) is None


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMPROF_CACHE", str(tmp_path))
    return tmp_path


def test_cache_round_trips_and_refresh_measures_again(private_cache):
    sizes = {"cpu": TINY}
    first, path, from_cache = measured_hardware(threads=1, sizes=sizes, devices=["cpu"])
    assert not from_cache and path.is_file() and path.is_relative_to(private_cache / "hardware")
    again, path2, from_cache2 = measured_hardware(threads=1, sizes=sizes, devices=["cpu"])
    assert from_cache2 and path2 == path
    assert again.to_dict() == first.to_dict()
    assert again.threads == 1
    fresh, _, from_cache3 = measured_hardware(threads=1, sizes=sizes, devices=["cpu"], refresh=True)
    assert not from_cache3 and fresh.measured_at >= first.measured_at
    # Other probe sizes are another measurement, not a cache hit.
    _, _, from_cache4 = measured_hardware(threads=1, sizes={"cpu": replace(TINY, repeats=2)}, devices=["cpu"])
    assert not from_cache4


def test_cache_key_separates_thread_counts():
    assert cache_path(machine_key(1, ["cpu"])) != cache_path(machine_key(2, ["cpu"]))
    key = machine_key(1, ["cpu"])
    assert key["torch"] == torch.__version__ and key["threads"] == 1 and key["gpus"] == []


def test_measure_hardware_restores_torch_threads():
    before = torch.get_num_threads()
    probes = measure_hardware(["cpu"], {"cpu": TINY}, threads=1, dtypes=("float32",))
    assert probes.threads == 1 and torch.get_num_threads() == before
    assert probes.sizes == {"cpu": asdict(TINY)}


def fixed_probes() -> HardwareProbes:
    return HardwareProbes(
        measured_at="2026-11-25T00:00:00+00:00",
        threads=2,
        torch_version="2.13.0+cpu",
        sizes={"cpu": asdict(sizes_for_device("cpu"))},
        load_avg_start=[0.5, 0.4, 0.3],
        load_avg_end=[0.6, 0.4, 0.3],
        wall_s=11.0,
        probes=[
            ProbeResult("read", "read", "cpu", "float32", [64 * MIB], 256 * MIB, 0, [0.0125, 0.02]),
            ProbeResult(
                "matvec", "matvec", "cpu", "bfloat16", [32768, 2048], 128 * MIB, 2 * 32768 * 2048, [0.01]
            ),
            ProbeResult("matmul", "matmul", "cpu", "float16", [1024] * 3, 0, 0, skipped="no fp16 kernel"),
        ],
    )


def test_probe_table_shows_rates_the_ceiling_and_skips():
    console = Console(width=160, record=True, color_system=None)
    console.print(render_probes(fixed_probes(), None, from_cache=False))
    text = console.export_text()
    assert "read (sum)" in text and "matvec W[out,in]" in text
    assert "21.5 / 16.5" in text  # 256 MiB in 12.5 ms best, 16.25 ms median
    assert "skipped: no fp16 kernel" in text
    assert "Best read bandwidth on cpu: 21.5 GB/s" in text
    assert "load average 0.50, 0.40, 0.30" in text


def test_saved_probes_render_without_torch():
    # `lmprof sysinfo` renders a cached measurement: the records, their analysis and the table
    # must not load torch (the measuring, lmprof.collect.hardware_probes, does).
    code = (
        "import json, sys; from rich.console import Console;"
        "from lmprof.record.probes import HardwareProbes;"
        "from lmprof.render.probes_view import render_probes;"
        "probes = HardwareProbes.from_dict(json.loads(sys.stdin.read()));"
        "Console(width=160, color_system=None).print(render_probes(probes, None));"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    saved = json.dumps(fixed_probes().to_dict())
    result = subprocess.run([sys.executable, "-c", code], input=saved, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Best read bandwidth on cpu: 21.5 GB/s" in result.stdout


def test_sysinfo_measure_reuses_the_cached_probes(run_cli, lmprof_cache):
    # A cache entry for this machine at 1 thread with the default sizes: the CLI must read it
    # back rather than measure (these numbers are not what a probe would find).
    probes = fixed_probes()
    probes.threads = 1
    key = machine_key(1)
    path = cache_path(key, lmprof_cache)
    save_probes(path, key, probes)
    proc = run_cli("sysinfo", "--measure", "--threads", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    measured = json.loads(proc.stdout)["hardware_probes"]
    assert measured["from_cache"] is True and measured["cache_file"] == str(path)
    assert measured["probes"][0]["best_gbps"] == pytest.approx(21.47, rel=1e-3)
    proc = run_cli("sysinfo", "--measure", "--threads", "1")
    assert proc.returncode == 0 and "Best read bandwidth on cpu: 21.5 GB/s" in proc.stdout
    assert run_cli("sysinfo", "--refresh").returncode == 2  # --refresh without --measure


def test_cpu_probe_buffers_outgrow_the_last_level_cache(tmp_path):
    # A 480 MiB L3 (seen on a Xeon VM) held the default 128 MiB matvec weight and read it at
    # 1.7x the DRAM rate, a floor no decode of a larger model can reach.
    index = tmp_path / "index3"
    index.mkdir()
    for name, text in {"level": "3", "type": "Unified", "size": "491520K"}.items():
        (index / name).write_text(text + "\n")
    cache_bytes = last_level_cache_bytes(tmp_path)
    assert cache_bytes == 480 * MIB
    sizes = ProbeSizes.for_cpu_cache(cache_bytes)
    assert sizes.read_bytes >= 2 * cache_bytes and sizes.matvec_weight_bytes >= 2 * cache_bytes
    assert sizes.read_bytes % (64 * MIB) == 0
    # A common cache keeps the defaults, and no cache facts (macOS, containers) too.
    assert ProbeSizes.for_cpu_cache(32 * MIB) == ProbeSizes() == ProbeSizes.for_cpu_cache(None)
    assert last_level_cache_bytes(tmp_path / "absent") is None
