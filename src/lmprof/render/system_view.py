"""The machine behind a run, from the Run's `system` dict: a panel for `lmprof sysinfo`
and one line for run summaries. Takes the saved dict only; measures nothing."""

from __future__ import annotations

import re
from typing import Any

from rich.console import RenderableType
from rich.panel import Panel
from rich.table import Table

KIB = 1024
MIB = 1024**2
GIB = 1024**3

# The extensions that pick inference kernels, in the order they matter to a reader.
ISA_LABELS = {
    "avx2": "AVX2",
    "fma": "FMA",
    "f16c": "F16C",
    "avx512f": "AVX-512",
    "avx512_bf16": "AVX512-BF16",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "amx_tile": "AMX",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
    "neon": "NEON",
    "sve": "SVE",
}
# The one-line summary keeps only the tiers that change which kernels run.
ISA_SHORT = {"avx2": "AVX2", "avx512f": "AVX-512", "amx_tile": "AMX", "neon": "NEON", "sve": "SVE"}

_TRADEMARKS_RE = re.compile(r"\((R|TM)\)", re.IGNORECASE)
_NOMINAL_CLOCK_RE = re.compile(r"\s*(CPU\s*)?@\s*[\d.]+\s*GHz", re.IGNORECASE)


def format_cache(size_bytes: int) -> str:
    # Whole MiB reads better for L2/L3; odd sizes (Intel's 1280K L2) stay exact in KiB.
    if size_bytes >= MIB and size_bytes % MIB == 0:
        return f"{size_bytes // MIB} MiB"
    return f"{size_bytes // KIB} KiB"


def format_gib(size_bytes: int) -> str:
    return f"{size_bytes / GIB:.1f} GiB"


def short_cpu_model(model: str) -> str:
    """Without trademarks and nominal clock: "Intel(R) Xeon(R) 8480+ CPU @ 2.00GHz" -> "Intel Xeon 8480+"."""
    model = _NOMINAL_CLOCK_RE.sub("", _TRADEMARKS_RE.sub("", model))
    return " ".join(model.split())


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def cores_text(cpu: dict[str, Any]) -> str:
    logical = cpu.get("logical_cores") or 0
    physical = cpu.get("physical_cores")
    if physical is None:
        return f"{_plural(logical, 'thread')} (physical cores unknown)"
    text = f"{_plural(physical, 'core')} / {_plural(logical, 'thread')}"
    return text + (" (SMT)" if cpu.get("smt") else "")


def _clock_text(cpu: dict[str, Any]) -> str:
    parts = [
        f"{label} {cpu[key]:.0f} MHz"
        for label, key in (("base", "base_clock_mhz"), ("max", "max_clock_mhz"))
        if cpu.get(key)
    ]
    return " · ".join(parts) or "unknown"


def _caches_text(cpu: dict[str, Any]) -> str:
    caches = cpu.get("cache_bytes") or {}
    parts = [f"{name} {format_cache(size)}" for name, size in caches.items() if size]
    return " · ".join(parts) or "unknown"


def _isa_text(cpu: dict[str, Any]) -> str:
    isa = cpu.get("isa") or {}
    return " ".join(label for key, label in ISA_LABELS.items() if isa.get(key)) or "none of note"


def _gpu_text(gpu: dict[str, Any]) -> str:
    facts = [gpu.get("name") or "unknown GPU"]
    if gpu.get("memory_total_bytes"):
        facts.append(format_gib(gpu["memory_total_bytes"]))
    if gpu.get("compute_capability"):
        facts.append(f"compute {gpu['compute_capability']}")
    if gpu.get("driver"):
        facts.append(f"driver {gpu['driver']}")
    limits = []
    if gpu.get("sm_clock_max_mhz"):
        limits.append(f"SM {gpu['sm_clock_max_mhz']} MHz")
    if gpu.get("memory_clock_max_mhz") and gpu.get("memory_bus_width_bits"):
        limits.append(f"memory {gpu['memory_clock_max_mhz']} MHz × {gpu['memory_bus_width_bits']}-bit")
    if gpu.get("theoretical_bandwidth_gbps"):
        limits.append(f"≤ {gpu['theoretical_bandwidth_gbps']:.0f} GB/s (datasheet)")
    if gpu.get("power_limit_w"):
        limits.append(f"{gpu['power_limit_w']:.0f} W limit")
    return " · ".join(facts) + ("\n" + " · ".join(limits) if limits else "")


def _packages_text(packages: dict[str, Any]) -> str:
    parts = []
    for name in ("torch", "transformers", "safetensors", "tokenizers", "lmprof"):
        version = packages.get(name)
        parts.append(f"{name} {version}" if version else f"{name} not installed")
    if packages.get("cuda"):
        parts.append(f"CUDA {packages['cuda']}")
    if packages.get("cudnn"):
        parts.append(f"cuDNN {packages['cudnn']}")
    return " · ".join(parts)


def render_system(system: dict[str, Any]) -> RenderableType:
    """A two-column panel: what the CPU, memory and GPUs are, and which packages ran."""
    cpu = system.get("cpu") or {}
    memory = system.get("memory") or {}
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("Host", f"{system.get('hostname')} · {system.get('os')} · Python {system.get('python')}")
    grid.add_row("CPU", f"{cpu.get('model')} ({cpu.get('arch')})")
    grid.add_row("Clocks", _clock_text(cpu))
    grid.add_row("Cores", cores_text(cpu))
    grid.add_row("Caches", _caches_text(cpu))
    grid.add_row("ISA", _isa_text(cpu))
    # Native bf16 arithmetic is what makes bf16 the fast default dtype on a CPU.
    grid.add_row("bf16", "native" if cpu.get("native_bf16") else "not native (converted through fp32)")
    if memory:
        total, free = format_gib(memory["total_bytes"]), format_gib(memory["available_bytes"])
        grid.add_row("Memory", f"{total} total · {free} free")
    gpus = system.get("gpus") or []
    for gpu in gpus:
        grid.add_row(f"GPU {gpu.get('index')}", _gpu_text(gpu))
    if not gpus:
        grid.add_row("GPU", f"none: {system.get('gpu_error') or 'no GPU reported'}")
    grid.add_row("Packages", _packages_text(system.get("packages") or {}))
    return Panel(grid, title="System", title_align="left")


def _isa_short(cpu: dict[str, Any]) -> str:
    isa = cpu.get("isa") or {}
    tiers = [label for key, label in ISA_SHORT.items() if isa.get(key)]
    if cpu.get("native_bf16"):
        tiers.append("BF16")
    return " ".join(tiers)


def _gpus_short(gpus: list[dict[str, Any]]) -> str:
    if not gpus:
        return "no GPU"
    counts: dict[str, int] = {}
    for gpu in gpus:
        name = gpu.get("name") or "unknown GPU"
        counts[name] = counts.get(name, 0) + 1
    return " + ".join(f"{count}× {name}" for name, count in counts.items())


def system_line(system: dict[str, Any]) -> str:
    """One line for run summaries: CPU, cores, ISA tier, memory, GPUs, torch/transformers."""
    cpu = system.get("cpu") or {}
    packages = system.get("packages") or {}
    parts = [short_cpu_model(cpu.get("model") or "unknown CPU"), cores_text(cpu)]
    if _isa_short(cpu):
        parts.append(_isa_short(cpu))
    if (system.get("memory") or {}).get("total_bytes"):
        parts.append(format_gib(system["memory"]["total_bytes"]))
    parts.append(_gpus_short(system.get("gpus") or []))
    if packages.get("torch"):
        cuda = f" (CUDA {packages['cuda']})" if packages.get("cuda") else ""
        parts.append(f"torch {packages['torch']}{cuda}")
    if packages.get("transformers"):
        parts.append(f"transformers {packages['transformers']}")
    return " · ".join(parts)
