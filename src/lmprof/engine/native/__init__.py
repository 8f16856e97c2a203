"""Build and load lmprof's native decode kernels (decode_step.cpp over kernels.h, matvec.h, simd.h), once per machine.

The C++ source ships with the package and is compiled on first use with PyTorch's own
extension tooling (torch.utils.cpp_extension: the system C++ compiler and ninja), for this
CPU (-march=native), then cached under `cache_root()/native/<key>` (or $LMPROF_NATIVE_BUILD). The key covers the
source, torch's version, the flags and the CPU, so a changed source, a torch upgrade or a
different processor gets its own build, and a cached build loads in milliseconds.

Ops land in `torch.ops.lmprof_native`: `decode_step` (a whole decode step), `linear` (its
matrix-vector product alone, for probes and kernel benchmarks), `argmax_rows` (the prefill's
greedy pick), `pick_greedy` (a decode step's: argmax, padding and the eos check), and
`set_prefetch` and `prefetch` (the per-CPU prefetch distances of narrow and wide tiles, set at
load from tuning.py).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from lmprof.errors import UsageError

SOURCE = Path(__file__).with_name("decode_step.cpp")
# -fno-trapping-math: without it GCC 12 vectorizes no loop with a float comparison or a clamp
# in it (fast_exp's): SiLU over [8, 1536] took 63 us a layer, 26 us with it. It changes no
# result, only lets the compiler ignore floating-point exception flags, which nothing reads.
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-trapping-math", "-Wno-unknown-pragmas"]
# Linking libgomp by its soname reuses the copy torch already loaded: one OpenMP thread pool.
LDFLAGS = ["-fopenmp"]


class NativeKernelsUnavailable(UsageError):
    """The native kernels cannot be built or loaded here (no compiler, failed build, not CPU)."""


def _cpu_fingerprint() -> str:
    """The CPU's model and flags: a -march=native build is only valid on the same kind of CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        fields = [line for line in text.splitlines() if line.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(fields)))
    except OSError:
        return platform.processor() or platform.machine()


def cpu_has_w8a8() -> bool:
    """Whether this CPU has what the W8A8 products need: AVX512-VNNI with AVX512BW, or AVX2
    (kernels.h has a form for each; read off /proc/cpuinfo, so Linux only)."""
    flags = set(_cpu_fingerprint().replace("\n", " ").split())
    return {"avx512_vnni", "avx512bw"} <= flags or "avx2" in flags


def build_key() -> str:
    import torch

    digest = hashlib.sha256()
    sources = [SOURCE, *sorted(SOURCE.parent.glob("*.h"))]
    for part in [
        *(path.read_bytes() for path in sources),
        torch.__version__.encode(),
        " ".join(CFLAGS + LDFLAGS).encode(),
    ]:
        digest.update(part)
    digest.update(_cpu_fingerprint().encode())
    digest.update(sys.version.encode())
    return digest.hexdigest()[:16]


def build_folder(key: str | None = None) -> Path:
    """$LMPROF_NATIVE_BUILD/<key> if set, else cache_root()/native/<key> (key: build_key())."""
    from lmprof.models.cache import cache_root

    explicit = os.environ.get("LMPROF_NATIVE_BUILD")
    root = Path(explicit).expanduser() if explicit else cache_root() / "native"
    return root / (key or build_key())


def _missing_tools() -> list[str]:
    compiler = os.environ.get("CXX", "c++")
    missing = [] if shutil.which(compiler) else [f"a C++ compiler ({compiler})"]
    if shutil.which("ninja") is None:
        missing.append("ninja")
    return missing


_LOADED: dict[str, Any] = {}


def is_built(folder: Path | None = None) -> bool:
    folder = folder or build_folder()
    return any(folder.glob("*.so")) if folder.is_dir() else False


def load_native_ops() -> Any:
    """torch.ops.lmprof_native, compiling the extension first if this machine has no build yet.

    Raises NativeKernelsUnavailable with one line saying what is missing or what failed.
    """
    if "ops" in _LOADED:
        return _LOADED["ops"]
    import torch
    from torch.utils import cpp_extension

    missing = _missing_tools()
    if missing:
        raise NativeKernelsUnavailable(
            f"lmprof's native decode kernels need {' and '.join(missing)} to build once "
            "(Debian/Ubuntu: apt-get install g++ ninja-build); or run without --native"
        )
    key = build_key()  # hashes the sources and reads /proc/cpuinfo: once per load
    folder = build_folder(key)
    folder.mkdir(parents=True, exist_ok=True)
    fresh = not is_built(folder)
    start_s = time.perf_counter()
    if fresh:
        print(
            "lmprof: compiling the native decode kernels for this CPU (once; 10-60 s)...",
            file=sys.stderr,
            flush=True,
        )
    try:
        cpp_extension.load(
            name=f"lmprof_native_{key}",
            sources=[str(SOURCE)],
            extra_cflags=CFLAGS,
            extra_ldflags=LDFLAGS,
            build_directory=str(folder),
            is_python_module=False,
            verbose=False,
        )
    except (RuntimeError, OSError, ImportError) as error:
        lines = str(error).strip().splitlines() or ["no message"]
        last = next((line.strip() for line in lines if "error:" in line), lines[-1])
        raise NativeKernelsUnavailable(
            f"building lmprof's native decode kernels failed ({last}); the log is in {folder}, "
            "or run without --native"
        ) from error
    if fresh:
        print(
            f"lmprof: native kernels built in {time.perf_counter() - start_s:.0f} s ({folder})",
            file=sys.stderr,
        )
    from lmprof.engine.native.tuning import prefetch_bytes

    ops = torch.ops.lmprof_native
    ops.set_prefetch(*prefetch_bytes())
    _LOADED["ops"] = ops
    return ops
