"""Facts about the machine a run happened on: CPU, caches, ISA, memory, GPUs, package versions.

`collect_system_info()` gathers into one JSON-ready dict (the Run's `system`) what a user
would otherwise dig out of /proc/cpuinfo, sysfs and nvidia-smi. A value that cannot be
known is None, never a guess. Parsing takes raw text and paths so it is tested on fixtures.

Nothing here imports torch: the CLI times torch's import, so torch facts are read from a
module the caller already imported (`sys.modules` or an explicit argument), or else from
torch's installed files as text.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import platform
import re
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

PROC_CPUINFO = Path("/proc/cpuinfo")
SYS_CPU0 = Path("/sys/devices/system/cpu/cpu0")

PACKAGES = ("torch", "transformers", "safetensors", "tokenizers", "lmprof")

# Flag spellings with underscores removed: /proc/cpuinfo writes "avx512_bf16" where
# py-cpuinfo's CPUID decoder writes "avx512bf16". x86 names come from "flags", ARM
# ones from "Features" ("asimd" is aarch64's NEON, "neon" is 32-bit ARM's).
ISA_FLAGS: dict[str, tuple[str, ...]] = {
    "avx2": ("avx2",),
    "fma": ("fma",),
    "f16c": ("f16c",),
    "avx512f": ("avx512f",),
    "avx512_bf16": ("avx512bf16",),
    "avx512_vnni": ("avx512vnni",),
    "avx_vnni": ("avxvnni",),
    "amx_tile": ("amxtile",),
    "amx_bf16": ("amxbf16",),
    "amx_int8": ("amxint8",),
    "neon": ("asimd", "neon"),
    "sve": ("sve",),
}
# ARM FEAT_BF16 (BFDOT/BFMMLA); x86 bf16 arithmetic is avx512_bf16 or amx_bf16.
ARM_BF16_FLAG = "bf16"

# Arm Ltd (implementer 0x41) part numbers, as util-linux's lscpu names them; aarch64
# kernels print no "model name", so without this the model would be two hex ids.
ARM_PARTS = {
    "0xd03": "Cortex-A53",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd40": "Neoverse-V1",
    "0xd49": "Neoverse-N2",
    "0xd4f": "Neoverse-V2",
}

CACHE_NAMES = {
    ("1", "Data"): "L1d",
    ("1", "Instruction"): "L1i",
    ("2", "Unified"): "L2",
    ("3", "Unified"): "L3",
}
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]?)(?:i?B)?\s*$", re.IGNORECASE)
_MODEL_GHZ_RE = re.compile(r"@\s*(\d+(?:\.\d+)?)\s*GHz", re.IGNORECASE)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def parse_cpuinfo(text: str) -> dict[str, str]:
    """Fields of /proc/cpuinfo, keys lower-cased; the first occurrence of a key wins.

    Per-core blocks repeat the same model and flags, and 32-bit ARM kernels append
    global fields ("Hardware") after them, so one flat pass over all lines is enough.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def cpu_flags(fields: dict[str, str]) -> set[str]:
    """Normalized ISA flags (lower-case, no underscores) from x86 "flags" or ARM "features"."""
    raw = fields.get("flags") or fields.get("features") or ""
    return {flag.lower().replace("_", "") for flag in raw.split()}


def isa_from_flags(flags: Iterable[str]) -> tuple[dict[str, bool], bool]:
    """(isa dict, native_bf16) from normalized flags."""
    flags = {flag.lower().replace("_", "") for flag in flags}
    isa = {name: any(spelling in flags for spelling in spellings) for name, spellings in ISA_FLAGS.items()}
    native_bf16 = isa["avx512_bf16"] or isa["amx_bf16"] or ARM_BF16_FLAG in flags
    return isa, native_bf16


def cpu_model(fields: dict[str, str]) -> str | None:
    """Marketing name where the kernel prints one, else the ARM part name, else raw ids."""
    if fields.get("model name"):
        return " ".join(fields["model name"].split())
    implementer, part = fields.get("cpu implementer"), fields.get("cpu part")
    if implementer and part:
        if implementer.lower() == "0x41" and part.lower() in ARM_PARTS:
            return ARM_PARTS[part.lower()]
        return f"ARM implementer {implementer} part {part}"
    return fields.get("cpu") or None  # POWER kernels name the chip in "cpu"


def parse_size_bytes(text: str) -> int | None:
    """Size strings as sysfs and OS tools write them ("48K", "32768K", "1 MiB") -> bytes."""
    match = _SIZE_RE.match(text)
    if not match:
        return None
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def read_caches(cache_dir: Path) -> dict[str, int | None]:
    """Per-instance cache sizes from sysfs `cpu0/cache/index*/`.

    sysfs reports each cache instance's own size, so a shared L3 is the size one core
    sees (the slice it shares with its neighbours), not the sum over the socket.
    """
    caches: dict[str, int | None] = dict.fromkeys(("L1d", "L1i", "L2", "L3"))
    for index in sorted(cache_dir.glob("index*")):
        name = CACHE_NAMES.get((_read_text(index / "level") or "", _read_text(index / "type") or ""))
        size = _read_text(index / "size")
        if name and size:
            caches[name] = parse_size_bytes(size)
    return caches


def read_clocks_mhz(cpufreq_dir: Path, fields: dict[str, str]) -> tuple[float | None, float | None]:
    """(base, max) CPU clock in MHz; cpufreq files are in kHz."""
    base_khz = _read_text(cpufreq_dir / "base_frequency")  # only intel_pstate writes it
    max_khz = _read_text(cpufreq_dir / "cpuinfo_max_freq")
    base_mhz = float(base_khz) / 1000 if base_khz else None
    max_mhz = float(max_khz) / 1000 if max_khz else None
    if base_mhz is None:
        # Intel model names carry the nominal clock ("... CPU @ 2.10GHz").
        match = _MODEL_GHZ_RE.search(fields.get("model name", ""))
        if match:
            base_mhz = float(match.group(1)) * 1000
    if base_mhz is None and not cpufreq_dir.exists() and fields.get("cpu mhz"):
        # With no cpufreq driver (VMs, most containers) the kernel's "cpu MHz" is the fixed
        # nominal clock; with one it is an instantaneous scaled clock, not a base clock.
        base_mhz = float(fields["cpu mhz"])
    return base_mhz, max_mhz


def _cpu_from_py_cpuinfo() -> tuple[dict[str, str], set[str], float | None]:
    """Model, flags and advertised clock where there is no /proc/cpuinfo (macOS, Windows)."""
    try:
        import cpuinfo

        info = cpuinfo.get_cpu_info()
    # py-cpuinfo shells out to OS tools and can fail in many ways; no CPU facts beats a crash.
    except Exception:
        return {}, set(), None
    hz = info.get("hz_advertised")
    base_mhz = hz[0] / 1e6 if isinstance(hz, (list, tuple)) and hz and hz[0] else None
    fields = {"model name": info["brand_raw"]} if info.get("brand_raw") else {}
    return fields, {str(flag) for flag in info.get("flags", [])}, base_mhz


def collect_cpu(cpuinfo_path: Path = PROC_CPUINFO, cpu_dir: Path = SYS_CPU0) -> dict[str, Any]:
    text = _read_text(cpuinfo_path)
    if text:
        fields = parse_cpuinfo(text)
        flags = cpu_flags(fields)
        base_mhz, max_mhz = read_clocks_mhz(cpu_dir / "cpufreq", fields)
    else:
        fields, flags, base_mhz = _cpu_from_py_cpuinfo()
        max_mhz = None
    isa, native_bf16 = isa_from_flags(flags)
    logical = psutil.cpu_count(logical=True) or 0
    physical = psutil.cpu_count(logical=False)
    return {
        "model": cpu_model(fields) or "unknown",
        "arch": platform.machine(),
        "base_clock_mhz": base_mhz,
        "max_clock_mhz": max_mhz,
        "physical_cores": physical,
        "logical_cores": logical,
        "smt": logical > physical if physical else None,
        "cache_bytes": read_caches(cpu_dir / "cache"),
        "isa": isa,
        "native_bf16": native_bf16,
    }


def theoretical_bandwidth_gbps(memory_clock_mhz: float | None, bus_width_bits: int | None) -> float | None:
    """Datasheet-style DRAM bandwidth ceiling from NVML's clocks: two transfers per clock
    across the bus. It is what the card could move at best, not a measurement."""
    if not memory_clock_mhz or not bus_width_bits:
        return None
    return 2 * memory_clock_mhz * 1e6 * bus_width_bits / 8 / 1e9


def _nvml_value(nvml: ModuleType, call, *args):
    """One NVML query, None where this GPU or driver does not support it."""
    try:
        return call(*args)
    except nvml.NVMLError:
        return None


def _as_str(value) -> str | None:
    # Older nvidia-ml-py returns bytes, newer returns str.
    return value.decode() if isinstance(value, bytes) else value


def _gpu_facts(nvml: ModuleType, index: int, driver: str | None) -> dict[str, Any]:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = _nvml_value(nvml, nvml.nvmlDeviceGetMemoryInfo, handle)
    capability = _nvml_value(nvml, nvml.nvmlDeviceGetCudaComputeCapability, handle)
    memory_clock_mhz = _nvml_value(nvml, nvml.nvmlDeviceGetMaxClockInfo, handle, nvml.NVML_CLOCK_MEM)
    bus_width_bits = _nvml_value(nvml, nvml.nvmlDeviceGetMemoryBusWidth, handle)
    power_limit_mw = _nvml_value(nvml, nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
    return {
        "index": index,
        "name": _as_str(_nvml_value(nvml, nvml.nvmlDeviceGetName, handle)),
        "memory_total_bytes": int(memory.total) if memory is not None else None,
        "driver": driver,
        "compute_capability": f"{capability[0]}.{capability[1]}" if capability else None,
        "sm_clock_max_mhz": _nvml_value(nvml, nvml.nvmlDeviceGetMaxClockInfo, handle, nvml.NVML_CLOCK_SM),
        "memory_clock_max_mhz": memory_clock_mhz,
        "memory_bus_width_bits": bus_width_bits,
        "theoretical_bandwidth_gbps": theoretical_bandwidth_gbps(memory_clock_mhz, bus_width_bits),
        "power_limit_w": power_limit_mw / 1000 if power_limit_mw is not None else None,
    }


def collect_gpus(nvml: ModuleType | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """(GPUs as NVML sees them, why there are none). `nvml` is injectable for tests."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError as error:
            return [], f"nvidia-ml-py is not installed ({error})"
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as error:
        return [], f"NVML unavailable (no NVIDIA driver or GPU): {error}"
    try:
        driver = _as_str(_nvml_value(nvml, nvml.nvmlSystemGetDriverVersion))
        gpus = [_gpu_facts(nvml, index, driver) for index in range(nvml.nvmlDeviceGetCount())]
    except nvml.NVMLError as error:
        return [], f"NVML query failed: {error}"
    finally:
        _nvml_value(nvml, nvml.nvmlShutdown)
    return gpus, None if gpus else "NVML reports no GPU"


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_torch_build() -> dict[str, Any]:
    """torch's version and CUDA build as its installed `torch/version.py` states them, read as
    text (importing torch costs seconds and is what `lmprof sysinfo` and `show` avoid), and the
    cuDNN of the nvidia-cudnn wheel a CUDA torch from PyPI loads. Empty where torch is absent."""
    spec = importlib.util.find_spec("torch")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return {}
    facts: dict[str, Any] = {}
    version_file = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        tree = ast.parse(version_file.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return facts
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            if target.id == "__version__":
                facts["torch"] = value.value
            elif target.id == "cuda":
                facts["cuda"] = value.value
    cudnn = next(filter(None, map(_installed_version, ("nvidia-cudnn-cu13", "nvidia-cudnn-cu12"))), None)
    if facts.get("cuda") and cudnn:
        facts["cudnn"] = cudnn
    return facts


def package_versions(torch_module: ModuleType | None = None) -> dict[str, Any]:
    """Versions of the packages that shape inference speed. CUDA and cuDNN come from an
    imported torch where there is one, else from torch's installed files (never an import)."""
    versions: dict[str, Any] = {name: _installed_version(name) for name in PACKAGES}
    if versions["lmprof"] is None:  # running from a source tree, not installed
        versions["lmprof"] = getattr(sys.modules.get("lmprof"), "__version__", None)
    versions["cuda"] = versions["cudnn"] = None
    if torch_module is None:
        versions.update(installed_torch_build())
    else:
        # The imported torch wins: a source build on sys.path can differ from the installed one.
        versions["torch"] = str(torch_module.__version__)
        versions["cuda"] = torch_module.version.cuda
        try:
            versions["cudnn"] = torch_module.backends.cudnn.version()
        except (RuntimeError, AttributeError):  # cuDNN missing or mismatched with this torch
            versions["cudnn"] = None
    return versions


def collect_system_info(torch_module: ModuleType | None = None) -> dict[str, Any]:
    """Everything above in one JSON-serializable dict; torch facts only if torch is imported."""
    if torch_module is None:
        torch_module = sys.modules.get("torch")
    memory = psutil.virtual_memory()
    gpus, gpu_error = collect_gpus()
    return {
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": package_versions(torch_module),
        "cpu": collect_cpu(),
        "memory": {"total_bytes": int(memory.total), "available_bytes": int(memory.available)},
        "gpus": gpus,
        "gpu_error": gpu_error,
    }
