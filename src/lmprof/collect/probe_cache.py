"""The hardware probes' cache: one file per machine, reused until `--refresh`.

A probe result belongs to the CPU, its core count, the torch build (its kernels) and the
thread count it ran at, plus the GPUs where there are any; the file name hashes those.
A cached file is reused only when it was measured with the same probe sizes. Files are
written atomically, so a killed measurement never leaves half a cache entry.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lmprof.collect.hardware_probes import measure_hardware, probe_devices, sizes_for_device
from lmprof.models import cache_root
from lmprof.record.files import write_atomic
from lmprof.record.probes import HardwareProbes, ProbeSizes

# 2: the CPU read probe from huge pages joined the set; 3: the native matvec from huge pages
CACHE_FORMAT = 3


def machine_key(threads: int, devices: list[str] | None = None) -> dict[str, Any]:
    """What a probe result depends on: CPU model and cores, torch, threads, GPU names."""
    import torch

    from lmprof.collect.system import collect_cpu

    cpu = collect_cpu()
    devices = devices or probe_devices()
    gpus = [torch.cuda.get_device_name(d) for d in devices if d.startswith("cuda")]
    return {
        "cpu_model": cpu.get("model"),
        "logical_cores": cpu.get("logical_cores"),
        "torch": str(torch.__version__),
        "threads": threads,
        "gpus": gpus,
    }


def cache_path(key: dict[str, Any], root: Path | None = None) -> Path:
    text = json.dumps(key, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(key.get("cpu_model") or "cpu")).strip("-").lower()[:40]
    return (root or cache_root()) / "hardware" / f"{slug}-{key.get('threads')}t-{digest}.json"


def load_cached(path: Path, key: dict[str, Any], sizes: dict[str, dict[str, Any]]) -> HardwareProbes | None:
    """The cached probes at `path` when they match `key` and `sizes`; None otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or data.get("key") != key:
        return None
    probes = HardwareProbes.from_dict(data.get("probes") or {})
    return probes if probes.sizes == sizes else None


def save_probes(path: Path, key: dict[str, Any], probes: HardwareProbes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": CACHE_FORMAT, "key": key, "probes": probes.to_dict()}, indent=1)
    return write_atomic(path, text + "\n")


def measured_hardware(
    *,
    threads: int | None = None,
    refresh: bool = False,
    sizes: dict[str, ProbeSizes] | None = None,
    devices: list[str] | None = None,
) -> tuple[HardwareProbes, Path, bool]:
    """(probes, cache file, whether they came from the cache): cached ones unless `refresh`."""
    import torch

    devices = devices or probe_devices()
    threads = threads or torch.get_num_threads()
    chosen = {d: (sizes or {}).get(d) or sizes_for_device(d) for d in devices}
    size_dicts = {d: asdict(s) for d, s in chosen.items()}
    key = machine_key(threads, devices)
    path = cache_path(key)
    if not refresh:
        cached = load_cached(path, key, size_dicts)
        if cached is not None:
            return cached, path, True
    probes = measure_hardware(devices, chosen, threads)
    save_probes(path, key, probes)
    return probes, path, False
