"""A gap row names the Python function that took its time: a tiny model profiled in this
process with py-spy on, and a busy loop in a function no phase wraps, inside a parent phase's
own time. py-spy attaches to the pytest process itself; the test skips where ptrace is refused.
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import pytest
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

import lmprof
from lmprof.collect.python_sampler import PySpySampler, find_py_spy
from lmprof.record.run import load_run, validate_run_dict
from lmprof.render.html_report import render_html_report
from lmprof.render.terminal import render_run

GAP_S, CHILD_S = 0.6, 0.3  # far above py-spy's 10 ms interval and the clock's few ms


def burn_unnamed(seconds: float) -> None:
    """Python that no phase names: the cost the gap row must name."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def burn_in_child(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.fixture(scope="module")
def py_spy_attaches():
    if not find_py_spy().is_file():
        pytest.skip("py-spy is not installed")
    profile = PySpySampler(timeline=False).start().stop()
    if not profile.available:
        pytest.skip(f"py-spy cannot attach to this process here: {profile.reason}")


def test_the_gap_row_names_the_unnamed_function(py_spy_attaches, tiny_model, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    with lmprof.profile(python_profiler="py-spy") as session:
        with session.phase("prepare"):
            model = AutoModelForCausalLM.from_pretrained(tiny_model)  # load_model and its children
            burn_unnamed(GAP_S)  # prepare's own time
            with session.phase("warm_up"):
                burn_in_child(CHILD_S)  # a child's time: never prepare's gap
        model.generate(**tokenizer("Hello", return_tensors="pt"), max_new_tokens=2, do_sample=False)
    run = session.run

    gap = next(g for g in run.phase_gaps if g["parent"] == "prepare")
    functions = gap.get("functions") or []
    assert functions, f"no functions for (rest of prepare); notes: {run.deep.python['notes']}"
    top = re.fullmatch(r"(\d+)% burn_unnamed \((.+):(\d+)\)", functions[0])
    assert top, functions
    assert int(top.group(1)) >= 60  # the loop is nearly all of prepare's own time
    assert top.group(2).endswith(Path(__file__).name)
    assert int(top.group(3)) == burn_unnamed.__code__.co_firstlineno
    # The child's samples stay the child's, its edges included: samples within the clock's
    # error of a phase edge are left out rather than risk naming the wrong phase.
    assert not any("burn_in_child" in f for f in functions)
    assert gap["samples"] >= 0.5 * GAP_S * 100  # py-spy at 100 Hz, on a shared machine

    console = Console(width=160, color_system=None, record=True, file=io.StringIO())
    console.print(render_run(run))
    lines = console.export_text().splitlines()
    rest = next(i for i, line in enumerate(lines) if line.lstrip().startswith("(rest of prepare)"))
    assert lines[rest + 1].strip() == f"· {functions[0]}"
    assert f"(rest of prepare): {functions[0]}" in render_html_report(run)

    saved = load_run(session.save(tmp_path))
    assert next(g for g in saved.phase_gaps if g["parent"] == "prepare")["functions"] == functions
    validate_run_dict(json.loads(saved.to_json()))


def test_a_timeline_that_cannot_start_leaves_the_profile_whole(py_spy_attaches, tmp_path):
    wrapper = tmp_path / "py-spy"
    wrapper.write_text(
        '#!/bin/sh\nfor a in "$@"; do [ "$a" = chrometrace ] && { echo "Error: no chrome traces here"; exit 1; }; done\n'
        f'exec "{find_py_spy()}" "$@"\n'
    )
    wrapper.chmod(0o755)
    sampler = PySpySampler(py_spy_path=wrapper).start()
    burn_unnamed(0.1)
    profile = sampler.stop()
    assert profile.available and profile.flame is not None and profile.timeline is None
    assert (
        "no time-stamped samples, so the gap rows name no functions: Error: no chrome traces here"
        in profile.notes
    )
