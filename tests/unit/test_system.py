"""System facts: cpuinfo/sysfs parsing on fixtures, NVML with a fake module, load figures
from hand-built snapshots, and golden output of the system panel and line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from rich.console import Console

from lmprof.collect import environment, system
from lmprof.collect.environment import LoadSnapshot, describe_environment
from lmprof.render.system_view import render_system, system_line

SRC = Path(__file__).resolve().parents[2] / "src"

SAPPHIRE_RAPIDS = """\
processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
cpu MHz		: 2699.998
flags		: fpu sse sse2 avx f16c fma avx2 avx512f avx512bw avx512_vnni avx512_bf16 avx_vnni \
amx_bf16 amx_tile amx_int8

processor	: 1
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags		: fpu sse sse2 avx f16c fma avx2 avx512f avx512bw avx512_vnni avx512_bf16 avx_vnni \
amx_bf16 amx_tile amx_int8
"""

HASWELL = """\
processor	: 0
model name	: Intel(R) Xeon(R) CPU E5-2680 v3
cpu MHz		: 1200.000
flags		: fpu sse sse2 avx f16c fma avx2 bmi2
"""

NEOVERSE_V2 = """\
processor	: 0
BogoMIPS	: 2000.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp sve sve2 svebf16 i8mm bf16
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd4f
CPU revision	: 1
"""


def _isa(text: str) -> tuple[dict[str, bool], bool]:
    return system.isa_from_flags(system.cpu_flags(system.parse_cpuinfo(text)))


def test_x86_with_avx512_bf16_and_amx():
    isa, native_bf16 = _isa(SAPPHIRE_RAPIDS)
    assert native_bf16
    expected_true = ["avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni"]
    assert all(isa[name] for name in expected_true + ["amx_tile", "amx_bf16", "amx_int8"])
    assert not isa["neon"] and not isa["sve"]
    fields = system.parse_cpuinfo(SAPPHIRE_RAPIDS)
    assert system.cpu_model(fields) == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"


def test_x86_without_avx512_has_no_native_bf16():
    isa, native_bf16 = _isa(HASWELL)
    assert isa["avx2"] and isa["fma"] and isa["f16c"]
    assert not isa["avx512f"] and not isa["avx512_bf16"] and not isa["amx_bf16"]
    assert native_bf16 is False


def test_aarch64_neon_sve_bf16_and_part_name():
    isa, native_bf16 = _isa(NEOVERSE_V2)
    assert isa["neon"] and isa["sve"] and native_bf16
    assert not isa["avx2"] and not isa["fma"]
    assert system.cpu_model(system.parse_cpuinfo(NEOVERSE_V2)) == "Neoverse-V2"
    unknown = system.parse_cpuinfo(NEOVERSE_V2.replace("0xd4f", "0xfff"))
    assert system.cpu_model(unknown) == "ARM implementer 0x41 part 0xfff"


def test_py_cpuinfo_flag_spelling_is_understood():
    # py-cpuinfo's CPUID decoder drops the underscores that /proc/cpuinfo keeps.
    isa, native_bf16 = system.isa_from_flags(["avx512bf16", "avx512vnni", "amxtile"])
    assert isa["avx512_bf16"] and isa["avx512_vnni"] and isa["amx_tile"] and native_bf16


def test_clocks_prefer_cpufreq_then_model_name_then_cpu_mhz(tmp_path):
    fields = system.parse_cpuinfo(SAPPHIRE_RAPIDS)
    cpufreq = tmp_path / "cpufreq"
    assert system.read_clocks_mhz(cpufreq, fields) == (2700.0, None)
    assert system.read_clocks_mhz(cpufreq, system.parse_cpuinfo(HASWELL)) == (1200.0, None)
    cpufreq.mkdir()
    (cpufreq / "cpuinfo_max_freq").write_text("3800000\n")
    # A cpufreq driver makes "cpu MHz" an instantaneous clock: no base rather than a wrong one.
    assert system.read_clocks_mhz(cpufreq, system.parse_cpuinfo(HASWELL)) == (None, 3800.0)
    (cpufreq / "base_frequency").write_text("2100000\n")
    assert system.read_clocks_mhz(cpufreq, fields) == (2100.0, 3800.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("48K", 48 * 1024), ("32768K", 32 * 1024**2), ("1 MiB", 1024**2), ("2M", 2 * 1024**2), ("512", 512)],
)
def test_parse_size_bytes(text, expected):
    assert system.parse_size_bytes(text) == expected


def test_parse_size_bytes_rejects_junk():
    assert system.parse_size_bytes("lots") is None


def _cache_index(cache_dir: Path, index: int, level: str, kind: str, size: str) -> None:
    path = cache_dir / f"index{index}"
    path.mkdir(parents=True)
    for name, value in (("level", level), ("type", kind), ("size", size)):
        (path / name).write_text(value + "\n")


def test_read_caches_from_sysfs_tree(tmp_path):
    _cache_index(tmp_path, 0, "1", "Data", "48K")
    _cache_index(tmp_path, 1, "1", "Instruction", "32K")
    _cache_index(tmp_path, 2, "2", "Unified", "2048K")
    assert system.read_caches(tmp_path) == {"L1d": 49152, "L1i": 32768, "L2": 2 * 1024**2, "L3": None}
    _cache_index(tmp_path, 3, "3", "Unified", "107520K")
    assert system.read_caches(tmp_path)["L3"] == 105 * 1024**2


class FakeNVMLError(Exception):
    pass


def _fake_nvml(**overrides) -> SimpleNamespace:
    calls: list[str] = []

    def unsupported(*_args):
        raise FakeNVMLError("Not Supported")

    def max_clock(_handle, kind):
        return {"sm": 1980, "mem": 2619}[kind]

    nvml = SimpleNamespace(
        NVMLError=FakeNVMLError,
        NVML_CLOCK_SM="sm",
        NVML_CLOCK_MEM="mem",
        calls=calls,
        nvmlInit=lambda: calls.append("init"),
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlSystemGetDriverVersion=lambda: b"550.54.15",
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda index: f"handle{index}",
        nvmlDeviceGetName=lambda _h: "NVIDIA H100 80GB HBM3",
        nvmlDeviceGetMemoryInfo=lambda _h: SimpleNamespace(total=85_520_809_984),
        nvmlDeviceGetCudaComputeCapability=lambda _h: (9, 0),
        nvmlDeviceGetMaxClockInfo=max_clock,
        nvmlDeviceGetMemoryBusWidth=lambda _h: 5120,
        nvmlDeviceGetEnforcedPowerLimit=unsupported,
    )
    for name, value in overrides.items():
        setattr(nvml, name, value)
    return nvml


def test_gpus_from_nvml_with_unsupported_queries_as_none():
    nvml = _fake_nvml()
    gpus, error = system.collect_gpus(nvml)
    assert error is None
    (gpu,) = gpus
    assert gpu["name"] == "NVIDIA H100 80GB HBM3"
    assert gpu["driver"] == "550.54.15"
    assert gpu["compute_capability"] == "9.0"
    assert gpu["memory_total_bytes"] == 85_520_809_984
    assert (gpu["sm_clock_max_mhz"], gpu["memory_clock_max_mhz"]) == (1980, 2619)
    assert gpu["memory_bus_width_bits"] == 5120
    assert gpu["theoretical_bandwidth_gbps"] == pytest.approx(3352.32)  # H100 SXM datasheet: 3.35 TB/s
    assert gpu["power_limit_w"] is None
    assert nvml.calls == ["init", "shutdown"]


def test_nvml_absent_gives_no_gpus_and_a_reason():
    def no_library():
        raise FakeNVMLError("NVML Shared Library Not Found")

    gpus, error = system.collect_gpus(_fake_nvml(nvmlInit=no_library))
    assert gpus == []
    assert "NVML Shared Library Not Found" in error


def test_theoretical_bandwidth_needs_both_figures():
    assert system.theoretical_bandwidth_gbps(1215, 5120) == pytest.approx(1555.2)  # A100 40GB
    assert system.theoretical_bandwidth_gbps(None, 5120) is None


def test_torch_facts_come_from_the_given_module():
    torch = SimpleNamespace(
        __version__="2.5.1+cu124",
        version=SimpleNamespace(cuda="12.4"),
        backends=SimpleNamespace(cudnn=SimpleNamespace(version=lambda: 90100)),
    )
    versions = system.package_versions(torch)
    assert (versions["torch"], versions["cuda"], versions["cudnn"]) == ("2.5.1+cu124", "12.4", 90100)
    assert system.package_versions(None)["cuda"] is None


def test_collect_system_info_on_this_machine():
    info = system.collect_system_info()
    assert json.loads(json.dumps(info)) == info
    cpu = info["cpu"]
    assert cpu["logical_cores"] == psutil.cpu_count(logical=True)
    assert cpu["physical_cores"] == psutil.cpu_count(logical=False)
    assert info["memory"]["total_bytes"] == psutil.virtual_memory().total
    assert cpu["model"] and cpu["arch"]
    if not info["gpus"]:
        assert isinstance(info["gpu_error"], str) and info["gpu_error"]


def test_collecting_does_not_import_torch():
    code = (
        "import sys, lmprof.collect.system as s, lmprof.collect.environment as e;"
        "s.collect_system_info(); a = e.snapshot_load();"
        "e.describe_environment(a, e.snapshot_load(), 2);"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _snapshot(wall_s, busy_cpu_s, process_cpu_s, load_1m=0.2) -> LoadSnapshot:
    return LoadSnapshot(wall_s, busy_cpu_s, process_cpu_s, load_avg=(load_1m, 0.1, 0.1))


def test_busy_machine_is_flagged():
    # 10 s on 2 CPUs = 20 CPU-s; 15 busy of which 6 ours -> others used 9/20.
    start, end = _snapshot(100.0, 50.0, 1.0, load_1m=1.9), _snapshot(110.0, 65.0, 7.0)
    described = describe_environment(start, end, 2, environ={})
    assert described["other_processes_cpu_share"] == pytest.approx(0.45)
    assert described["busy_warning"] == (
        "other processes used 45% of the 2 CPUs during the run (load average 1.9 at start): "
        "timings may be inflated; rerun on an idle machine"
    )
    assert described["load_avg_start"] == [1.9, 0.1, 0.1]


def test_idle_machine_has_no_warning():
    start, end = _snapshot(100.0, 50.0, 1.0), _snapshot(110.0, 57.2, 8.0)
    described = describe_environment(start, end, 2, environ={})
    assert described["other_processes_cpu_share"] == pytest.approx(0.01)
    assert described["busy_warning"] is None


def test_high_load_at_start_is_flagged_even_when_the_window_looks_quiet():
    start, end = _snapshot(100.0, 50.0, 1.0, load_1m=3.2), _snapshot(101.0, 51.0, 2.0)
    warning = describe_environment(start, end, 2, environ={})["busy_warning"]
    assert warning.startswith("the machine was busy when the run started (load average 3.2 on 2 CPUs)")


def test_share_is_clamped():
    # Tick-granular counters can make own time exceed the system-wide delta.
    start, end = _snapshot(0.0, 0.0, 0.0), _snapshot(0.1, 0.0, 0.02)
    assert environment.other_processes_cpu_share(start, end, 2) == 0.0
    assert environment.other_processes_cpu_share(start, _snapshot(1.0, 9.0, 0.0), 2) == 1.0


def test_thread_env_and_torch_threads():
    environ = {"OMP_NUM_THREADS": "4", "OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "1", "HOME": "/root"}
    torch = SimpleNamespace(get_num_threads=lambda: 4, get_num_interop_threads=lambda: 1)
    snap = _snapshot(0.0, 0.0, 0.0)
    described = describe_environment(snap, snap, 2, environ=environ, torch_module=torch)
    assert described["thread_env"] == {
        "KMP_BLOCKTIME": "1",
        "OMP_NUM_THREADS": "4",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    assert (described["torch_threads"], described["torch_interop_threads"]) == (4, 1)


def test_snapshot_load_uses_the_injected_clock():
    snap = environment.snapshot_load(clock=lambda: 42.0)
    assert snap.wall_s == 42.0
    assert snap.process_cpu_s > 0 and snap.busy_cpu_s > 0 and len(snap.load_avg) == 3


FIXED_SYSTEM = {
    "hostname": "gpu-box",
    "os": "Linux-6.8.0-x86_64-with-glibc2.39",
    "python": "3.11.7",
    "packages": {
        "torch": "2.5.1+cu124",
        "transformers": "5.24.0",
        "safetensors": "0.8.0",
        "tokenizers": None,
        "lmprof": "0.1.0",
        "cuda": "12.4",
        "cudnn": 90100,
    },
    "cpu": {
        "model": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
        "arch": "x86_64",
        "base_clock_mhz": 2700.0,
        "max_clock_mhz": 3800.0,
        "physical_cores": 1,
        "logical_cores": 2,
        "smt": True,
        "cache_bytes": {"L1d": 49152, "L1i": 32768, "L2": 2097152, "L3": 110100480},
        "isa": {
            "avx2": True,
            "fma": True,
            "f16c": True,
            "avx512f": True,
            "avx512_bf16": True,
            "avx512_vnni": True,
            "avx_vnni": True,
            "amx_tile": True,
            "amx_bf16": True,
            "amx_int8": True,
            "neon": False,
            "sve": False,
        },  # fmt: skip
        "native_bf16": True,
    },
    "memory": {"total_bytes": 25_125_584_896, "available_bytes": 20_401_094_656},
    "gpus": [
        {
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "memory_total_bytes": 85_520_809_984,
            "driver": "550.54.15",
            "compute_capability": "9.0",
            "sm_clock_max_mhz": 1980,
            "memory_clock_max_mhz": 2619,
            "memory_bus_width_bits": 5120,
            "theoretical_bandwidth_gbps": 3352.32,
            "power_limit_w": 700.0,
        }
    ],
    "gpu_error": None,
}

GOLDEN_PANEL = """\
╭─ System ─────────────────────────────────────────────────────────────────────────────────────────╮
│ Host      gpu-box · Linux-6.8.0-x86_64-with-glibc2.39 · Python 3.11.7                            │
│ CPU       Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (x86_64)                                 │
│ Clocks    base 2700 MHz · max 3800 MHz                                                           │
│ Cores     1 core / 2 threads (SMT)                                                               │
│ Caches    L1d 48 KiB · L1i 32 KiB · L2 2 MiB · L3 105 MiB                                        │
│ ISA       AVX2 FMA F16C AVX-512 AVX512-BF16 AVX512-VNNI AVX-VNNI AMX AMX-BF16 AMX-INT8           │
│ bf16      native                                                                                 │
│ Memory    23.4 GiB total · 19.0 GiB free                                                         │
│ GPU 0     NVIDIA H100 80GB HBM3 · 79.6 GiB · compute 9.0 · driver 550.54.15                      │
│           SM 1980 MHz · memory 2619 MHz × 5120-bit · ≤ 3352 GB/s (datasheet) · 700 W limit       │
│ Packages  torch 2.5.1+cu124 · transformers 5.24.0 · safetensors 0.8.0 · tokenizers not installed │
│           · lmprof 0.1.0 · CUDA 12.4 · cuDNN 90100                                               │
╰──────────────────────────────────────────────────────────────────────────────────────────────────╯
"""


def _render_text(renderable) -> str:
    console = Console(width=100, color_system=None, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_render_system_golden():
    assert _render_text(render_system(FIXED_SYSTEM)) == GOLDEN_PANEL


def test_render_system_without_gpu_says_why():
    no_gpu = {**FIXED_SYSTEM, "gpus": [], "gpu_error": "NVML unavailable: x"}
    no_gpu["cpu"] = {**FIXED_SYSTEM["cpu"], "native_bf16": False}
    text = _render_text(render_system(no_gpu))
    assert "│ GPU       none: NVML unavailable: x " in text
    assert "│ bf16      not native (converted through fp32) " in text


def test_system_line_golden():
    assert system_line(FIXED_SYSTEM) == (
        "Intel Xeon Platinum 8481C · 1 core / 2 threads (SMT) · AVX2 AVX-512 AMX BF16 · 23.4 GiB"
        " · 1× NVIDIA H100 80GB HBM3 · torch 2.5.1+cu124 (CUDA 12.4) · transformers 5.24.0"
    )
    no_gpu = {**FIXED_SYSTEM, "gpus": [], "packages": {"torch": "2.13.0", "transformers": None}}
    assert system_line(no_gpu).endswith("· 23.4 GiB · no GPU · torch 2.13.0")
