"""Options that several commands share, declared once so their names, defaults and help read
the same everywhere (memray's `commands/common.py` is the model). Each command adds what it
uses; the checks of their values stay with the request that uses them."""

from __future__ import annotations

import argparse
from pathlib import Path

PYTHON_PROFILERS = ("py-spy", "cprofile", "none")


def add_model_argument(p: argparse.ArgumentParser, accepts: str) -> None:
    """The optional MODEL positional: `accepts` says what forms this command takes."""
    p.add_argument("model", nargs="?", default=None, help=f"{accepts} (default: the built-in default)")


def add_json_option(p: argparse.ArgumentParser, what: str, instead_of: str | None = None) -> None:
    rest = f" instead of {instead_of}" if instead_of else ""
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout{rest}")


def add_out_option(p: argparse.ArgumentParser, default: str, what: str = "run folder") -> None:
    p.add_argument("--out", type=Path, default=None, help=f"{what} (default: {default})")


def add_threads_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--threads", type=int, default=None, help=f"torch intra-op threads {what} (default: torch's choice)"
    )


def add_device_option(p: argparse.ArgumentParser, default: str) -> None:
    choices = "auto, cpu, cuda or cuda:N" if default == "auto" else "cpu, cuda or cuda:N"
    p.add_argument("--device", default=default, help=f"{choices} (default {default})")


def add_session_options(p: argparse.ArgumentParser, deep_help: str, profiler_help: str) -> None:
    """The profiling session's own settings: memory sampling, --deep and its Python profiler."""
    p.add_argument(
        "--sample-interval-ms",
        type=float,
        default=10.0,
        help="host/device memory sampling interval (default 10)",
    )
    p.add_argument("--deep", action="store_true", help=deep_help)
    p.add_argument(
        "--python-profiler",
        choices=list(PYTHON_PROFILERS),
        default="py-spy",
        help=f"with --deep: {profiler_help}",
    )


def python_profiler_choice(args: argparse.Namespace) -> str | None:
    """The function-level profiler a session starts: only under --deep, and never 'none'."""
    return args.python_profiler if args.deep and args.python_profiler != "none" else None
