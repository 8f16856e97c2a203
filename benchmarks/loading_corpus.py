"""Where loading time goes, checkpoint kind by checkpoint kind: the loading corpus's phase tables.

Profiles each checkpoint of the corpus (tests/helpers/loading_corpus.py: the tiny and the
default presets as safetensors, a sharded checkpoint, a `.bin` checkpoint, a GGUF with a
105,792-token vocabulary, and the default model's own Q4_1 GGUF) with `lmprof profile`, in
fresh processes, and prints each one's phase table with the largest time no phase names.
The rule the corpus test checks: no phase's own time over 10% of the run.

    python benchmarks/loading_corpus.py [--only NAME_PREFIX] [--max-new-tokens 4] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the corpus builders are shared with the corpus test

from helpers.loading_corpus import CORPUS  # noqa: E402
from rich.console import Console  # noqa: E402

from lmprof.analyze.phases import phase_gaps  # noqa: E402
from lmprof.record.run import load_run  # noqa: E402
from lmprof.render.terminal import gaps_text, phase_table  # noqa: E402

RULE_SHARE = 0.10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="profile only the corpus entries whose name starts so")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    args = parser.parse_args()
    chosen = [name for name in CORPUS if name.lower().startswith(args.only.lower())]
    if not chosen:
        parser.error(f"no corpus entry starts with {args.only!r}: {', '.join(CORPUS)}")
    console = Console(width=110, highlight=False)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    console.print(f"loading corpus · {now} · load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="lmprof-corpus-") as scratch_dir:
        scratch = Path(scratch_dir)
        out_root = args.out or scratch / "runs"
        failures = 0
        for i, name in enumerate(chosen):
            builder, _ = CORPUS[name]
            spec = builder(scratch)
            if spec is None:
                console.print(f"\n[bold]{name}[/bold]: skipped (could not be fetched here)")
                continue
            out = out_root / f"{i}-{name.split(' ')[0].lower()}"
            done = subprocess.run(
                [sys.executable, "-m", "lmprof", "profile", spec, "--max-new-tokens", str(args.max_new_tokens),
                 "--out", str(out)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                failures += 1
                console.print(f"\n[bold]{name}[/bold]: lmprof profile failed: {done.stderr.strip()[-300:]}")
                continue
            run = load_run(out)
            over = phase_gaps(run, gap_share=RULE_SHARE)
            verdict = (
                "no phase's own time over 10% of the run"
                if not over
                else "OVER 10%: "
                + ", ".join(f"{g['parent'] or '(unattributed)'} {100 * g['share']:.1f}%" for g in over)
            )
            failures += bool(over)
            console.print(f"\n[bold]{name}[/bold] ({spec}): wall {run.wall_s:.2f} s; {verdict}")
            console.print(gaps_text(run))
            console.print(phase_table(run))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
