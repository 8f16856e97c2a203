"""The seed user's `pipeline("text-generation")` call, or `model.generate`, through the real
transformers code, inside a profiling session.

The instrumentation (lmprof.collect.instrument) turns transformers' calls into phases; this
module only adds what happens outside them: importing, resolving, choosing dtype and device.
It never prints.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from lmprof.errors import LmprofError, ModelLoadError
from lmprof.workloads.request import (
    FRAMEWORK_IMPORTS,
    ProfileRequest,
    choose_dtype,
    prepare_and_resolve,
    timed_imports,
)

if TYPE_CHECKING:
    from lmprof.session import ProfileSession


def import_frameworks(session: ProfileSession) -> None:
    """Import torch and transformers as timed phases, then wrap transformers' entry points.

    `from transformers import pipeline` is lazy: the first access imports the whole
    pipelines package (seconds), so it is its own phase."""
    timed_imports(session, FRAMEWORK_IMPORTS + (("import_pipeline", ("transformers.pipelines",)),))
    session.install_instrumentation()


def run_transformers_profile(session: ProfileSession, req: ProfileRequest) -> None:
    """Profile `req` through transformers' own pipeline or generate, filling `session.run`."""
    from lmprof.collect.system import collect_cpu

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
