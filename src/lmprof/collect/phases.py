"""Nested named phases on the session clock, each with its CPU time, memory and I/O.

A phase is opened and closed around a piece of work (by the instrumentation, the CLI
workload, or the user). Phases nest: a phase opened while another is open becomes its
child. Only the thread that owns the recorder records, so a helper thread's spans never
nest wrongly under the main thread's phases.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from lmprof.clock import Clock
from lmprof.collect.device import CpuDevice, CudaDevice
from lmprof.collect.process_stats import ProcessSnapshot, read_process
from lmprof.record.run import Phase


@dataclass
class _OpenPhase:
    index: int
    name: str
    start_s: float
    start_cpu_s: float
    start: ProcessSnapshot
    device_allocated_bytes: int | None
    parent_index: int | None
    depth: int
    payload_bytes: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class PhaseHandle:
    """What `PhaseRecorder.phase()` yields: lets the work report the bytes it moved."""

    def __init__(self, open_phase: _OpenPhase | None) -> None:
        self._open = open_phase

    @property
    def recording(self) -> bool:
        return self._open is not None

    def add_payload(self, n_bytes: int) -> None:
        if self._open is not None:
            self._open.payload_bytes = (self._open.payload_bytes or 0) + int(n_bytes)

    def note(self, **detail: Any) -> None:
        if self._open is not None:
            self._open.detail.update(detail)


class PhaseRecorder:
    def __init__(
        self,
        clock: Clock,
        origin_wall_s: float,
        device: CpuDevice | CudaDevice | None = None,
        read: Callable[[], ProcessSnapshot] = read_process,
        on_boundary: Callable[[], None] | None = None,
        on_phase: Callable[[str, bool], None] | None = None,
    ) -> None:
        """on_boundary: called at every phase's open and close (a memory sample); on_phase: with
        the phase's name and True when it opened, False when it closed."""
        self._clock = clock
        self._origin = origin_wall_s
        self._device = device if device is not None else CpuDevice()
        self._read = read
        self._on_boundary = on_boundary
        self._on_phase = on_phase
        self._owner = threading.get_ident()
        self._stack: list[_OpenPhase] = []
        self._slots: list[Phase | _OpenPhase] = []

    @property
    def phases(self) -> list[Phase]:
        """Closed phases in the order they opened."""
        return [p for p in self._slots if isinstance(p, Phase)]

    def is_open(self, name: str) -> bool:
        return any(p.name == name for p in self._stack)

    def open(self, name: str, *, reentrant: bool = False, **detail: Any) -> _OpenPhase | None:
        """Open a phase; returns None (records nothing) off the owner thread, or when a
        phase of the same name is already open and `reentrant` is False (a tokenizer
        calling itself is one tokenize phase, not two)."""
        if threading.get_ident() != self._owner:
            return None
        if not reentrant and self.is_open(name):
            return None
        self._device.synchronize()
        if self._on_boundary is not None:
            self._on_boundary()
        reading = self._device.read()
        self._device.open_window()
        parent = self._stack[-1] if self._stack else None
        snap = self._read()
        op = _OpenPhase(
            index=len(self._slots),
            name=name,
            start_s=self._clock.wall() - self._origin,
            start_cpu_s=self._clock.cpu(),
            start=snap,
            device_allocated_bytes=reading.allocated_bytes if reading else None,
            parent_index=parent.index if parent else None,
            depth=len(self._stack),
            detail=dict(detail),
        )
        self._slots.append(op)
        self._stack.append(op)
        if self._on_phase is not None:
            self._on_phase(name, True)
        return op

    def close(self, op: _OpenPhase | None, *, complete: bool = True) -> Phase | None:
        if op is None:
            return None
        # Close anything opened inside `op` and left open (an exception unwound past it).
        while self._stack and self._stack[-1] is not op:
            self.close(self._stack[-1], complete=False)
        if not self._stack:
            return None
        self._device.synchronize()
        end_s = self._clock.wall() - self._origin
        end_cpu_s = self._clock.cpu()
        snap = self._read()
        reading = self._device.read()
        device_peak = self._device.close_window()
        self._stack.pop()
        start = op.start
        phase = Phase(
            name=op.name,
            start_s=op.start_s,
            end_s=end_s,
            depth=op.depth,
            parent_index=op.parent_index,
            cpu_s=end_cpu_s - op.start_cpu_s,
            rss_start_bytes=start.rss_bytes,
            rss_end_bytes=snap.rss_bytes,
            rss_peak_bytes=max(start.rss_bytes, snap.rss_bytes),  # refined from samples at finalize
            file_rss_start_bytes=start.file_rss_bytes,
            file_rss_end_bytes=snap.file_rss_bytes,
            disk_read_bytes=_delta(start.disk_read_bytes, snap.disk_read_bytes),
            major_faults=snap.major_faults - start.major_faults,
            minor_faults=snap.minor_faults - start.minor_faults,
            device_allocated_start_bytes=op.device_allocated_bytes,
            device_allocated_end_bytes=reading.allocated_bytes if reading else None,
            device_reserved_end_bytes=reading.reserved_bytes if reading else None,
            device_peak_allocated_bytes=device_peak,
            payload_bytes=op.payload_bytes,
            complete=complete,
            detail=op.detail,
        )
        self._slots[op.index] = phase
        if self._on_boundary is not None:
            self._on_boundary()
        if self._on_phase is not None:
            self._on_phase(op.name, False)
        return phase

    def close_all(self, *, complete: bool) -> None:
        """Close every open phase, innermost first (end of session, or an interrupt)."""
        while self._stack:
            self.close(self._stack[-1], complete=complete)

    @contextmanager
    def phase(self, name: str, *, reentrant: bool = False, **detail: Any) -> Iterator[PhaseHandle]:
        op = self.open(name, reentrant=reentrant, **detail)
        handle = PhaseHandle(op)
        try:
            yield handle
        except BaseException:
            self.close(op, complete=False)
            raise
        self.close(op)

    def add_span(self, name: str, start_s: float, end_s: float, cpu_s: float, **detail: Any) -> Phase:
        """Record a span that ended before the recorder started (Python start-up): times and
        CPU only; its memory is what the process held when recording began."""
        if self._slots:
            raise RuntimeError("add_span is for spans before the first recorded phase")
        snap = self._read()
        phase = Phase(
            name=name,
            start_s=start_s,
            end_s=end_s,
            depth=0,
            parent_index=None,
            cpu_s=cpu_s,
            rss_start_bytes=0,
            rss_end_bytes=snap.rss_bytes,
            rss_peak_bytes=snap.rss_bytes,
            file_rss_start_bytes=0,
            file_rss_end_bytes=snap.file_rss_bytes,
            detail=dict(detail),
        )
        self._slots.append(phase)
        return phase


def _delta(start: int | None, end: int | None) -> int | None:
    return None if start is None or end is None else end - start
