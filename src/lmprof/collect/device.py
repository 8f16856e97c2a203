"""Small per-device parts behind one interface: synchronize, allocator readings, peaks.

The CPU part does nothing, so collectors never branch on the device. The CUDA part
reads torch's caching allocator and keeps exact per-phase peaks by resetting the
allocator's peak counter at each phase boundary and folding it into the enclosing
phase (so nested phases each get their own true peak). It also reads NVML's
device-wide used memory, which includes the CUDA context and other processes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from lmprof.clock import cuda_event


@dataclass(frozen=True)
class DeviceReading:
    allocated_bytes: int
    reserved_bytes: int
    nvml_used_bytes: int | None


class CpuDevice:
    """No device memory: every reading is None, synchronizing is free."""

    name = "cpu"
    is_cuda = False

    def synchronize(self) -> None:
        pass

    def read(self) -> DeviceReading | None:
        return None

    def open_window(self) -> None:
        pass

    def close_window(self) -> int | None:
        return None

    def close(self) -> None:
        pass


@dataclass
class CudaDevice:
    """torch.cuda allocator counters plus NVML, for one CUDA device."""

    index: int = 0
    name: str = "cuda"
    is_cuda: bool = True
    _nvml_handle: Any = None
    _window_peaks: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        import torch

        self._torch = torch
        self.name = f"cuda:{self.index}"
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._nvml_handle = pynvml.nvmlDeviceGetHandleByIndex(self._nvml_index())
        except Exception:  # NVML is optional: no driver library, or a MIG/containers quirk
            self._nvml = None
            self._nvml_handle = None

    def _nvml_index(self) -> int:
        # NVML numbers devices physically; CUDA_VISIBLE_DEVICES renumbers them for torch.
        import os

        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            ids = [v.strip() for v in visible.split(",") if v.strip()]
            if self.index < len(ids) and ids[self.index].isdigit():
                return int(ids[self.index])
        return self.index

    def synchronize(self) -> None:
        self._torch.cuda.synchronize(self.index)

    def record_event(self) -> Any:
        """A timing event recorded now on this device's current stream (lmprof.clock.cuda_event)."""
        return cuda_event(self.index)

    def read(self) -> DeviceReading:
        cuda = self._torch.cuda
        used = None
        if self._nvml_handle is not None:
            try:
                used = int(self._nvml.nvmlDeviceGetMemoryInfo(self._nvml_handle).used)
            except Exception:
                used = None
        return DeviceReading(cuda.memory_allocated(self.index), cuda.memory_reserved(self.index), used)

    # Exact nested peaks: see the module docstring.
    def open_window(self) -> None:
        cuda = self._torch.cuda
        if not cuda.is_initialized():
            # reset_peak_memory_stats, unlike the allocator's readers, raises on a device whose
            # CUDA state is not initialized yet ("Invalid device argument ... did you call
            # init?"), and a window may open before the workload's first CUDA op. Not at
            # construction: there it would raise before `--device cuda` on a machine with no GPU
            # gets its one-line error.
            cuda.init()
        if self._window_peaks:
            self._window_peaks[-1] = max(self._window_peaks[-1], cuda.max_memory_allocated(self.index))
        cuda.reset_peak_memory_stats(self.index)
        self._window_peaks.append(cuda.memory_allocated(self.index))

    def close_window(self) -> int | None:
        if not self._window_peaks:
            return None
        peak = max(self._window_peaks.pop(), self._torch.cuda.max_memory_allocated(self.index))
        if self._window_peaks:
            self._window_peaks[-1] = max(self._window_peaks[-1], peak)
        return peak

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass


def detect_device(requested: str | None = None) -> CpuDevice | CudaDevice:
    """The device part for `requested` ("cpu", "cuda", "cuda:1"), or CUDA when available.

    Does not import torch unless it is already imported or CUDA was asked for.
    """
    if requested is not None and requested.startswith("cuda"):
        index = int(requested.split(":", 1)[1]) if ":" in requested else 0
        return CudaDevice(index=index)
    if requested in (None, "auto"):
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            return CudaDevice(index=torch.cuda.current_device())
    return CpuDevice()
