"""`lmprof serve MODEL`: an OpenAI-compatible server with switchable throughput techniques."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmprof.errors import UsageError


def _bytes(text: str) -> int:
    """'1048576', '64k', '16M', '1G' -> bytes (powers of 1024)."""
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    value = text.strip().lower().removesuffix("b")
    factor = scale.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in scale else value
    try:
        return int(float(number) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r} (e.g. 1048576, 64k, 16M)") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description="Serve MODEL on /v1/completions and /v1/chat/completions (with SSE streaming), "
        "/v1/models, /health and /metrics. Binds 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument(
        "model", nargs="?", default=None, help="built-in name, folder or hub id (default model if left out)"
    )
    p.add_argument("--engine", choices=["transformers", "lmprof"], default="transformers")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument(
        "--scheduler", choices=["sequential", "async", "static-batch", "continuous"], default="sequential",
        help="sequential: one HTTP request at a time; async: accept and queue, serve one at a time; "
        "static-batch: run queued requests as left-padded batches; continuous: requests join and "
        "leave the running batch between decode steps (--engine lmprof)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=None, help="static-batch: most requests per batch (8)")
    p.add_argument(
        "--batch-wait-ms", type=float, default=None,
        help="static-batch: wait to fill a batch; continuous: an idle engine's wait for a burst to "
        "share one prefill (10)",
    )  # fmt: skip
    p.add_argument("--max-batch", type=int, default=None, help="continuous: most running requests (8)")
    p.add_argument(
        "--prefill-chunk", type=int, default=None, metavar="T",
        help="continuous: most prompt tokens prefilled per step, so a long prompt cannot stall the streams (256)",
    )  # fmt: skip
    p.add_argument(
        "--max-model-len", type=int, default=None, metavar="TOKENS",
        help="continuous: longest prompt + completion; the KV pool is sized for it (2048)",
    )  # fmt: skip
    p.add_argument("--prefix-cache", type=_bytes, default=0, metavar="BYTES",
                   help="continuous: keep K/V of prompt prefixes for later requests, this many bytes (e.g. 256M)")  # fmt: skip
    p.add_argument(
        "--native", action=argparse.BooleanOptionalAction, default=None,
        help="lmprof engine: each decode step in lmprof's C++ kernels (default: on for a CPU float32 model "
        "where a C++ compiler and ninja can build them once; --no-native: torch ops)",
    )  # fmt: skip
    p.add_argument(
        "--huge-pages", action=argparse.BooleanOptionalAction, default=None,
        help="lmprof engine: weights on 2 MiB transparent huge pages (default: on for a CPU model where "
        "Linux offers them)",
    )  # fmt: skip
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting before 429 (default 64)")
    p.add_argument("--response-cache", type=_bytes, default=0, metavar="BYTES",
                   help="exact-match cache of greedy or seeded responses, this many bytes (e.g. 16M)")  # fmt: skip
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/")
    p.add_argument("--max-body-bytes", type=_bytes, default=1 << 20)
    p.add_argument("--max-prompt-tokens", type=int, default=4096)
    p.add_argument("--max-tokens-limit", type=int, default=4096, help="largest max_tokens a request may ask")
    p.add_argument("--served-model-name", default=None, help="the model id clients send (default: MODEL)")
    p.add_argument("--profile-out", type=Path, default=None, metavar="DIR",
                   help="write DIR/run.json, the server's profile, on shutdown (`lmprof show DIR`)")  # fmt: skip
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from lmprof.serve.settings import ServeSettings

    if args.host not in ("127.0.0.1", "localhost", "::1") and args.api_key is None:
        # Not refused: a lab may want it. But say it once, plainly.
        print(f"lmprof serve: warning: listening on {args.host} with no --api-key", flush=True)
    settings = ServeSettings(
        model=args.model, engine=args.engine, device=args.device, dtype=args.dtype, host=args.host,
        port=args.port, scheduler=args.scheduler, batch_size=args.batch_size, batch_wait_ms=args.batch_wait_ms,
        max_queue=args.max_queue, response_cache_bytes=args.response_cache, api_key=args.api_key,
        max_body_bytes=args.max_body_bytes, max_prompt_tokens=args.max_prompt_tokens,
        max_tokens_limit=args.max_tokens_limit, served_model_name=args.served_model_name,
        profile_out=args.profile_out, threads=args.threads, max_batch_rows=args.max_batch,
        prefill_chunk=args.prefill_chunk, max_model_len=args.max_model_len, prefix_cache_bytes=args.prefix_cache,
        native=args.native, huge_pages=args.huge_pages,
    )  # fmt: skip
    settings.validate()  # bad input is one line before anything loads
    if args.profile_out is not None:
        try:
            args.profile_out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--profile-out '{args.profile_out}' cannot be created: {exc.strerror}") from exc
    from lmprof.serve.server import run_server

    return run_server(settings)


def show(args: argparse.Namespace) -> int:
    """`lmprof show DIR` for a server's Run (written by `lmprof serve --profile-out DIR`)."""
    from lmprof.record.serve import load_serve_run
    from lmprof.render.serve_terminal import render_serve_run

    run = load_serve_run(args.run_dir)
    if getattr(args, "html", False) or getattr(args, "functions", None):
        raise UsageError("a serve run renders as text (`lmprof show DIR`) or JSON (`--json`)")
    print(
        run.to_json() if getattr(args, "json", False) else render_serve_run(run),
        end="\n" if args.json else "",
    )
    return 0
