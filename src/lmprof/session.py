"""A profiling session: starts the collectors, owns the phase recorder, and produces the Run.

Used three ways with the same instrumentation: the `lmprof profile` workload, `lmprof run
script.py`, and the library's `with lmprof.profile() as run:`. The session never prints.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lmprof._version import __version__
from lmprof.analyze.generation import derive_generation_figures
from lmprof.analyze.phases import phase_gaps, refine_phase_peaks
from lmprof.clock import Clock
from lmprof.collect.device import detect_device
from lmprof.collect.environment import describe_environment, snapshot_load
from lmprof.collect.function_profilers import (
    PSTATS_FILE,
    add_python_profile,
    make_python_profiler,
    measure_python_profiler_cost,
)
from lmprof.collect.memory_sampler import DEFAULT_INTERVAL_S, MemorySampler
from lmprof.collect.model_facts import describe_model
from lmprof.collect.phases import PhaseHandle, PhaseRecorder
from lmprof.collect.process_stats import os_peak_rss_bytes
from lmprof.collect.system import collect_system_info
from lmprof.record.run import (
    STATUS_COMPLETE,
    STATUS_FAILED,
    STATUS_INCOMPLETE,
    Generation,
    MemoryTimeline,
    Run,
)

RSS_NOTE = (
    "RSS counts memory-mapped safetensors pages only once they are touched: weights that "
    "from_pretrained maps but does not read appear in RSS (as file-backed pages) during the "
    "phase that first reads them, often prefill."
)

DECODE_SAMPLE_FACTOR = 5  # decode's memory samples: every 50 ms at the default 10 ms


class ProfileSession:
    """Collects one Run. `start()`/`stop()` or use as a context manager."""

    def __init__(
        self,
        *,
        sample_interval_s: float = DEFAULT_INTERVAL_S,
        device: str | None = None,
        clock: Clock | None = None,
        command: list[str] | None = None,
        settings: dict[str, Any] | None = None,
        instrument: bool = True,
        deep: bool = False,
        python_stacks: bool = False,
        deep_steps: int | None = 16,
        deep_allocations: bool = False,
        deep_flops: bool = False,
        deep_shapes: bool = False,
        python_profiler: str | None = None,
    ) -> None:
        self._clock = clock or Clock()
        self._origin_s = self._clock.wall()
        self._origin_cpu_s = self._clock.cpu()
        self._requested_device = device
        self._instrument = instrument
        # Device parts need torch; before torch is imported (the CLI times that import) the
        # session starts on the CPU part and looks again when instrumentation is installed.
        self.device = detect_device(device) if "torch" in sys.modules else detect_device("cpu")
        self.sampler = MemorySampler(self.now_s, sample_interval_s, self.device)
        self._sample_interval_s = sample_interval_s
        self.phases = PhaseRecorder(
            self._clock, self._origin_s, self.device, on_boundary=self.sampler.sample_once,
            on_phase=self._sample_slower_in_decode,
        )  # fmt: skip
        self.pipeline_call_start_s: float | None = None
        self._profiled_model: weakref.ref | None = None  # the model run.model describes
        self.run = Run(
            run_id=uuid.uuid4().hex[:12],
            created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            lmprof_version=__version__,
            command=list(command if command is not None else sys.argv),
            settings=dict(settings or {}),
        )
        self.run.settings.setdefault("sample_interval_s", sample_interval_s)
        self.run.settings.setdefault("decode_sample_interval_s", sample_interval_s * DECODE_SAMPLE_FACTOR)
        self._instrumentation: Any = None
        self._deep_pending = deep  # the first generate call gets traced
        self._python_stacks = python_stacks
        self._deep_allocations = deep_allocations  # tracemalloc / CUDA allocator history: opt-in
        self._deep_flops = deep_flops  # FLOPs per operator: opt-in
        self._deep_shapes = deep_shapes  # operators' input shapes: opt-in
        self._deep_steps = deep_steps
        self._python_profiler_name = python_profiler
        self._python_profiler: Any = None
        self._deep_trace: Any = None
        self._kv_samples: list[tuple[float, int]] = []
        self._load_start = snapshot_load()
        self._started = False
        self._stopped = False

    def now_s(self) -> float:
        return self._clock.wall() - self._origin_s

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> ProfileSession:
        self.sampler.start()
        self._started = True
        if self._python_profiler_name:
            self._python_profiler = make_python_profiler(self._python_profiler_name, clock=self.now_s).start()
        if self._instrument and "transformers" in sys.modules:
            self.install_instrumentation()
        return self

    def install_instrumentation(self) -> None:
        """Wrap transformers' entry points; the CLI calls this after timing the imports."""
        if self._instrumentation is not None:
            return
        if "torch" in sys.modules and not self.device.is_cuda and self._requested_device != "cpu":
            self.device = detect_device(self._requested_device or "auto")
            if self.device.is_cuda:
                self.sampler = self._swap_sampler_device()
                self.phases._device = self.device
        from lmprof.collect.instrument import Instrumentation

        self._instrumentation = Instrumentation(self).install()
        self.run.instrumented = list(self._instrumentation.points)

    def _sample_slower_in_decode(self, name: str, opened: bool) -> None:
        """Decode samples memory DECODE_SAMPLE_FACTOR times less often: its memory grows by one
        token of KV cache a step, every step's start and end are phase-bounded anyway, and each
        wake-up of the sampler takes a core from a decode loop whose torch threads fill the
        machine (benchmarks/overhead.py). Prefill and loading, where memory moves, keep the
        interval asked for."""
        if name == "decode":
            factor = DECODE_SAMPLE_FACTOR if opened else 1
            self.sampler.set_interval(self._sample_interval_s * factor)

    def _swap_sampler_device(self) -> MemorySampler:
        old = self.sampler
        old.stop()
        new = MemorySampler(self.now_s, old.interval_s, self.device)
        new.samples.t_s, new.samples.rss_bytes = old.samples.t_s, old.samples.rss_bytes
        new.samples.file_rss_bytes = old.samples.file_rss_bytes
        self.phases._on_boundary = new.sample_once
        new.start()
        return new

    def stop(self, status: str = STATUS_COMPLETE, error: BaseException | None = None) -> Run:
        """End the session and fill the Run; safe to call once the work failed or was cut short.

        Every collector finishes first (phases, hooks, samplers, the function profiler and
        its calibration, system facts, the machine's load), then the figures are derived
        once from what was collected."""
        if self._stopped:
            return self.run
        self._stopped = True
        run = self.run
        # --- finish collecting ---
        self.phases.close_all(complete=status == STATUS_COMPLETE)
        if self._instrumentation is not None:
            self._instrumentation.uninstall()
        self.sampler.stop()
        end_s = self.now_s()
        python_profile = self._python_profiler.stop() if self._python_profiler is not None else None
        python_cost = (
            measure_python_profiler_cost(self._python_profiler_name or "")
            if python_profile is not None and python_profile.available
            else None
        )
        deep_trace, self._deep_trace = self._deep_trace, None
        run.status = status
        if error is not None:
            run.error = {"type": type(error).__name__, "message": str(error) or type(error).__name__}
        run.phases = self.phases.phases
        run.memory = self._memory_timeline()
        run.system = collect_system_info()
        cores = run.system.get("cpu", {}).get("logical_cores") or os.cpu_count() or 1
        run.environment = describe_environment(self._load_start, snapshot_load(), cores)
        self.device.close()
        # --- derive, once ---
        # The run starts at the earliest phase: python_startup begins before the session did.
        run.wall_s = end_s - min([0.0] + [p.start_s for p in run.phases])
        refine_phase_peaks(run.phases, run.memory.host["t_s"], run.memory.host["rss_bytes"])
        run.phase_gaps = phase_gaps(run)
        if python_profile is not None and python_profile.timeline is not None:
            from lmprof.analyze.gap_functions import add_gap_functions

            add_gap_functions(run, python_profile.timeline, sys.path)  # names for the gap rows
        for gen in run.generations:
            derive_generation_figures(gen)
        if run.generation is None and run.generations:
            # The headline is an untraced call when there is one: tracing inflates times.
            run.generation = next((g for g in run.generations if not g.traced), run.generations[0])
        if deep_trace is not None or python_profile is not None:
            from lmprof.analyze.deep import build_deep_profile, tracer_overhead
            from lmprof.record.deep import DeepProfile

            if deep_trace is not None:
                # lmprof's own work, after the measured window closed (the memory timeline and the
                # kernel's high-water mark are read above): its time and memory are its own line
                started_s = time.perf_counter()
                trace = deep_trace.export()
                analysis_started_s = time.perf_counter()
                run.deep = build_deep_profile(run, trace, self._kv_samples)
                run.deep.overhead.update(tracer_overhead(run.generations, trace.steps_traced))
                run.deep.overhead["lmprof"] = {
                    **trace.own_work_s,
                    "analysis_s": time.perf_counter() - analysis_started_s,
                    "wall_s": time.perf_counter() - started_s,
                    "process_peak_rss_bytes": os_peak_rss_bytes(),
                }
            else:
                run.deep = DeepProfile()
            if python_profile is not None:
                add_python_profile(run.deep, python_profile, self._python_profiler_name or "", python_cost)
            if run.generation is not None and run.generation.traced:
                run.warnings.append(
                    "the generation figures come from the call traced by torch.profiler, which slows it; "
                    "no untraced call was made to compare (lmprof profile --deep makes one)"
                )
        if run.environment.get("busy_warning"):
            run.warnings.append(run.environment["busy_warning"])
        return run

    def __enter__(self) -> ProfileSession:
        return self.start()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.stop(STATUS_COMPLETE)
        elif isinstance(exc, KeyboardInterrupt):
            self.stop(STATUS_INCOMPLETE, exc)
        else:
            self.stop(STATUS_FAILED, exc)

    def save(self, run_dir: str | os.PathLike[str]) -> Path:
        collector = self._python_profiler
        if (
            collector is not None
            and hasattr(collector, "save_pstats")
            and self.run.deep
            and self.run.deep.python
        ):
            # cProfile's data as a .pstats file beside run.json (pstats, snakeviz read it)
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            collector.save_pstats(Path(run_dir) / PSTATS_FILE)
            self.run.deep.python["pstats_file"] = PSTATS_FILE
        return self.run.save(run_dir)

    # --- what the workload and the instrumentation report ---------------------------------

    @contextmanager
    def phase(self, name: str, **detail: Any) -> Iterator[PhaseHandle]:
        """A phase of your own: `with run.phase("retrieval"): ...`."""
        with self.phases.phase(name, **detail) as handle:
            yield handle

    def add_python_startup(self) -> None:
        """Record the interpreter's start-up, from process creation to this session's start.

        Process creation time has the kernel's tick resolution (10 ms)."""
        import psutil

        startup_s = time.time() - psutil.Process().create_time() - self.now_s()
        self.phases.add_span("python_startup", -max(startup_s, 0.0), 0.0, cpu_s=self._origin_cpu_s)

    def take_deep_tracer(self, model: Any) -> Any:
        """A torch.profiler collector for this generate call, once per session under --deep."""
        if not self._deep_pending:
            return None
        self._deep_pending = False
        from lmprof.collect.torch_trace import TorchTraceCollector, TraceOptions

        return TorchTraceCollector(
            model,
            self.now_s,
            cuda=self.device.is_cuda,
            max_decode_steps=self._deep_steps,
            options=TraceOptions(
                with_stack=self._python_stacks,
                python_allocations=self._deep_allocations,
                with_flops=self._deep_flops,
                record_shapes=self._deep_shapes,
            ),
        )

    def finish_deep_trace(self, tracer: Any, kv_samples: list[tuple[float, int]]) -> None:
        """At the traced call's exit: stop tracing only; reading the trace back waits for stop()."""
        tracer.finish()
        self._deep_trace = tracer
        self._kv_samples = kv_samples

    def observe_model(self, model: Any, name: str) -> None:
        if self.run.model is not None:
            return  # the first model loaded is the one profiled
        self.run.model = describe_model(model, name)
        self._profiled_model = weakref.ref(model)

    def observe_move(self, module: Any) -> None:
        """After `module.to(...)`: where the profiled model lives now. A pipeline (or the
        script) moves it to the GPU after from_pretrained, which saw it on the CPU."""
        profiled = self._profiled_model() if self._profiled_model is not None else None
        if module is profiled and self.run.model is not None:
            self.run.model["device"] = str(getattr(module, "device", "cpu"))

    def add_generation(self, gen: Generation) -> None:
        self.run.generations.append(gen)

    def observe_pipeline_result(self, prompt: Any, result: Any) -> None:
        if not self.run.generations:
            return
        gen = self.run.generations[-1]
        if isinstance(prompt, str) and gen.prompt is None:
            gen.prompt = prompt
        text = _generated_text(result)
        if text is not None and gen.text is None:
            gen.text = text

    def _memory_timeline(self) -> MemoryTimeline:
        s = self.sampler.samples
        timeline = MemoryTimeline(
            interval_s=self._sample_interval_s,
            host={
                "t_s": list(s.t_s),
                "rss_bytes": list(s.rss_bytes),
                "file_rss_bytes": list(s.file_rss_bytes),
            },
            notes=[RSS_NOTE],
        )
        if s.rss_bytes:
            i = max(range(len(s.rss_bytes)), key=s.rss_bytes.__getitem__)
            timeline.peak_rss_bytes, timeline.peak_rss_t_s = s.rss_bytes[i], s.t_s[i]
        timeline.os_peak_rss_bytes = os_peak_rss_bytes()
        if s.device_t_s:
            timeline.device = {
                "t_s": list(s.device_t_s),
                "allocated_bytes": list(s.device_allocated_bytes),
                "reserved_bytes": list(s.device_reserved_bytes),
                "nvml_used_bytes": list(s.device_nvml_used_bytes),
            }
            timeline.peak_device_allocated_bytes = max(
                [p.device_peak_allocated_bytes or 0 for p in self.phases.phases] + s.device_allocated_bytes
            )
            timeline.peak_device_reserved_bytes = max(s.device_reserved_bytes)
            used = [u for u in s.device_nvml_used_bytes if u is not None]
            timeline.peak_nvml_used_bytes = max(used) if used else None
        return timeline


def _generated_text(result: Any) -> str | None:
    while isinstance(result, list) and result:
        result = result[0]
    if isinstance(result, dict):
        text = result.get("generated_text")
        if isinstance(text, str):
            return text
        if isinstance(text, list) and text and isinstance(text[-1], dict):
            return str(text[-1].get("content"))
    return None
