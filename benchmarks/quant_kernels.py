"""Would int4 weights, or int8 activations, pay on this CPU? A probe, not an engine path.

    python benchmarks/quant_kernels.py [--rounds 10]

Compiles benchmarks/kernels/quant_probe.cpp against the engine's kernels.h (g++, -O3
-march=native) and runs it: one decode step's products of the SmolLM2-135M shapes at batch 1
on one core, streaming from huge pages, as lmprof's int8 weight-only kernel, as an int4
weight-only kernel (two weights a byte, one scale per row: a lower bound on int4's cost) and,
where the CPU has AVX512-VNNI, as W8A8 (activations quantized per row, vpdpbusd). Each
kernel is checked against a double-precision reference before it is timed. The probe's
kernels are written for AVX-512; elsewhere it says it did not compile. The ratios say
whether a quantized engine path would be worth writing; RESULTS.md has the readings.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "benchmarks" / "kernels" / "quant_probe.cpp"
KERNELS = ROOT / "src" / "lmprof" / "engine" / "native"


def _has_avx512() -> bool:
    """Whether /proc/cpuinfo lists avx512f (the probe is written for it); True where unreadable,
    so the compiler gets to say what is missing."""
    try:
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    if not _has_avx512():
        print(
            "quant_kernels: the probe's int4 and int8 kernels are written in AVX-512 intrinsics and "
            "this CPU has no AVX-512; on AVX2 the engine's own kernels are measured by "
            "native_tiles.py and engine_vs_peers.py (W8A8 included)",
            file=sys.stderr,
        )
        return 2
    compiler = shutil.which("g++")
    if compiler is None:
        print("quant_kernels: needs g++ (apt install g++)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        binary = Path(folder) / "quant_probe"
        build = subprocess.run(
            [compiler, "-O3", "-march=native", f"-I{KERNELS}", str(PROBE), "-o", str(binary)],
            capture_output=True,
            text=True,
        )
        if build.returncode != 0:
            print(
                f"quant_kernels: the probe did not compile for this CPU:\n{build.stderr[-2000:]}",
                file=sys.stderr,
            )
            return 1
        return subprocess.run([str(binary), str(args.rounds)]).returncode


if __name__ == "__main__":
    raise SystemExit(main())
