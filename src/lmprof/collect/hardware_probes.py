"""Short hardware probes: the memory bandwidth and matmul throughput this machine reaches.

A batch-1 decode step reads every weight once, so its fastest possible time is weight bytes
over read bandwidth; prefill and batched decode lean on matmul throughput. These probes
measure both with the kernels torch itself runs, because the datasheet number is not what a
shared, thread-limited process gets. Each probe warms up, repeats (stopping early once a
probe has used its time budget) and keeps every repeat's time, so best and median are both
known. Timing uses a host clock on CPU and CUDA events on CUDA. Nothing here prints; what the
probes hand back are the plain records of `lmprof.record.probes`.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.nn.functional as F

from lmprof.clock import cuda_event
from lmprof.collect.system import SYS_CPU0, read_caches
from lmprof.record.probes import HardwareProbes, ProbeResult, ProbeSizes

MIN_REPEATS = 2  # a probe stops early on its time budget, but never with fewer repeats than this
PROBE_DTYPES = ("float32", "bfloat16", "float16")
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sizes_for_device(device: str) -> ProbeSizes:
    """The probe sizes for `device`: a GPU's larger ones, or CPU ones past this machine's
    last-level cache."""
    if device.startswith("cuda"):
        return ProbeSizes.for_cuda()
    return ProbeSizes.for_cpu_cache(last_level_cache_bytes())


def last_level_cache_bytes(cache_dir: Path = SYS_CPU0 / "cache") -> int | None:
    """The largest cache one core sees (its L3 slice, or L2 where there is no L3), bytes."""
    return max((size for size in read_caches(cache_dir).values() if size), default=None)


# --- timing ----------------------------------------------------------------------------------


def op_timer(
    device: str, clock: Callable[[], float] = time.perf_counter
) -> Callable[[Callable[[], Any]], float]:
    """A function that runs `op` once and returns its duration in seconds.

    CUDA: events around the op on the current stream, waited for right away (a probe wants
    each repeat's own time). CPU: the host clock around the op, which returns when done.
    """
    if device.startswith("cuda"):

        def time_cuda(op: Callable[[], Any]) -> float:
            start = cuda_event(device)
            op()
            end = cuda_event(device)
            end.synchronize()
            return start.elapsed_time(end) / 1e3

        return time_cuda

    def time_host(op: Callable[[], Any]) -> float:
        start = clock()
        op()
        return clock() - start

    return time_host


def repeat_op(
    op: Callable[[], Any],
    timer: Callable[[Callable[[], Any]], float],
    sizes: ProbeSizes,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Warm up, then time up to `sizes.repeats` runs, stopping once `max_probe_s` is spent."""
    for _ in range(sizes.warmup):
        timer(op)
    times: list[float] = []
    began = clock()
    while len(times) < sizes.repeats:
        times.append(timer(op))
        if len(times) >= MIN_REPEATS and clock() - began > sizes.max_probe_s:
            break
    return times


# --- the probes ------------------------------------------------------------------------------


def probe_read(device: str, sizes: ProbeSizes, clock: Callable[[], float] = time.perf_counter) -> ProbeResult:
    """A sum over one large fp32 tensor: every byte read once, nothing written back."""
    x = torch.ones(sizes.read_bytes // 4, device=device)
    return _timed_sum(
        ProbeResult("read", "read", device, "float32", [x.numel()], x.numel() * 4, 0), x, sizes, clock
    )


def _timed_sum(
    result: ProbeResult, x: torch.Tensor, sizes: ProbeSizes, clock: Callable[[], float]
) -> ProbeResult:
    """`result` with the repeat times of x.sum() on x's device: a read of every byte of x."""
    device = str(x.device)
    result.times_s = repeat_op(x.sum, op_timer(device, clock), sizes, clock)
    result.timing = _timing(device)
    return result


def _on_huge_pages(
    shape: list[int], fill: Callable[[torch.Tensor], Any], result: ProbeResult
) -> torch.Tensor | None:
    """A float32 tensor of `shape` on 2 MiB transparent huge pages, filled in place by `fill`
    (the first touch, where the kernel maps the pages), or None with `result.skipped` saying
    why (the kernel offers none, or granted none)."""
    from lmprof.engine.huge_pages import HugePagesUnavailable, huge_page_buffer, huge_page_bytes

    try:
        placed = huge_page_buffer(math.prod(shape) * 4).view(torch.float32).view(shape)
    except HugePagesUnavailable as error:
        result.skipped = str(error)
        return None
    fill(placed)
    if huge_page_bytes(placed) == 0:
        result.skipped = "the kernel granted no huge pages (memory too fragmented?)"
        return None
    return placed


def probe_read_huge_pages(sizes: ProbeSizes, clock: Callable[[], float] = time.perf_counter) -> ProbeResult:
    """The read probe over memory on 2 MiB transparent huge pages (CPU): fewer TLB misses and
    prefetcher stops than 4 KiB pages, so often a higher read bandwidth. Skipped, with the
    reason, where the kernel offers no huge pages or granted none."""
    n = sizes.read_bytes // 4
    result = ProbeResult("read_huge_pages", "read", "cpu", "float32", [n], n * 4, 0)
    x = _on_huge_pages([n], lambda t: t.fill_(1.0), result)
    return result if x is None else _timed_sum(result, x, sizes, clock)


def probe_copy(device: str, sizes: ProbeSizes, clock: Callable[[], float] = time.perf_counter) -> ProbeResult:
    """One large tensor copied into another: each byte read once and written once."""
    src = torch.ones(sizes.read_bytes // 4, device=device)
    dst = torch.empty_like(src)
    result = ProbeResult("copy", "copy", device, "float32", [src.numel()], 2 * src.numel() * 4, 0)
    result.times_s = repeat_op(lambda: dst.copy_(src), op_timer(device, clock), sizes, clock)
    result.timing = _timing(device)
    return result


def _matvec_shape(sizes: ProbeSizes, element_bytes: int) -> tuple[int, int]:
    """[out, in] of a matvec probe's weight: `matvec_weight_bytes` of elements, `in` fixed."""
    k = sizes.matvec_in_features
    return max(1, sizes.matvec_weight_bytes // (k * element_bytes)), k


def probe_matvec(
    device: str,
    dtype: str,
    sizes: ProbeSizes,
    column_major: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> ProbeResult:
    """One activation row times a weight, as a batch-1 decode step multiplies.

    Row-major is `F.linear(x, W)` with W stored [out, in] (checkpoints' layout); column-major
    is `x @ Wt` with Wt stored [in, out], which CPU kernels sometimes stream faster.
    """
    torch_dtype = TORCH_DTYPES[dtype]
    elt = torch.tensor([], dtype=torch_dtype).element_size()
    n, k = _matvec_shape(sizes, elt)
    name = "matvec_column_major" if column_major else "matvec"
    result = ProbeResult(
        name, "matvec", device, dtype, [n, k], n * k * elt, 2 * n * k, timing=_timing(device)
    )
    x = torch.randn(1, k, device=device).to(torch_dtype)
    if column_major:
        wt = torch.randn(k, n, device=device).to(torch_dtype)  # [in, out]

        def op() -> Any:
            return x @ wt
    else:
        w = torch.randn(n, k, device=device).to(torch_dtype)  # [out, in]

        def op() -> Any:
            return F.linear(x, w)

    return _run_or_skip(result, op, device, sizes, clock)


def probe_native_matvec(
    dtype: str, sizes: ProbeSizes, clock: Callable[[], float] = time.perf_counter, huge_pages: bool = False
) -> ProbeResult:
    """The product lmprof's native decode step runs (float32, or int8 weight-only with fp32
    scales), on the CPU: the kernel's own streaming rate beside torch's `F.linear`. Builds the
    kernels on first use; skipped, with the reason, where they cannot be built.

    huge_pages (float32): the weight on 2 MiB huge pages, as the engine keeps its weights with
    `huge_pages=True`. Without it the floor's probes read slower than the engine itself did:
    on a 2-core Zen 3, one thread, the engine's fastest decode step streamed 17.7 GB/s against
    a best probe of 15.2 (benchmarks/RESULTS.md, the Zen 3 runs of 2026-12-02)."""
    from lmprof.engine.native import NativeKernelsUnavailable, load_native_ops

    elt = 1 if dtype == "int8" else 4
    n, k = _matvec_shape(sizes, elt)
    name = "matvec_native_huge_pages" if huge_pages else "matvec_native"
    result = ProbeResult(name, "matvec", "cpu", dtype, [n, k], n * k * elt, 2 * n * k, timing="host_clock")
    try:
        ops = load_native_ops()
    except NativeKernelsUnavailable as error:
        result.skipped = str(error)
        return result
    x = torch.randn(1, k)
    if dtype == "int8":
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        scales = torch.rand(n) / 127

        def op() -> Any:
            return ops.linear(x, w, None, scales)
    else:
        w = _on_huge_pages([n, k], torch.Tensor.normal_, result) if huge_pages else torch.randn(n, k)
        if w is None:
            return result

        def op() -> Any:
            return ops.linear(x, w)

    return _run_or_skip(result, op, "cpu", sizes, clock)


def probe_matmul(
    device: str, dtype: str, sizes: ProbeSizes, clock: Callable[[], float] = time.perf_counter
) -> ProbeResult:
    """A square matmul [n, n] @ [n, n]: compute-bound, so GFLOP/s is what it measures.

    Where one product takes longer than `max_matmul_op_s` (a dtype without fast kernels) the
    size is halved until it does not, so the probe stays short and the rate is still measured.
    """
    torch_dtype = TORCH_DTYPES[dtype]
    timer = op_timer(device, clock)
    n = sizes.matmul_n
    try:
        while True:
            a = torch.randn(n, n, device=device).to(torch_dtype)
            b = torch.randn(n, n, device=device).to(torch_dtype)
            first_s = timer(lambda a=a, b=b: a @ b)
            if first_s <= sizes.max_matmul_op_s or n <= 128:
                break
            n //= 2
    except (RuntimeError, NotImplementedError) as error:
        return ProbeResult("matmul", "matmul", device, dtype, [n, n, n], 0, 0, skipped=_first_line(error))
    elt = a.element_size()
    result = ProbeResult(
        "matmul", "matmul", device, dtype, [n, n, n], 3 * n * n * elt, 2 * n**3, timing=_timing(device)
    )
    return _run_or_skip(result, lambda: a @ b, device, sizes, clock)


def probe_host_to_device(
    device: str, pinned: bool, sizes: ProbeSizes, clock: Callable[[], float] = time.perf_counter
) -> ProbeResult:
    """Host memory copied to the GPU, from page-locked (pinned) or ordinary pageable memory.

    Pinned memory is DMA'd directly; pageable memory is first staged through a pinned buffer
    by the driver, which is why loading weights from ordinary tensors is slower.
    """
    name = "h2d_pinned" if pinned else "h2d_pageable"
    n = sizes.h2d_bytes // 4
    src = torch.ones(n)
    if pinned:
        src = src.pin_memory()
    dst = torch.empty(n, device=device)
    result = ProbeResult(name, "host_to_device", device, "float32", [n], n * 4, 0, timing=_timing(device))
    result.times_s = repeat_op(
        lambda: dst.copy_(src, non_blocking=pinned), op_timer(device, clock), sizes, clock
    )
    return result


def _run_or_skip(
    result: ProbeResult, op: Callable[[], Any], device: str, sizes: ProbeSizes, clock: Callable[[], float]
) -> ProbeResult:
    # A dtype without a kernel on this device raises on first use: that is a finding, not a crash.
    try:
        result.times_s = repeat_op(op, op_timer(device, clock), sizes, clock)
    except (RuntimeError, NotImplementedError) as error:
        result.skipped = _first_line(error)
    return result


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _timing(device: str) -> str:
    return "cuda_events" if device.startswith("cuda") else "host_clock"


def probe_device(
    device: str,
    sizes: ProbeSizes | None = None,
    dtypes: tuple[str, ...] = PROBE_DTYPES,
    clock: Callable[[], float] = time.perf_counter,
) -> list[ProbeResult]:
    """Every probe on one device: read (on the CPU also from huge pages), copy, matvec (both layouts) and matmul per dtype,
    on the CPU lmprof's native matvec (fp32 and int8, and fp32 from huge pages), and on CUDA the
    host-to-device copies."""
    sizes = sizes or sizes_for_device(device)
    results = [probe_read(device, sizes, clock)]
    if device == "cpu":
        results.append(probe_read_huge_pages(sizes, clock))
    results.append(probe_copy(device, sizes, clock))
    for dtype in dtypes:
        results.append(probe_matvec(device, dtype, sizes, column_major=False, clock=clock))
        results.append(probe_matvec(device, dtype, sizes, column_major=True, clock=clock))
        results.append(probe_matmul(device, dtype, sizes, clock))
    if device == "cpu":
        results += [probe_native_matvec(dtype, sizes, clock) for dtype in ("float32", "int8")]
        results.append(probe_native_matvec("float32", sizes, clock, huge_pages=True))
    if device.startswith("cuda"):
        results.append(probe_host_to_device(device, pinned=True, sizes=sizes, clock=clock))
        results.append(probe_host_to_device(device, pinned=False, sizes=sizes, clock=clock))
        torch.cuda.empty_cache()
    return results


def probe_devices() -> list[str]:
    """The CPU always (the engine's CPU floor), plus the first GPU where torch sees one."""
    return ["cpu", "cuda:0"] if torch.cuda.is_available() else ["cpu"]


def measure_hardware(
    devices: list[str] | None = None,
    sizes: dict[str, ProbeSizes] | None = None,
    threads: int | None = None,
    dtypes: tuple[str, ...] = PROBE_DTYPES,
    clock: Callable[[], float] = time.perf_counter,
) -> HardwareProbes:
    """Run every probe on `devices` at `threads` torch threads (default: torch's setting)."""
    devices = devices or probe_devices()
    sizes = dict(sizes or {})
    for device in devices:
        sizes.setdefault(device, sizes_for_device(device))
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    load_start = list(psutil.getloadavg())
    began = clock()
    try:
        with torch.inference_mode():
            probes = [p for device in devices for p in probe_device(device, sizes[device], dtypes, clock)]
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
    return HardwareProbes(
        measured_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        threads=used_threads,
        torch_version=str(torch.__version__),
        sizes={device: asdict(s) for device, s in sizes.items()},
        load_avg_start=load_start,
        load_avg_end=list(psutil.getloadavg()),
        wall_s=clock() - began,
        probes=probes,
    )
