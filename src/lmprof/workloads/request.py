"""What a profile asks for (ProfileRequest) and what both workloads do before loading: timed
framework imports, threads, the device and dtype chosen, and the model resolved in a timed
phase. Nothing here runs a model or prints.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from lmprof.errors import UsageError

if TYPE_CHECKING:
    from lmprof.session import ProfileSession

DEFAULT_PROMPT = "User: Hello! How are you?\nAssistant:"
DEFAULT_MAX_NEW_TOKENS = 64
ENGINES = ("transformers", "lmprof")
# Every workload imports these first, each as its own phase (torch alone takes seconds).
FRAMEWORK_IMPORTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("import_torch", ("torch",)),
    ("import_transformers", ("transformers",)),
)


@dataclass
class ProfileRequest:
    model: str | None = None
    prompt: str = DEFAULT_PROMPT
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    mode: str = "pipeline"  # or "generate"
    dtype: str = "auto"
    device: str = "auto"
    threads: int | None = None
    do_sample: bool = False
    stop_at_eos: bool = False
    chat: bool = False
    deep: bool = False  # trace the generate call with torch.profiler, then repeat it untraced
    engine: str = "transformers"  # or "lmprof": the from-scratch engine (lmprof.workloads.engine)
    native: bool = False  # with engine "lmprof": its decode step in lmprof's C++ kernels
    huge_pages: bool = False  # with engine "lmprof": weights on 2 MiB transparent huge pages
    int8: bool = False  # with engine "lmprof": int8 weight-only linear layers
    int8_activations: bool = False  # with --int8 --native: W8A8 products in the native step

    def validate(self) -> None:
        if self.max_new_tokens <= 0:
            raise UsageError(f"--max-new-tokens must be a positive integer, got {self.max_new_tokens}")
        if self.threads is not None and self.threads <= 0:
            raise UsageError(f"--threads must be a positive integer, got {self.threads}")
        if self.mode not in ("pipeline", "generate"):
            raise UsageError(f"--mode must be 'pipeline' or 'generate', got {self.mode!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise UsageError(f"--dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if not self.prompt:
            raise UsageError("--prompt must not be empty")
        if self.engine not in ENGINES:
            raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        engine_switches = (
            ("--native", self.native),
            ("--huge-pages", self.huge_pages),
            ("--int8", self.int8),
            ("--int8-activations", self.int8_activations),
        )
        for flag, on in engine_switches:
            if on and self.engine != "lmprof":
                raise UsageError(f"{flag} is a switch of lmprof's engine: add --engine lmprof")
        if self.int8_activations and not (self.int8 and self.native):
            raise UsageError(
                "--int8-activations quantizes the native step's int8 products: add --int8 --native"
            )

    def as_settings(self) -> dict[str, Any]:
        return asdict(self)


def timed_imports(session: ProfileSession, phases: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Import each phase's modules inside that phase, so a profile shows what importing cost.
    Both workloads start here: torch and transformers first, then what each one needs."""
    for phase, modules in phases:
        with session.phase(phase):
            for module in modules:
                importlib.import_module(module)


def choose_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {requested} asked for CUDA but torch sees no GPU; use --device cpu")
    if requested not in ("cpu",) and not requested.startswith("cuda"):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, got {requested!r}")
    return requested


def choose_dtype(requested: str, device: str, native_bf16_cpu: bool) -> tuple[str, str]:
    """(dtype for from_pretrained, the reason, recorded in the Run)."""
    if requested != "auto":
        return requested, "requested with --dtype"
    if device.startswith("cuda"):
        return "auto", "checkpoint dtype (transformers dtype='auto') on CUDA"
    if native_bf16_cpu:
        return "auto", "checkpoint dtype: this CPU computes bf16 natively"
    return "float32", "float32: this CPU has no native bf16 (bf16 matmuls run several times slower)"


def prepare_and_resolve(
    session: ProfileSession, req: ProfileRequest, check_device: Callable[[str], None] | None = None
) -> tuple[str, Any]:
    """Threads and device as asked, then the model found (or built, or downloaded) in a
    timed `resolve` phase; shared by the transformers and the engine workloads. `check_device`
    may refuse the device chosen before anything is resolved (or downloaded)."""
    import torch

    from lmprof.models import resolve_model  # imports torch: only after import_torch was timed

    if req.threads is not None:
        torch.set_num_threads(req.threads)
    device = choose_device(req.device)
    if check_device is not None:
        check_device(device)
    with session.phase("resolve", model=req.model or "default") as handle:
        resolved = resolve_model(req.model)
        if resolved.downloaded_bytes:
            handle.add_payload(resolved.downloaded_bytes)
    return device, resolved
