"""`lmprof sysinfo [--measure]`: the machine, as a profile records it, and what it can do.

`--measure` adds short probes of memory bandwidth and matmul throughput (cached per machine;
`--refresh` measures again).
"""

from __future__ import annotations

import argparse
import json

from lmprof.cli.common import add_json_option, add_threads_option
from lmprof.cli.report_console import report_console
from lmprof.errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sysinfo",
        help="show CPU, memory, GPUs and versions (--measure: bandwidth and matmul probes)",
        description="Show this machine. With --measure, also measure its memory bandwidth and matmul "
        "throughput per dtype (about 10-20 s; cached per machine and thread count).",
    )
    add_json_option(p, what="the machine's facts (and probes)")
    p.add_argument("--measure", action="store_true", help="run (or reuse cached) hardware probes")
    p.add_argument(
        "--refresh", action="store_true", help="with --measure: ignore the cache and measure again"
    )
    add_threads_option(p, what="for the probes")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from lmprof.collect.system import collect_system_info
    from lmprof.render.system_view import render_system

    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be a positive integer, got {args.threads}")
    if (args.refresh or args.threads is not None) and not args.measure:
        raise UsageError("--refresh and --threads apply to the probes: add --measure")
    info = collect_system_info()  # torch's CUDA build read from its files: no import
    probes = cache_file = None
    from_cache = False
    if args.measure:
        from lmprof.collect.probe_cache import measured_hardware

        probes, cache_file, from_cache = measured_hardware(threads=args.threads, refresh=args.refresh)
    if args.json:
        if probes is not None:
            info["hardware_probes"] = {
                **probes.to_dict(),
                "cache_file": str(cache_file),
                "from_cache": from_cache,
            }
        print(json.dumps(info, indent=1))
        return 0
    rendered = [render_system(info)]
    if probes is not None:
        from lmprof.render.probes_view import render_probes

        rendered.append(render_probes(probes, cache_file, from_cache))
    console = report_console(*rendered)
    for part in rendered:
        console.print(part)
    return 0
