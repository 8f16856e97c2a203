"""llama-cpp-python's OpenAI-compatible server, started on loopback for `lmprof load` to measure:
a server no one here wrote.

    pip install 'llama-cpp-python[server]'        # builds llama.cpp from source, minutes
    python benchmarks/llama_cpp_server.py MODEL.gguf --port 8081 --threads 2 [--no-extra-buffers]
    lmprof load http://127.0.0.1:8081 --concurrency 1,2,4 --requests 12

--no-extra-buffers turns llama.cpp's repacked weight layouts off (see llama_cpp_peer.py: on an
Emerald Rapids and a Sapphire-class Xeon VM here, the AMX repacking died with SIGILL in a worker
thread, and the server process with it, at its first decode). llama-cpp-python's server has no
flag for it, so its model parameters are patched for the server's life.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from llama_cpp_peer import _model_params  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--no-extra-buffers", action="store_true")
    args = parser.parse_args()
    from llama_cpp.server.__main__ import main as server_main

    sys.argv = [
        "llama_cpp.server", "--model", str(args.gguf), "--host", "127.0.0.1", "--port", str(args.port),
        "--n_threads", str(args.threads), "--n_ctx", str(args.ctx),
        # Its default lets each new request cut the one being generated short (measured here: at 2
        # and 4 users 11 of 12 streams ended after one token); a server under load test serves all.
        "--interrupt_requests", "False",
    ]  # fmt: skip
    with _model_params(extra_buffers=not args.no_extra_buffers):
        server_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
