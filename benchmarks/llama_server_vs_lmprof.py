"""lmprof's continuous-batching server against llama.cpp's own `llama-server`, on CPU, on the
same f32 weights: both driven by `lmprof load` at 8 closed-loop users with the same prompts.

    python benchmarks/gguf_f32.py /tmp/smollm2-135m-f32.gguf
    python benchmarks/llama_server_vs_lmprof.py --llama-server PATH/llama-server \\
        --gguf /tmp/smollm2-135m-f32.gguf [--threads 1] [--rounds 2] [--out results.json] \\
        [--lmprof-serve-args "--native"] [--llama-server-args "--no-repack"]

llama-server is built from the llama.cpp that llama-cpp-python vendors, without network:

    pip download llama-cpp-python==0.3.36 --no-binary :all: --no-deps -d /tmp/llama-sdist
    tar xzf /tmp/llama-sdist/llama_cpp_python-0.3.36.tar.gz -C /tmp/llama-src
    cd /tmp/llama-src/llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON \\
        -DGGML_NATIVE=ON -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF \\
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
    cmake --build build --target llama-server -j2              # build/bin/llama-server

(LLAMA_USE_PREBUILT_UI=OFF: its default fetches the web UI from Hugging Face at build time.)

One server runs at a time. Rounds interleave the two (A B, B A, ...), each server started
fresh for its turn, so drift on the machine lands on both alike; the ratio lmprof /
llama-server of output tokens/s is taken per round. Both get `--threads N` (default 1) for
their compute, 8 request slots, and requests with ignore_eos, so every completion is exactly
--output-tokens long (checked: a round whose requests came back shorter is flagged). The
servers bind 127.0.0.1 and are stopped (SIGTERM, then kill) however the run ends.

llama.cpp's repacked weight layouts (AMX among them) died with SIGILL at the first decode on
Xeons here before (llama_cpp_peer.py); this build ran the f32 GGUF with them on. If it dies,
pass `--llama-server-args --no-repack`. llama-server keeps its prompt cache on (its default):
the prompts are random words, so requests share next to no prefix for it to reuse.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from lmprof.bench.server_process import ServerProcess, ServerStartError
from lmprof.collect.system import collect_cpu
from lmprof.record.load import load_load_run

SLOTS = 8
SERVED_NAME = "bench"
LMPROF, LLAMA = "lmprof", "llama-server"


class LlamaServerProcess(ServerProcess):
    """A `llama-server` on 127.0.0.1: ready when its /health answers 200 (it says 503 while
    the model loads), stopped as ServerProcess stops `lmprof serve`."""

    def __init__(self, binary: Path, args: list[str]) -> None:
        super().__init__("", [])
        self.port = _free_port()
        self.command = [str(binary), "--host", "127.0.0.1", "--port", str(self.port), *args]

    def start(self, timeout_s: float) -> str:
        began = time.perf_counter()
        # Its log (stdout and stderr) goes to the temporary file, read back only if it fails.
        self._proc = subprocess.Popen(
            self.command, stdout=self._stderr, stderr=self._stderr, stdin=subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{self.port}"
        deadline = began + timeout_s
        while time.perf_counter() < deadline:
            if self._proc.poll() is not None:
                break
            if _health_ok(url):
                self.url, self.startup_s = url, time.perf_counter() - began
                return url
            time.sleep(0.2)
        exited = self._proc.poll() is not None
        why = self._log_tail() if exited else f"/health not ready within {timeout_s:g} s"
        self.stop()
        raise ServerStartError(f"llama-server did not start: {why}")

    def _log_tail(self, lines: int = 5) -> str:
        self._stderr.seek(0)
        tail = [x for x in self._stderr.read().decode(errors="replace").splitlines() if x.strip()]
        return " | ".join(tail[-lines:]) if tail else f"it exited with {self._proc.returncode}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def server_for(name: str, args: argparse.Namespace) -> ServerProcess:
    threads = str(args.threads)
    if name == LMPROF:
        return ServerProcess(args.model, [
            "--engine", "lmprof", "--scheduler", "continuous", "--max-batch", str(SLOTS),
            "--threads", threads, "--port", "0", "--served-model-name", SERVED_NAME,
            *shlex.split(args.lmprof_serve_args),
        ])  # fmt: skip
    return LlamaServerProcess(args.llama_server, [
        "--model", str(args.gguf), "--alias", SERVED_NAME, "--parallel", str(SLOTS), "--cont-batching",
        "--ctx-size", str(args.ctx), "--threads", threads, "--threads-batch", threads, "--metrics", "--no-webui",
        *shlex.split(args.llama_server_args),
    ])  # fmt: skip


def drive(url: str, run_dir: Path, args: argparse.Namespace) -> dict:
    """One `lmprof load` level against `url`; its figures, plus the per-request token check."""
    command = [
        sys.executable, "-m", "lmprof", "load", url, "--model", SERVED_NAME,
        "--concurrency", str(SLOTS), "--requests", str(args.requests), "--warmup", str(args.warmup),
        "--input-tokens", str(args.input_tokens), "--output-tokens", str(args.output_tokens),
        "--seed", str(args.seed), "--json", "--no-progress", "--out", str(run_dir),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.load_timeout)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"lmprof load exited with {done.returncode}: {tail[0]}")
    summary = json.loads(done.stdout)
    (level,) = summary["levels"]
    measured = [r for r in load_load_run(run_dir).requests if not r.warmup and r.ok]
    out_tokens = [r.output_tokens or 0 for r in measured]
    lat = level["latency_s"]
    return {
        "output_tps": level["output_tps"],
        "ttft_p50_s": (lat["ttft"] or {}).get("p50"),
        "ttft_p99_s": (lat["ttft"] or {}).get("p99"),
        "tpot_p50_s": (lat["tpot"] or {}).get("p50"),
        "tpot_p99_s": (lat["tpot"] or {}).get("p99"),
        "duration_s": level["duration_s"],
        "sent": level["sent"],
        "completed": level["completed"],
        "input_tokens_mean": level["input_tokens"] / level["completed"] if level["completed"] else None,
        "output_tokens_min": min(out_tokens, default=0),
        "output_tokens_max": max(out_tokens, default=0),
        "count_methods": level["count_methods"],
        "ignore_eos_sent": summary["settings"].get("ignore_eos_sent"),
        "warnings": summary["warnings"],
    }


def _ms(value: float | None) -> str:
    return f"{value * 1000:.1f}" if value is not None else "-"


def print_table(rows: list[dict], ratios: list[float], args: argparse.Namespace) -> None:
    print(f"{'server':<13} {'round':>5} {'out tok/s':>9} {'TTFT p50':>9} {'p99':>8} {'TPOT p50':>9} "
          f"{'p99':>7}  {'done':>5}  out tok/req")  # fmt: skip
    print(f"{'':<13} {'':>5} {'':>9} {'ms':>9} {'ms':>8} {'ms':>9} {'ms':>7}")
    for row in rows:
        short = {row["output_tokens_min"], row["output_tokens_max"]} != {args.output_tokens}
        tokens = f"{row['output_tokens_min']}-{row['output_tokens_max']}" + ("  SHORT" if short else "")
        print(
            f"{row['server']:<13} {row['round']:>5} {row['output_tps']:>9.1f} {_ms(row['ttft_p50_s']):>9} "
            f"{_ms(row['ttft_p99_s']):>8} {_ms(row['tpot_p50_s']):>9} {_ms(row['tpot_p99_s']):>7}  "
            f"{row['completed']:>2}/{row['sent']:<2}  {tokens}"
        )
    if ratios:
        each = " ".join(f"{r:.2f}" for r in ratios)
        print(f"\nlmprof / llama-server output tok/s, per round: {each}; median {statistics.median(ratios):.2f} "
              f"(spread {min(ratios):.2f}-{max(ratios):.2f}, {len(ratios)} rounds)")  # fmt: skip


def _now() -> str:
    return f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llama-server", type=Path, required=True, help="the llama-server binary")
    p.add_argument("--gguf", type=Path, required=True, help="f32 GGUF of the model (gguf_f32.py)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="what `lmprof serve` serves")
    p.add_argument("--threads", type=int, default=1, help="compute threads of each server")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--requests", type=int, default=16, help="measured requests per server per round")
    p.add_argument("--warmup", type=int, default=SLOTS, help="requests sent first in each round, not counted")
    p.add_argument("--input-tokens", type=int, default=64, help="about this many prompt tokens")
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="the prompts (the same for both servers)")
    p.add_argument("--ctx", type=int, default=SLOTS * 256, help="llama-server's, shared by its slots")
    p.add_argument("--lmprof-serve-args", default="", help="more `lmprof serve` flags, one string")
    p.add_argument("--llama-server-args", default="", help="more llama-server flags, e.g. --no-repack")
    p.add_argument("--start-timeout", type=float, default=600, help="s (a first serve may build kernels)")
    p.add_argument("--load-timeout", type=float, default=1800, help="s for one `lmprof load`")
    p.add_argument("--runs-dir", type=Path, help="keep each round's `lmprof load` run here")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args()
    if args.ctx // SLOTS < 2 * args.input_tokens + args.output_tokens:
        p.error(f"--ctx {args.ctx} gives each of {SLOTS} slots too few tokens for a prompt and its output")
    if not args.llama_server.is_file() or not args.gguf.is_file():
        p.error("--llama-server and --gguf must name existing files")

    cpu = collect_cpu()["model"]
    started_at, loadavg_start = _now(), _loadavg()
    print(f"CPU {cpu} ({os.cpu_count()} cores); start {started_at}, load average {loadavg_start}", flush=True)
    rows: list[dict] = []
    scratch = tempfile.TemporaryDirectory(prefix="llama-vs-lmprof-")
    runs_dir = args.runs_dir or Path(scratch.name)
    try:
        for rnd in range(1, args.rounds + 1):
            order = [LMPROF, LLAMA] if rnd % 2 else [LLAMA, LMPROF]
            for name in order:
                server = server_for(name, args)
                try:
                    url = server.start(timeout_s=args.start_timeout)
                    result = drive(url, runs_dir / f"round{rnd}-{name}", args)
                finally:
                    server.stop()
                rows.append({"server": name, "round": rnd, "command": server.command,
                             "startup_s": server.startup_s, **result})  # fmt: skip
                print(f"round {rnd}/{args.rounds} {name}: {result['output_tps']:.1f} output tok/s",
                      file=sys.stderr, flush=True)  # fmt: skip
    finally:
        scratch.cleanup()
    ended_at, loadavg_end = _now(), _loadavg()

    tps = {(r["server"], r["round"]): r["output_tps"] for r in rows}
    ratios = [tps[(LMPROF, n)] / tps[(LLAMA, n)] for n in range(1, args.rounds + 1) if tps[(LLAMA, n)] > 0]
    print(f"\n{args.model} f32: lmprof serve (continuous, max batch {SLOTS}) vs llama-server "
          f"(--parallel {SLOTS}, cont. batching), {args.threads} thread(s) each; `lmprof load` at "
          f"{SLOTS} users, {args.input_tokens}-word prompts, {args.output_tokens} output tokens (ignore_eos), "
          f"{args.requests} requests + {args.warmup} warmup per round")  # fmt: skip
    print(f"lmprof serve extra args: {args.lmprof_serve_args or '-'}; llama-server extra args: "
          f"{args.llama_server_args or '-'}")  # fmt: skip
    print_table(rows, ratios, args)
    print(f"CPU {cpu}; {started_at} -> {ended_at}; load average {loadavg_start} -> {loadavg_end}")

    if args.out:
        record = {
            "cpu": cpu, "cores": os.cpu_count(), "started_at": started_at, "ended_at": ended_at,
            "loadavg_start": loadavg_start, "loadavg_end": loadavg_end,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "rows": rows, "ratios_lmprof_over_llama": ratios,
            "ratio_median": statistics.median(ratios) if ratios else None,
        }  # fmt: skip
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
