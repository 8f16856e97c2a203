"""`lmprof sysinfo`: the machine, as a profile records it."""

from __future__ import annotations

import argparse
import json

from rich.console import Console


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sysinfo", help="show CPU, memory, GPUs and versions", description="Show this machine.")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch  # for CUDA and cuDNN versions

    from lmprof.collect.system import collect_system_info
    from lmprof.render.system_view import render_system

    info = collect_system_info(torch)
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        Console().print(render_system(info))
    return 0
