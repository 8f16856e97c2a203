"""What `lmprof profile` runs: the seed user's `pipeline("text-generation")` call, or
`model.generate`, through the real transformers code, inside a profiling session.

The instrumentation (lmprof.collect.instrument) turns the calls into phases; this module
only adds what happens outside transformers: importing it, resolving the model, and
choosing dtype, device and threads. It never prints.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from lmprof.errors import LmprofError, ModelLoadError, UsageError
from lmprof.session import ProfileSession

DEFAULT_PROMPT = "User: Hello! How are you?\nAssistant:"
DEFAULT_MAX_NEW_TOKENS = 64
ENGINES = ("transformers", "lmprof")


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


def import_frameworks(session: ProfileSession) -> None:
    """Import torch and transformers as timed phases, then wrap transformers' entry points.

    `from transformers import pipeline` is lazy: the first access imports the whole
    pipelines package (seconds), so it is its own phase."""
    with session.phase("import_torch"):
        importlib.import_module("torch")
    with session.phase("import_transformers"):
        importlib.import_module("transformers")
    with session.phase("import_pipeline"):
        importlib.import_module("transformers.pipelines")
    session.install_instrumentation()


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


def run_profile(session: ProfileSession, req: ProfileRequest) -> None:
    from lmprof.collect.system import collect_cpu

    req.validate()
    if req.engine == "lmprof":
        from lmprof.workloads.engine import run_engine_profile

        run_engine_profile(session, req)
        return
    import_frameworks(session)
    import torch

    device, resolved = prepare_and_resolve(session, req)
    native_bf16 = bool(collect_cpu().get("native_bf16"))
    dtype, dtype_reason = choose_dtype(req.dtype, device, native_bf16)
    session.run.settings.update(resolved_device=device, resolved_dtype=dtype, dtype_reason=dtype_reason)

    load_kwargs: dict[str, Any] = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
    if resolved.gguf_file:
        load_kwargs["gguf_file"] = resolved.gguf_file
    gen_kwargs: dict[str, Any] = {"max_new_tokens": req.max_new_tokens, "do_sample": req.do_sample}
    if not req.stop_at_eos:
        # Random-weight models emit EOS at random; profiles compare runs of equal length.
        gen_kwargs["min_new_tokens"] = req.max_new_tokens
    try:
        if req.mode == "pipeline":
            _run_pipeline(session, req, resolved, device, load_kwargs, gen_kwargs)
        else:
            _run_generate(session, req, resolved, device, load_kwargs, gen_kwargs)
    except LmprofError:
        raise
    except torch.OutOfMemoryError as exc:
        raise LmprofError(
            f"out of memory on {device}: {str(exc).splitlines()[0]}; try a smaller model, "
            "--dtype bfloat16/float16, or fewer --max-new-tokens"
        ) from exc
    if session.run.model is not None:
        session.run.model.update(
            source=resolved.source, path=str(resolved.path), spec=resolved.spec, dtype_reason=dtype_reason
        )
        session.run.model["id"] = resolved.model_id


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


def _load_error(resolved: Any, exc: Exception) -> ModelLoadError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ModelLoadError(f"cannot load the model in '{resolved.path}': {type(exc).__name__}: {first}")


def _run_pipeline(session, req, resolved, device, load_kwargs, gen_kwargs) -> None:
    import transformers

    model_kwargs = {k: v for k, v in load_kwargs.items() if k != "dtype"}
    try:
        pipe = transformers.pipeline(
            "text-generation",
            model=str(resolved.path),
            dtype=load_kwargs["dtype"],
            device=device,
            model_kwargs=model_kwargs or None,
            **({"tokenizer": str(resolved.path)} if resolved.gguf_file else {}),
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise _load_error(resolved, exc) from exc
    inputs: Any = [{"role": "user", "content": req.prompt}] if req.chat else req.prompt
    pipe(inputs, return_full_text=False, **gen_kwargs)
    if req.deep:  # the same call untraced: undistorted figures, and the tracer's measured cost
        with session.phase("untraced_repeat"):
            pipe(inputs, return_full_text=False, **gen_kwargs)
    for gen in session.run.generations:
        gen.prompt = req.prompt


def _run_generate(session, req, resolved, device, load_kwargs, gen_kwargs) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok_kwargs = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(resolved.path), **tok_kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(resolved.path), **load_kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise _load_error(resolved, exc) from exc
    model.to(device)
    if req.chat:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": req.prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
    else:
        inputs = tokenizer(req.prompt, return_tensors="pt")
    inputs = {k: v.to(device) for k, v in inputs.items()}
    prompt_len = inputs["input_ids"].shape[-1]
    for repeat in range(2 if req.deep else 1):
        # with --deep the first call is traced; the repeat is untraced (see _run_pipeline)
        with session.phase("untraced_repeat") if repeat else _no_phase():
            output = model.generate(**inputs, **gen_kwargs)
            text = tokenizer.decode(output[0][prompt_len:], skip_special_tokens=True)
        gen = session.run.generations[-1] if session.run.generations else None
        if gen is not None:
            gen.prompt, gen.text = req.prompt, text


@contextmanager
def _no_phase():
    yield
