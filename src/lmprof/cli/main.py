"""`lmprof` command line: parse, dispatch to a subcommand, turn typed errors into exit codes.

Each subcommand module owns its arguments (`add_parser`) and its work (`run`), and
returns an exit code; `main(argv)` is what tests call.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from lmprof._version import __version__
from lmprof.cli import (
    ablate_cmd,
    bench_cmd,
    compare_cmd,
    load_cmd,
    models_cmd,
    profile_cmd,
    run_cmd,
    serve_cmd,
    show_cmd,
    sysinfo_cmd,
)
from lmprof.errors import LmprofError

COMMANDS = (
    profile_cmd,
    run_cmd,
    show_cmd,
    compare_cmd,
    ablate_cmd,
    models_cmd,
    sysinfo_cmd,
    serve_cmd,
    load_cmd,
    bench_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmprof",
        description="Where an LLM inference run's time and memory go.",
    )
    parser.add_argument("--version", action="version", version=f"lmprof {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    for subparser in sub.choices.values():  # `lmprof profile X --debug` works too
        subparser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `profile --repeat` re-runs it
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args))
    except LmprofError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"lmprof: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("lmprof: interrupted", file=sys.stderr)
        return 130


def entry_point() -> None:
    sys.exit(main())
