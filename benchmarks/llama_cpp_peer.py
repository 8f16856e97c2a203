"""llama.cpp as a contender of benchmarks/engine_vs_peers.py: its own greedy decode loop over a
GGUF of the engine's weights (f32, or q8_0 from gguf_f32.py --type q8_0), through
llama-cpp-python, and its teacher-forced agreement with a reference's tokens.

llama.cpp repacks weights into "extra buffer types" where it has a kernel for them (AMX on
Intel Xeons, among others). On an Emerald Rapids VM llama-cpp-python 0.3.36 repacked q8_0 for
AMX and its first `tilezero` raised SIGILL in a worker thread, killing the process, though the
process had been granted AMX state. So each GGUF is first decoded in a child process with
llama.cpp's defaults; where that child dies and a second one with the extra buffer types off
decodes, the contender runs with them off and says so; where both fail, it is skipped with the
child's error.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

Contender = Callable[[int], tuple[float, list[int]]]  # new tokens -> (decode tokens/s, tokens)
CHILD_TIMEOUT_S = 300

# The child: load the GGUF (argv[1]) with or without the extra buffer types (argv[2]) on the
# contender's threads (argv[3]; llama.cpp's worker threads are where the SIGILL came), then
# evaluate a prompt and two single-token decode steps, the two paths the contender takes.
DECODE_CHECK = """
import sys
from pathlib import Path
here = Path(sys.argv[4])
sys.path[:0] = [str(here), str(here.parent / "src")]
from llama_cpp_peer import load
llm = load(sys.argv[1], threads=int(sys.argv[3]), extra_buffers=sys.argv[2] == "on")
llm.eval(llm.tokenize(b"The quick brown fox"))
llm.eval([1])
llm.eval([2])
"""


@contextmanager
def _model_params(extra_buffers: bool):
    """llama-cpp-python 0.3.36's Llama() takes no argument for the extra buffer types: it reads
    its model parameters from llama_model_default_params(), so that is replaced for the one
    call inside this block, and restored after it."""
    import llama_cpp.llama_cpp as low

    defaults = low.llama_model_default_params
    if not extra_buffers:
        if not any(field[0] == "use_extra_bufts" for field in defaults()._fields_):
            raise RuntimeError(f"this llama-cpp-python has no use_extra_bufts ({low.__file__})")

        def without_extra_buffers():
            params = defaults()
            params.use_extra_bufts = False
            return params

        low.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        low.llama_model_default_params = defaults


def load(gguf: str, threads: int, extra_buffers: bool = True):
    import llama_cpp

    with _model_params(extra_buffers):
        return llama_cpp.Llama(model_path=gguf, n_threads=threads, n_ctx=512, n_batch=512, verbose=False)


def _decode_fails(gguf: Path, threads: int, extra_buffers: bool) -> str | None:
    """How a child that loads `gguf` and decodes with llama.cpp failed ("died with SIGILL",
    "failed: ..."), or None where it decoded."""
    here = str(Path(__file__).resolve().parent)
    args = [
        sys.executable,
        "-c",
        DECODE_CHECK,
        str(gguf),
        "on" if extra_buffers else "off",
        str(threads),
        here,
    ]
    try:
        child = subprocess.run(
            args, capture_output=True, text=True, errors="replace", timeout=CHILD_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return f"did not finish in {CHILD_TIMEOUT_S} s"
    if child.returncode == 0:
        return None
    if child.returncode < 0:
        try:
            return f"died with {signal.Signals(-child.returncode).name}"
        except ValueError:
            return f"died with signal {-child.returncode}"
    return "failed: " + (child.stderr.strip().splitlines() or [f"exit {child.returncode}"])[-1]


def llama_cpp_contender(
    gguf: Path | None, kind: str, prompt: list[int], threads: int, reference: Callable[[], list[int]]
) -> tuple[Contender | None, Callable[[], float | None] | None, str]:
    """llama.cpp's decode loop over a GGUF of `kind` (f32, q8_0) and its teacher-forced agreement
    with `reference()`'s tokens, with a note on how it runs; or (None, None, why not)."""
    try:
        import llama_cpp
    except ImportError:
        return None, None, "llama_cpp (llama-cpp-python) is not importable here"
    if gguf is None or not gguf.is_file():
        make = "" if kind == "f32" else f" --type {kind}"
        option = "--gguf" if kind == "f32" else "--gguf-q8"
        return None, None, f"no {kind} GGUF at {gguf}: make one with `python benchmarks/gguf_f32.py {gguf}{make}` (or pass {option})"  # fmt: skip
    note = f"llama-cpp-python {llama_cpp.__version__}"
    extra_buffers = True
    failed = _decode_fails(gguf, threads, extra_buffers=True)
    if failed is not None:
        still = _decode_fails(gguf, threads, extra_buffers=False)
        if still is not None:
            return None, None, f"{note} cannot decode {gguf.name} here: {failed}; with its extra buffer types off: {still}"  # fmt: skip
        extra_buffers = False
        note += f", extra buffer types off (with them on, a decode {failed})"
    llm = load(str(gguf), threads, extra_buffers)
    n_vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:
        # Llama.eval fills llm.scores only with logits_all=True (0.3.36); read the context's own
        # logits of the last evaluated position instead of paying for every position's.
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))

    def run(new_tokens: int) -> tuple[float, list[int]]:
        llm.reset()
        llm.eval(prompt)
        tokens: list[int] = []
        stamps: list[float] = []
        for _ in range(new_tokens):
            token = int(last_logits().argmax())  # greedy
            stamps.append(time.perf_counter())
            tokens.append(token)
            llm.eval([token])
        return (len(stamps) - 1) / (stamps[-1] - stamps[0]), tokens

    def forced() -> float | None:
        tokens = reference()
        llm.reset()
        llm.eval(prompt)
        predicted = [int(last_logits().argmax())]
        for token in tokens[:-1]:  # fed the reference's own context, as the engine's check is
            llm.eval([token])
            predicted.append(int(last_logits().argmax()))
        from lmprof.analyze.ablation import token_agreement  # lazily: the server launcher runs without lmprof

        return token_agreement(predicted, tokens)

    return run, forced, note
