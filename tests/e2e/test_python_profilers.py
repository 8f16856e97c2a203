"""Function-level Python profiles: py-spy sampling this process, cProfile, their table and cost.

The py-spy tests attach to the pytest process itself; they skip where ptrace is refused.
"""

from __future__ import annotations

import io
import json
import os
import pstats
import stat
import time

import pytest
from rich.console import Console

from lmprof.analyze.python_functions import function_rows
from lmprof.collect.overhead import measure_slowdown, slowdown
from lmprof.collect.python_cprofile import CProfileCollector
from lmprof.collect.python_sampler import PySpySampler, find_py_spy, profile_from_speedscope
from lmprof.errors import UsageError
from lmprof.record.deep import DeepProfile, deep_from_dict, deep_to_dict
from lmprof.render.python_table import render_python_table

HEAVY_S, LIGHT_S, ROUNDS = 0.075, 0.025, 10  # 3:1, about 1 s in all
# Sampling at 100 Hz on two shared cores: a second of work is ~100 samples, and py-spy's
# start-up and scheduling lose or bunch a few; 30% keeps the test meaningful and stable.
TOTAL_TOLERANCE = 0.30


def burn_heavy() -> None:
    end = time.perf_counter() + HEAVY_S
    while time.perf_counter() < end:
        pass


def burn_light() -> None:
    end = time.perf_counter() + LIGHT_S
    while time.perf_counter() < end:
        pass


def busy_workload() -> None:
    for _ in range(ROUNDS):
        burn_heavy()
        burn_light()


def _ptrace_refusal() -> str | None:
    sampler = PySpySampler().start()
    profile = sampler.stop()
    return None if profile.available else profile.reason


@pytest.fixture(scope="module")
def py_spy_run():
    """One sampled run of the busy workload, shared by the py-spy tests (it takes ~1 s)."""
    if not find_py_spy().is_file():
        pytest.skip("py-spy is not installed")
    refusal = _ptrace_refusal()
    if refusal is not None:
        pytest.skip(f"py-spy cannot attach to this process here: {refusal}")
    sampler = PySpySampler(rate_hz=100).start()
    start = time.perf_counter()
    busy_workload()
    wall_s = time.perf_counter() - start
    return sampler.stop(), wall_s


def _row(profile, name):
    return next(r for r in profile.functions if r["name"] == name)


# --- py-spy ------------------------------------------------------------------------------


def test_py_spy_flame_weighs_about_the_profiled_wall_time(py_spy_run):
    profile, wall_s = py_spy_run
    assert profile.available and profile.sampler == "py-spy"
    flame = profile.flame
    assert flame.name == "python" and flame.unit == "seconds"
    assert abs(flame.total - wall_s) <= TOTAL_TOLERANCE * wall_s, (flame.total, wall_s)
    assert profile.total_s == pytest.approx(flame.total)
    assert profile.samples == pytest.approx(flame.total * 100)


def test_py_spy_heavier_function_has_more_self_time(py_spy_run):
    profile, _ = py_spy_run
    heavy, light = _row(profile, "burn_heavy"), _row(profile, "burn_light")
    assert heavy["self_s"] > 1.5 * light["self_s"] > 0
    assert heavy["file"].endswith("test_python_profilers.py")
    assert heavy["line"] == burn_heavy.__code__.co_firstlineno
    assert heavy["calls"] is None  # a sampler cannot count calls
    workload = _row(profile, "busy_workload")
    assert workload["total_s"] >= heavy["total_s"] + light["total_s"] - 0.02


def test_py_spy_stacks_are_root_first(py_spy_run):
    profile, _ = py_spy_run
    heavy_stacks = [
        s for s in profile.flame.stacks if s[-1].startswith("py:burn_heavy (test_python_profilers.py:")
    ]
    assert heavy_stacks
    for stack in heavy_stacks:
        assert stack[0] == "thread:MainThread"
        names = [frame.split(" (")[0] for frame in stack]
        assert names.index("py:busy_workload") < names.index("py:burn_heavy") == len(names) - 1


def test_py_spy_profile_fits_the_deep_record(py_spy_run):
    profile, _ = py_spy_run
    deep = DeepProfile(python=profile.to_record(), flames=[profile.flame])
    back = deep_from_dict(json.loads(json.dumps(deep_to_dict(deep))))
    assert back.python["sampler"] == "py-spy" and back.python["rate_hz"] == 100
    assert back.python["available"] is True and back.python["reason"] is None
    assert {"name", "file", "line", "calls", "primitive_calls", "self_s", "total_s"} <= set(
        back.python["functions"][0]
    )
    assert back.flame("python").total == pytest.approx(profile.flame.total)


def test_py_spy_missing_degrades_with_a_reason(tmp_path):
    missing = tmp_path / "no-such" / "py-spy"
    sampler = PySpySampler(py_spy_path=missing).start()
    assert sampler.reason is not None
    profile = sampler.stop()
    assert profile.available is False
    assert profile.reason == f"py-spy not found at '{missing}' (pip install py-spy)"
    assert profile.flame is None and profile.functions == []


def _script(path, body):
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_py_spy_that_cannot_attach_says_why(tmp_path):
    refusing = _script(tmp_path / "py-spy", 'echo "Error: Operation not permitted (os error 1)"\nexit 1\n')
    profile = PySpySampler(py_spy_path=refusing).start().stop()
    assert profile.available is False
    assert profile.reason == "py-spy could not attach: Error: Operation not permitted (os error 1)"


def test_native_failure_falls_back_to_python_frames(tmp_path, py_spy_run):
    real = find_py_spy()
    wrapper = _script(
        tmp_path / "py-spy",
        'for a in "$@"; do [ "$a" = --native ] && { echo "Error: no native unwinding here"; exit 1; }; done\n'
        f'exec "{real}" "$@"\n',
    )
    sampler = PySpySampler(native=True, py_spy_path=wrapper).start()
    burn_heavy()
    profile = sampler.stop()
    assert profile.available is True
    assert profile.native is False
    assert (
        profile.notes[0] == "native frames unavailable (Error: no native unwinding here); Python frames only"
    )


def test_recursive_function_counts_once_per_sample():
    data = {
        "shared": {
            "frames": [
                {"name": "main", "file": "/src/app/main.py", "line": 1},
                {"name": "walk", "file": "/src/app/tree.py", "line": 10},
            ]
        },
        "profiles": [{"name": 'Thread 7 "MainThread"', "samples": [[0, 1, 1, 1], [0, 1], [0]]}],
    }
    flame, rows, samples = profile_from_speedscope(data, rate_hz=50, roots=["/src"])
    assert samples == 3
    walk = next(r for r in rows if r["name"] == "walk")
    assert walk["total_s"] == pytest.approx(2 / 50)  # in two samples, whatever the depth
    assert walk["self_s"] == pytest.approx(2 / 50)
    assert walk["file"] == "app/tree.py"
    assert flame.stacks[0] == ["thread:MainThread", "py:main (main.py:1)", *["py:walk (tree.py:10)"] * 3]
    assert flame.total == pytest.approx(3 / 50)


def test_native_frames_are_labelled_by_library():
    data = {
        "shared": {
            "frames": [
                {"name": "forward", "file": "/site/torch/nn/linear.py", "line": 120},
                {"name": "at::native::addmm", "file": "/site/torch/lib/libtorch_cpu.so", "line": 0},
            ]
        },
        "profiles": [{"name": 'Thread 7 "MainThread"', "samples": [[0, 1]]}],
    }
    flame, rows, _ = profile_from_speedscope(data, rate_hz=100, native=True, roots=["/site"])
    assert flame.stacks == [
        ["thread:MainThread", "py:forward (linear.py:120)", "native:at::native::addmm (libtorch_cpu.so)"]
    ]
    native = next(r for r in rows if r["name"] == "at::native::addmm")
    assert (native["file"], native["line"], native["self_s"]) == (
        "libtorch_cpu.so",
        None,
        pytest.approx(0.01),
    )


# --- cProfile ----------------------------------------------------------------------------


def called_often(i: int) -> int:
    return i * 2


def countdown(n: int) -> int:
    return 0 if n == 0 else countdown(n - 1)


def test_cprofile_counts_calls_exactly_and_saves_pstats(tmp_path):
    path = tmp_path / "run" / "python.pstats"
    collector = CProfileCollector(pstats_path=path).start()
    for i in range(37):
        called_often(i)
    countdown(4)
    profile = collector.stop()
    assert profile.available and profile.sampler == "cprofile" and profile.rate_hz is None
    often = next(r for r in profile.functions if r["name"] == "called_often")
    assert often["calls"] == 37 and often["primitive_calls"] == 37
    assert often["line"] == called_often.__code__.co_firstlineno
    recursive = next(r for r in profile.functions if r["name"] == "countdown")
    assert (recursive["calls"], recursive["primitive_calls"]) == (5, 1)
    assert recursive["total_s"] >= recursive["self_s"] >= 0

    assert profile.pstats_file == str(path)
    stats = pstats.Stats(str(path))
    keys = {(os.path.basename(f), name): v for (f, _line, name), v in stats.stats.items()}
    assert keys[("test_python_profilers.py", "called_often")][1] == 37


def test_cprofile_table_renders_pstats_call_notation():
    collector = CProfileCollector().start()
    countdown(2)
    profile = collector.stop()
    python = profile.to_record()
    console = Console(width=120, color_system=None, record=True, file=io.StringIO())
    console.print(render_python_table(python, sort_by="calls"))
    line = next(line for line in console.export_text().splitlines() if line.lstrip().startswith("countdown "))
    assert " 3/1 " in line


# --- analysis ----------------------------------------------------------------------------


def _hand_built(sampler="cprofile"):
    counted = sampler == "cprofile"
    return {
        "sampler": sampler, "rate_hz": None if counted else 100, "native": False, "nonblocking": not counted or None,
        "available": True, "reason": None, "total_s": 2.0, "wall_s": 2.5, "samples": None if counted else 200,
        "pstats_file": "runs/a/python.pstats" if counted else None, "slowdown": 1.27, "notes": [],
        "functions": [
            {"name": "generate", "file": "transformers/generation/utils.py", "line": 2280,
             "calls": 1 if counted else None, "primitive_calls": 1 if counted else None, "self_s": 0.1, "total_s": 2.0},
            {"name": "forward", "file": "transformers/models/llama/modeling_llama.py", "line": 400,
             "calls": 16 if counted else None, "primitive_calls": 16 if counted else None, "self_s": 0.4, "total_s": 1.8},
            {"name": "<built-in method torch._C._nn.linear>", "file": None, "line": None,
             "calls": 2240 if counted else None, "primitive_calls": 2240 if counted else None, "self_s": 1.2, "total_s": 1.2},
            {"name": "sample", "file": "lmprof/workload.py", "line": 12,
             "calls": 16 if counted else None, "primitive_calls": 16 if counted else None, "self_s": 0.3, "total_s": 0.3},
        ],
    }  # fmt: skip


def test_rows_sort_by_self_total_and_calls():
    python = _hand_built()
    assert [r["name"][:8] for r in function_rows(python, "self")] == [
        "<built-i",
        "forward",
        "sample",
        "generate",
    ]
    assert [r["name"][:8] for r in function_rows(python, "total")] == [
        "generate",
        "forward",
        "<built-i",
        "sample",
    ]
    # forward and sample tie on 16 calls: the one with more self time comes first
    assert [r["name"][:8] for r in function_rows(python, "calls")] == [
        "<built-i",
        "forward",
        "sample",
        "generate",
    ]
    assert function_rows(python, "self", limit=2)[1]["self_share"] == pytest.approx(0.2)


def test_sampler_rows_cannot_sort_by_calls():
    with pytest.raises(UsageError, match="py-spy samples stacks and cannot count calls"):
        function_rows(_hand_built("py-spy"), "calls")
    with pytest.raises(UsageError, match="cannot sort Python functions by 'name'"):
        function_rows(_hand_built(), "name")


def test_slowdown_is_profiled_over_baseline():
    assert slowdown(2.0, 2.54) == pytest.approx(1.27)
    assert slowdown(0.0, 1.0) is None


# --- rendering ---------------------------------------------------------------------------

GOLDEN_PY_SPY = """\
Python functions (by self time)

 function                          file:line                       calls     self    total   self %
 ──────────────────────────────────────────────────────────────────────────────────────────────────
 <built-in method                  -                                   -   1.20 s   1.20 s    60.0%
 torch._C._nn.linear>
 forward                           transformers/models/llama/mod       -   400 ms   1.80 s    20.0%
                                   eling_llama.py:400
 sample                            lmprof/workload.py:12               -   300 ms   300 ms    15.0%
 generate                          transformers/generation/utils       -   100 ms   2.00 s     5.0%
                                   .py:2280

py-spy at 100 Hz · Python frames · nonblocking · 2.00 s sampled in 2.50 s wall (idle dropped) ·
measured slowdown 1.27x
"""


def test_py_spy_table_matches_golden():
    console = Console(width=100, color_system=None, record=True, file=io.StringIO())
    console.print(render_python_table(_hand_built("py-spy"), sort_by="self", limit=30))
    text = "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"
    assert text == GOLDEN_PY_SPY


def test_cprofile_caption_names_the_pstats_file_and_unavailable_says_why():
    console = Console(width=160, color_system=None, record=True, file=io.StringIO())
    console.print(render_python_table(_hand_built("cprofile"), sort_by="calls"))
    text = console.export_text()
    assert "cProfile (every call, main thread) · 2.00 s profiled · measured slowdown 1.27x" in text
    assert "pstats: runs/a/python.pstats" in text
    assert " 2240 " in text

    unavailable = {"sampler": "py-spy", "available": False, "reason": "py-spy could not attach: Error: EPERM"}
    console = Console(width=160, color_system=None, record=True, file=io.StringIO())
    console.print(render_python_table(unavailable))
    assert "no Python profile from py-spy: py-spy could not attach: Error: EPERM" in console.export_text()


# --- overhead ----------------------------------------------------------------------------


class _SlowingCollector:
    """Makes the fake workload take 1.5x as long while it is started."""

    active = False
    starts = 0

    def start(self):
        type(self).active = True
        type(self).starts += 1

    def stop(self):
        type(self).active = False


def test_measure_slowdown_pairs_runs_with_and_without_the_collector():
    now = [0.0]

    def workload():
        now[0] += 1.5 if _SlowingCollector.active else 1.0

    result = measure_slowdown(workload, _SlowingCollector, repeats=3, clock=lambda: now[0])
    assert result == {"baseline_s": 1.0, "profiled_s": 1.5, "slowdown": 1.5, "repeats": 3}
    assert _SlowingCollector.starts == 3 and not _SlowingCollector.active
