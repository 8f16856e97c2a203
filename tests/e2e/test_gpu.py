"""CUDA paths: allocator peaks, CUDA-event step timing, the host-to-device copy. Skipped without a GPU."""

import pytest

from lmprof.record.run import load_run, validate_run_dict

pytestmark = pytest.mark.gpu

MiB = 1 << 20


def test_nested_window_peaks_are_exact():
    import torch

    from lmprof.collect.device import CudaDevice

    dev = CudaDevice(index=0)
    dev.open_window()  # outer
    a = torch.empty(64 * MiB, dtype=torch.uint8, device="cuda")
    dev.open_window()  # inner: a 32 MiB temporary comes and goes
    t = torch.empty(32 * MiB, dtype=torch.uint8, device="cuda")
    del t
    inner = dev.close_window()
    b = torch.empty(8 * MiB, dtype=torch.uint8, device="cuda")
    outer = dev.close_window()
    base = torch.cuda.memory_allocated() - 72 * MiB
    assert inner - base == pytest.approx(96 * MiB, abs=2 * MiB)
    assert outer == inner  # the inner spike is the outer peak too
    reading = dev.read()
    assert reading.allocated_bytes >= 72 * MiB and reading.reserved_bytes >= reading.allocated_bytes
    del a, b
    dev.close()


def test_profile_on_cuda(run_cli, tmp_path):
    out = tmp_path / "cuda"
    proc = run_cli("profile", "tiny", "--device", "cuda", "--max-new-tokens", 16, "--out", out)
    assert proc.returncode == 0, proc.stderr
    run = load_run(out)
    validate_run_dict(run.to_dict())
    assert run.generation.timing == "cuda_events"
    assert len(run.generation.decode_step_latencies_s) == 15
    assert all(s > 0 for s in run.generation.decode_step_latencies_s)
    assert run.model["device"].startswith("cuda")
    copy = next(p for p in run.phases if p.name == "to_device")
    assert copy.payload_bytes == run.model["weight_bytes"]
    assert copy.device_peak_allocated_bytes >= copy.payload_bytes
    assert run.memory.device is not None and len(run.memory.device["t_s"]) > 5
    assert run.memory.peak_device_allocated_bytes >= run.model["weight_bytes"]
    decode = next(p for p in run.phases if p.name == "decode")
    assert decode.device_peak_allocated_bytes is not None


def test_deep_on_cuda(run_cli, tmp_path):
    out = tmp_path / "cuda-deep"
    proc = run_cli("profile", "tiny", "--device", "cuda", "--deep", "--deep-allocations", "--max-new-tokens", 8,
                   "--out", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = load_run(out)
    validate_run_dict(run.to_dict())
    deep = run.deep
    names = {f.name for f in deep.flames}
    # kernels by launching stack; the allocator's history by Python stack (--deep-allocations)
    assert {"time", "device", "memory-cuda"} <= names
    assert any(r["self_device_s"] > 0 for r in deep.operators["decode"])
    device = deep.memory_by_kind["device"]
    # at the peak of allocated CUDA memory (the allocator's events), the parts add up to reserved
    assert device["moment"] == "peak of allocated CUDA memory" and device["measured"] == "reserved"
    assert sum(device["parts"].values()) == device["measured_bytes"]
    assert device["parts"]["kv_cache"] > 0 and device["parts"]["weights"] > 0
    kernel_stacks = [s for s in deep.flame("time").stacks if s[-1].startswith("kernel:")]
    assert kernel_stacks and any(f.startswith("module:") for f in kernel_stacks[0])


def test_native_on_cuda_is_refused_before_loading(run_cli, tmp_path):
    proc = run_cli(
        "profile", "tiny", "--engine", "lmprof", "--native", "--device", "cuda", "--out", tmp_path / "r"
    )
    assert proc.returncode == 2 and "add --device cpu" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
