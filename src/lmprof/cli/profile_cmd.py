"""`lmprof profile [MODEL]`: load a causal LM and generate, recording every phase."""

from __future__ import annotations

import argparse

from lmprof.cli.common import (
    add_device_option,
    add_json_option,
    add_model_argument,
    add_out_option,
    add_session_options,
    add_threads_option,
    python_profiler_choice,
)
from lmprof.cli.outcome import check_writable, default_run_dir, run_profiled
from lmprof.workloads.profile import run_profile
from lmprof.workloads.request import DEFAULT_MAX_NEW_TOKENS, DEFAULT_PROMPT, ProfileRequest


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="profile loading and generation of a causal LM",
        description="Profile pipeline('text-generation') (or model.generate) on a model: a built-in name "
        "(see `lmprof models`), a local folder, or a hub id in the local cache.",
    )
    add_model_argument(p, "built-in name, folder, .gguf file, or hub id")
    p.add_argument(
        "--prompt",
        default=DEFAULT_PROMPT,
        help="prompt text; \\n is read as a newline (default: the seed's chat prompt)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help="tokens to generate (default %(default)s)",
    )
    p.add_argument(
        "--mode",
        choices=["pipeline", "generate"],
        default="pipeline",
        help="pipeline(...) call or model.generate (default pipeline)",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        help="auto, float32, bfloat16 or float16 (auto: float32 on a CPU without native bf16)",
    )
    add_device_option(p, default="auto")
    add_threads_option(p, what="")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument(
        "--stop-at-eos",
        action="store_true",
        help="stop at end-of-sequence instead of generating exactly --max-new-tokens",
    )
    p.add_argument(
        "--engine",
        choices=["transformers", "lmprof"],
        default="transformers",
        help="transformers (default) or lmprof's from-scratch engine",
    )
    p.add_argument(
        "--native",
        action="store_true",
        help="with --engine lmprof: run each decode step in lmprof's C++ kernels (CPU, float32; built once)",
    )
    p.add_argument(
        "--huge-pages",
        action="store_true",
        help="with --engine lmprof: put the weights on 2 MiB transparent huge pages (Linux, CPU)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="with --engine lmprof: int8 weight-only linear layers (per-channel scales)",
    )
    p.add_argument(
        "--int8-activations",
        action="store_true",
        help="with --engine lmprof --int8 --native: quantize activation rows to int8 too (W8A8; AVX2 or AVX512-VNNI)",
    )
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    # The costs quoted below are benchmarks/deep_cost.py's (benchmarks/RESULTS.md, 2026-12-07): a traced
    # decode step against an untraced one, each option alone on top of bare torch.profiler.
    p.add_argument(
        "--python-stacks",
        action="store_true",
        help="with --deep: Python frames in the op trace and flame graph (measured: 1.74x an untraced decode "
        "step on the tiny preset, against bare torch.profiler's 1.30x)",
    )
    p.add_argument(
        "--deep-allocations",
        action="store_true",
        help="with --deep: live host allocations by Python stack (tracemalloc; the CUDA allocator's history on "
        "a GPU) as a flame graph (measured: 1.5x an untraced decode step on the default model, 22x on tiny)",
    )
    p.add_argument(
        "--deep-flops",
        action="store_true",
        help="with --deep: FLOPs per operator (measured: 1.81x an untraced decode step on tiny, against bare "
        "torch.profiler's 1.30x)",
    )
    p.add_argument(
        "--deep-shapes",
        action="store_true",
        help="with --deep: operators' input shapes in the operator table (measured: reading 16 traced steps of "
        "the default model back took 0.5-0.7 s more)",
    )
    p.add_argument(
        "--deep-steps",
        type=int,
        default=16,
        help="with --deep: decode steps to trace (default 16; 0 = all); "
        "reading the trace back after the run took about 0.1 s a step on the default model (1.7 s for 16)",
    )
    add_session_options(
        p,
        deep_help="also trace the generate call: operators, modules, flame graphs, memory by kind (measured: a "
        "traced decode step 1.13x an untraced one on the default model, 2.2x on the tiny preset; the trace is read "
        "back after the run, 1.7 s for 16 steps of the default model)",
        profiler_help="function-level profile of the whole run (default py-spy, a sampler in its own process: "
        "measured 1.14x an untraced decode step beside --deep's trace, against 1.13x without, on the default "
        "model; cprofile also writes profile.pstats)",
    )
    add_out_option(p, default="./lmprof-runs/<time>-<model>")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="N cold runs, each in a fresh process, saved as OUT/rep-1..N; prints their spread",
    )
    add_json_option(p, what="the Run record", instead_of="the summary")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from lmprof.errors import UsageError
    from lmprof.session import ProfileSession

    req = ProfileRequest(
        model=args.model,
        prompt=args.prompt.replace("\\n", "\n"),
        max_new_tokens=args.max_new_tokens,
        mode=args.mode,
        dtype=args.dtype,
        device=args.device,
        threads=args.threads,
        do_sample=args.do_sample,
        stop_at_eos=args.stop_at_eos,
        chat=args.chat,
        deep=args.deep,
        engine=args.engine,
        native=args.native,
        huge_pages=args.huge_pages,
        int8=args.int8,
        int8_activations=args.int8_activations,
    )
    req.validate()
    if args.sample_interval_ms <= 0:
        raise UsageError(f"--sample-interval-ms must be positive, got {args.sample_interval_ms}")
    out = args.out or default_run_dir(args.model or "default")
    check_writable(out)
    if args.repeat != 1:
        from lmprof.cli.repeat import run_repeats

        return run_repeats(args.argv, args.repeat, out, args.json)
    session = ProfileSession(
        sample_interval_s=args.sample_interval_ms / 1e3,
        device=None if args.device == "auto" else args.device,
        settings={**req.as_settings(), "out": str(out)},
        deep=args.deep,
        python_stacks=args.python_stacks,
        deep_allocations=args.deep_allocations,
        deep_flops=args.deep_flops,
        deep_shapes=args.deep_shapes,
        deep_steps=args.deep_steps or None,
        python_profiler=python_profiler_choice(args),
    )
    session.add_python_startup()
    return run_profiled(session, lambda: run_profile(session, req), out, as_json=args.json, debug=args.debug)
