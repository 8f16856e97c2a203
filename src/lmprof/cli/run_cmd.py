"""`lmprof run script.py [args...]`: profile an unmodified script that uses transformers."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

from lmprof.cli.common import add_json_option, add_out_option, add_session_options, python_profiler_choice
from lmprof.cli.outcome import check_writable, default_run_dir, run_profiled
from lmprof.errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="profile a Python script that uses transformers",
        description="Run SCRIPT as `python SCRIPT ARGS...` with lmprof's instrumentation: every "
        "from_pretrained, pipeline, tokenizer and generate call becomes a phase.",
    )
    p.add_argument("script", type=Path, help="the Python script to run")
    p.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    add_session_options(
        p,
        deep_help="trace the first generate call and profile Python functions",
        profiler_help="the function-level profiler (default py-spy)",
    )
    add_out_option(p, default="./lmprof-runs/<time>-<script>")
    add_json_option(p, what="the Run record")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from lmprof.session import ProfileSession
    from lmprof.workloads.transformers import import_frameworks

    script: Path = args.script
    if not script.is_file():
        raise UsageError(f"no script at '{script}': pass the path of a Python file")
    if args.sample_interval_ms <= 0:
        raise UsageError(f"--sample-interval-ms must be positive, got {args.sample_interval_ms}")
    out = args.out or default_run_dir(script.stem)
    check_writable(out)
    session = ProfileSession(
        sample_interval_s=args.sample_interval_ms / 1e3,
        command=[str(script), *args.script_args],
        settings={"script": str(script), "script_args": list(args.script_args), "out": str(out)},
        deep=args.deep,
        python_profiler=python_profiler_choice(args),
    )
    session.add_python_startup()

    def work() -> None:
        # The script would import them anyway; importing first times them and lets the
        # instrumentation be in place before the script's first line.
        import_frameworks(session)
        saved_argv, saved_path = sys.argv[:], sys.path[:]
        sys.argv = [str(script), *args.script_args]
        sys.path.insert(0, str(script.resolve().parent))
        try:
            with session.phase("script", path=str(script)):
                runpy.run_path(str(script), run_name="__main__")
        finally:
            sys.argv, sys.path[:] = saved_argv, saved_path

    return run_profiled(session, work, out, as_json=args.json, debug=args.debug)
