"""What `lmprof profile --engine lmprof` runs: the from-scratch engine, phase by phase.

The same phases a transformers profile shows (resolve, load_model with read_weights,
load_tokenizer, tokenize, generate split into prefill and decode, detokenize), opened here
around the engine's own calls, since there is no transformers code to instrument. Loading
is split so a profile shows what each load-time switch costs: `read_weights` reads the
checkpoint into the run dtype, `prepare_weights` fuses, quantizes or transposes, and on a
GPU `to_device` copies. Generation drives the engine's `prefill` and `decode_step` directly
(the loop `lmprof.engine.generate` runs) so the two parts are phases; the per-step times are
the engine's own StepTimer readings. Nothing here prints.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmprof.collect.model_facts import held_weight_bytes
from lmprof.errors import UsageError
from lmprof.record.run import Generation, Phase
from lmprof.workloads.request import (
    FRAMEWORK_IMPORTS,
    ProfileRequest,
    choose_dtype,
    prepare_and_resolve,
    timed_imports,
)

if TYPE_CHECKING:
    from lmprof.session import ProfileSession

# The EngineOptions that apply_load_switches applies after reading (the prepare_weights phase;
# int8_activations makes the W8A8 weight-row sums there).
LOAD_SWITCHES = ("fuse_qkv", "fuse_gate_up", "int8", "int8_activations", "column_major", "huge_pages")

# What `--dtype auto` may resolve to for the engine (a checkpoint in another dtype runs in fp32).
ENGINE_DTYPES = ("float32", "bfloat16", "float16")
DO_SAMPLE_TOP_K = 50  # transformers' default generation config samples from the top 50


def run_engine_profile(session: ProfileSession, req: ProfileRequest) -> None:
    """Profile the engine on `req`'s model and prompt, filling `session.run`."""
    req.validate()
    import_engine_frameworks(session, req.device)

    from lmprof.collect.system import collect_cpu
    from lmprof.engine import EngineOptions, eos_token_ids

    device, resolved = prepare_and_resolve(
        session, req, check_device=lambda device: check_cpu_switches(req, device)
    )
    dtype, dtype_reason = engine_dtype(
        req.dtype, device, bool(collect_cpu().get("native_bf16")), resolved.path
    )
    options = EngineOptions(
        dtype=dtype,
        threads=req.threads,
        native_decode=req.native,
        huge_pages=req.huge_pages,
        int8=req.int8,
        int8_activations=req.int8_activations,
    )
    session.run.settings.update(
        resolved_device=device,
        resolved_dtype=dtype,
        dtype_reason=dtype_reason,
        engine_options=asdict(options),
    )
    model = load_engine_model(session, resolved.path, options, device)
    session.run.model = describe_engine_model(model, resolved, options, device)
    session.run.model["dtype_reason"] = dtype_reason

    tokenizer = load_tokenizer(session, resolved.path, resolved.gguf_file)
    with session.phase("tokenize"):
        prompt_ids = encode_prompt(tokenizer, req.prompt, req.chat)
    eos = eos_token_ids(resolved.path) if req.stop_at_eos else None
    sampling: dict[str, Any] = {
        "eos_token_id": eos,
        "pad_token_id": tokenizer.pad_token_id or 0,
        "temperature": 1.0 if req.do_sample else 0.0,
        "top_k": DO_SAMPLE_TOP_K if req.do_sample else None,
    }
    gen, new_tokens = profiled_generate(session, model, [prompt_ids], req.max_new_tokens, options, **sampling)
    with session.phase("detokenize"):
        gen.text = tokenizer.decode(new_tokens[0].tolist(), skip_special_tokens=True)
    gen.prompt = req.prompt
    session.add_generation(gen)
    if getattr(req, "deep", False):  # the same call untraced: undistorted figures beside the trace
        with session.phase("untraced_repeat"):
            repeat, _ = profiled_generate(
                session, model, [prompt_ids], req.max_new_tokens, options, **sampling
            )
        repeat.prompt, repeat.text = req.prompt, gen.text
        session.add_generation(repeat)


def import_engine_frameworks(session: ProfileSession, device: str = "auto") -> None:
    """Timed imports (the engine needs transformers only for tokenizers). On a GPU the session
    also needs its device parts (synchronizing at phase boundaries, device memory samples),
    which it sets up together with its transformers hooks; on a CPU those hooks would only
    cost a second of imports, so they are left out."""
    timed_imports(session, FRAMEWORK_IMPORTS + (("import_engine", ("lmprof.engine", "lmprof.models")),))
    import torch

    if device != "cpu" and torch.cuda.is_available():
        with session.phase("install_hooks"):
            session.install_instrumentation()


def check_cpu_switches(req: ProfileRequest, device: str) -> None:
    """Refuse the CPU-only switches on another device, before the model is resolved or loaded."""
    if req.huge_pages:
        from lmprof.engine.huge_pages import check_huge_pages_on

        check_huge_pages_on(device, "--huge-pages")
    if req.native:
        from lmprof.engine.native_decode import check_native_on

        check_native_on(device, "--native")


def engine_dtype(requested: str, device: str, native_bf16: bool, folder: Path) -> tuple[str, str]:
    """(engine dtype, the reason): `auto` follows `lmprof profile`'s choice, read as a concrete
    dtype: the checkpoint's where transformers would keep it, else float32."""
    choice, reason = choose_dtype(requested, device, native_bf16)
    if choice != "auto":
        return choice, reason
    from lmprof.engine.weights import read_hf_config
    from lmprof.errors import ModelNotFoundError

    try:
        hf = read_hf_config(folder)
    except ModelNotFoundError:  # a lone GGUF file: transformers dequantizes it to fp32
        return "float32", "float32: a GGUF checkpoint is dequantized to float32"
    stored = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    if stored not in ENGINE_DTYPES:
        return "float32", f"float32: the checkpoint's {stored} is not an engine dtype"
    return stored, reason


def load_engine_model(session: ProfileSession, folder: Path, options: Any, device: str) -> Any:
    """load_model { read_weights, prepare_weights (when a load-time switch is on), to_device (GPU) }."""
    from lmprof.engine import load_hf_folder

    plain = replace(options, **dict.fromkeys(LOAD_SWITCHES, False))
    with session.phase("load_model", model=str(folder), engine="lmprof"):
        files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.gguf"))
        checkpoint_bytes = sum(f.stat().st_size for f in files)
        with session.phase(
            "read_weights", files=[f.name for f in files], checkpoint_bytes=checkpoint_bytes
        ) as h:
            # Read on the host even for a GPU run, so the copy is its own phase below.
            model = load_hf_folder(folder, plain, device="cpu")
            h.add_payload(checkpoint_bytes)
        if plain != options:
            with session.phase("prepare_weights", **load_switches(options)) as h:
                from lmprof.engine.weights import apply_load_switches

                apply_load_switches(model, options)
                if model.huge_page_placement is not None:  # what the kernel granted, read back
                    h.note(huge_page_placement=asdict(model.huge_page_placement))
        model.options = options
        if device != "cpu":
            with session.phase("to_device", target=device) as h:
                h.add_payload(held_weight_bytes(model))
                model.to(device)
        if options.native_decode:
            from lmprof.engine.native import is_built, load_native_ops
            from lmprof.engine.native_decode import check_native_decode

            check_native_decode(model)
            # The first use on a machine compiles the C++ kernels: its own phase, never hidden
            # inside the first decode step.
            with session.phase("load_native_kernels", cached_build=is_built()) as h:
                # as the kernels hold them: [narrow tiles (batch 1-3), wide tiles (batch >= 4)]
                h.note(prefetch_bytes=list(load_native_ops().prefetch()))
    return model


def load_switches(options: Any) -> dict[str, bool]:
    return {name: getattr(options, name) for name in LOAD_SWITCHES}


def load_tokenizer(session: ProfileSession, folder: Path, gguf_file: str | None) -> Any:
    from transformers import AutoTokenizer

    with session.phase("load_tokenizer"):
        return AutoTokenizer.from_pretrained(str(folder), **({"gguf_file": gguf_file} if gguf_file else {}))


def encode_prompt(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    if chat:
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        return encoded["input_ids"][0].tolist()
    ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise UsageError("the prompt tokenized to no tokens")
    return list(ids)


def profiled_generate(
    session: ProfileSession,
    model: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    options: Any,
    *,
    eos_token_id: list[int] | None = None,
    pad_token_id: int = 0,
    temperature: float = 0.0,
    top_k: int | None = None,
) -> tuple[Generation, Any]:
    """The engine's generation loop inside generate { prefill, decode } phases.

    Returns the Generation record (not yet added to the session) and the new tokens [B, n].
    """
    import torch

    from lmprof.engine.generate import run_steps, torch_threads
    from lmprof.engine.padding import left_pad
    from lmprof.engine.step_timer import StepTimer

    if max_new_tokens < 1:
        raise UsageError(f"max_new_tokens must be positive, got {max_new_tokens}")
    device = model.inv_freq.device
    tokens, valid = left_pad(prompts, pad_token_id, device)
    batch, prompt_len = tokens.shape
    eos = torch.tensor(sorted(set(eos_token_id or [])), dtype=torch.long, device=device)
    # --deep: the session hands out one torch.profiler tracer, for the first generate call only.
    tracer = session.take_deep_tracer(model) if hasattr(session, "take_deep_tracer") else None
    kv_samples: list[tuple[float, int]] = []
    with (
        session.phase("generate", batch=batch, prompt_tokens=prompt_len, max_new_tokens=max_new_tokens),
        torch_threads(options.threads),
        torch.inference_mode(),
    ):
        state = new_generation_state(model, batch, prompt_len + max_new_tokens, options)
        timer = StepTimer(device)
        if tracer is not None:
            tracer.start()

        def mark(step: int) -> None:  # --deep: the step's bounds, and the KV cache before each decode step
            tracer.mark_step(step)
            if step > 0:
                kv_samples.append((session.now_s(), kv_cache_bytes(state)))

        new_tokens, _ = run_steps(
            model, state, tokens, valid, max_new_tokens, options, timer,
            eos=eos, pad_token_id=pad_token_id, temperature=temperature, top_k=top_k,
            prefill_scope=lambda: session.phase("prefill", chunk_size=options.prefill_chunk_size),
            decode_scope=lambda: session.phase(
                "decode", compiled=options.compile_decode, kv_cache=options.kv_cache
            ),
            before_step=mark if tracer is not None else None,
        )  # fmt: skip
        step_s = timer.durations_s()
    if tracer is not None:  # lmprof's own cost, in a phase of its own
        with session.phase("lmprof_trace_export"):
            session.finish_deep_trace(tracer, kv_samples)
    new_tokens = new_tokens.cpu()  # [B, n]
    gen = _generation_record(session, batch, prompt_len, new_tokens.shape[1], step_s, device.type)
    gen.traced = tracer is not None
    return gen, new_tokens


def kv_cache_bytes(state: Any) -> int:
    """Bytes the decode state's KV cache holds now (a static cache: all its slots)."""
    cache = state.cache
    if cache is None:
        return 0
    return sum(t.numel() * t.element_size() for t in [*cache.keys, *cache.values] if t is not None)


def new_generation_state(model: Any, batch: int, capacity: int, options: Any) -> Any:
    """A decode state sized as `lmprof.engine.generate` sizes it (rounded up when compiling)."""
    import torch

    from lmprof.engine.generate import COMPILE_CAPACITY_STEP, new_decode_state

    if options.compile_decode:
        # Each capacity is a new static shape (and CUDA graph): round up so lengths share them.
        capacity = -(-capacity // COMPILE_CAPACITY_STEP) * COMPILE_CAPACITY_STEP
    state = new_decode_state(model, batch, capacity, options.kv_cache)
    if options.compile_decode and model.inv_freq.device.type == "cuda":
        # CUDA graphs replay fixed addresses: the cache and the mask buffer must stay put.
        for tensor in [*state.cache.tensors(), state.key_valid]:
            torch._dynamo.mark_static_address(tensor)
    return state


def _generation_record(
    session: ProfileSession,
    batch: int,
    prompt_len: int,
    new_tokens: int,
    step_s: list[float],
    device_type: str,
) -> Generation:
    # Spans come from the phases just closed (the device was synchronized at each boundary);
    # the per-step latencies are the engine's StepTimer readings (CUDA events on a GPU).
    generate = last_phase(session, "generate")
    prefill = last_phase(session, "prefill")
    decode = last_phase(session, "decode") if new_tokens > 1 else None
    end_s = decode.end_s if decode is not None and decode.start_s >= prefill.end_s else prefill.end_s
    return Generation(
        call="generate",
        batch_size=batch,
        prompt_tokens=prompt_len,
        new_tokens=new_tokens,
        start_s=generate.start_s,
        first_token_s=prefill.end_s,
        end_s=end_s,
        prefill_s=prefill.end_s - generate.start_s,
        decode_s=end_s - prefill.end_s,
        decode_step_latencies_s=step_s[1:],
        timing="cuda_events" if device_type == "cuda" else "host_clock",
    )


def last_phase(session: ProfileSession, name: str) -> Phase:
    for phase in reversed(session.phases.phases):
        if phase.name == name:
            return phase
    raise LookupError(f"no closed phase named {name!r}")


def describe_engine_model(model: Any, resolved: Any, options: Any, device: str) -> dict[str, Any]:
    """The Run's `model` entry for the engine: what a transformers run records, plus the
    engine and its switches."""
    from lmprof.engine import cost
    from lmprof.engine.weights import read_hf_config
    from lmprof.errors import ModelNotFoundError

    try:
        architectures = read_hf_config(resolved.path).get("architectures") or []
    except ModelNotFoundError:
        architectures = []
    config = model.config
    return {
        "id": resolved.model_id,
        "source": resolved.source,
        "spec": resolved.spec,
        "path": str(resolved.path),
        "architecture": architectures[0] if architectures else "Transformer",
        "class": f"{type(model).__module__}.{type(model).__name__}",
        "parameter_count": cost.param_count(config),
        "dtype": options.dtype,
        "weights": _weights_label(options),
        "weight_bytes": held_weight_bytes(model),
        "device": device,
        "engine": "lmprof",
        "engine_options": asdict(options),
        "config": {k: v for k, v in asdict(config).items() if k != "rope_scaling"}
        | {"rope_scaling": asdict(config.rope_scaling) if config.rope_scaling else None},
    }


def _weights_label(options) -> str:
    if options.int8_activations:
        return "int8, per-channel scales; decode activations int8 per row (W8A8)"
    return "int8 weight-only, per-channel scales" if options.int8 else options.dtype
