"""A gap row names its Python functions: py-spy's time-stamped stacks placed on the session
clock, counted where they fall in a parent's own time (never inside a child), the frame each
is counted for, and the names in the terminal table, the HTML table and the Run JSON."""

from __future__ import annotations

import io
import json
import os
import threading

import pytest
from helpers.runs_for_tests import phase
from rich.console import Console

import lmprof
from lmprof.analyze.gap_functions import add_gap_functions, gap_windows, named_frame, samples_by_function
from lmprof.analyze.phases import phase_gaps
from lmprof.collect.py_spy_timeline import (
    MARK_STEPS,
    StackSpan,
    Timeline,
    clock_mark,
    timeline_from_chrometrace,
)
from lmprof.record.run import Run, validate_run_dict
from lmprof.render.html_tables import phase_table_html
from lmprof.render.terminal import render_run

APP = "/srv/app"
INTERVAL_S = 0.25  # four samples a second keeps the counts small
LMPROF = os.path.dirname(lmprof.__file__)


def _frame(name: str, file: str = f"{APP}/work.py", line: int = 1) -> tuple[str, str, int]:
    return name, file, line


def _stack(*names: str) -> tuple:
    return tuple(_frame(n) for n in ("main", *names))


def _span(start: float, end: float, *names: str) -> StackSpan:
    return StackSpan(start, end, _stack(*names))


def _run() -> Run:
    """outer 0-10 s holds child 2-6 s: 6 s of outer's own time; 2 s after outer unattributed."""
    phases = [phase("outer", 0.0, 10.0), phase("child", 2.0, 6.0, depth=1, parent=0)]
    run = Run(run_id="r", created_at="t", lmprof_version="0", status="complete", phases=phases, wall_s=12.0)
    run.phase_gaps = phase_gaps(run)
    return run


def _timeline(*spans: StackSpan, error_s: float = 0.0) -> Timeline:
    return Timeline(spans=list(spans), interval_s=INTERVAL_S, offset_error_s=error_s)


def test_a_sample_inside_a_child_does_not_count_and_one_in_the_gap_does():
    windows = gap_windows(_run(), ["outer"])["outer"]
    assert windows == [(0.0, 2.0), (6.0, 10.0)]
    spans = [
        _span(3.0, 4.0, "in_child"),  # 4 samples inside child: child's time, not outer's
        _span(7.0, 8.0, "in_gap"),  # 4 samples at 7.125 ... 7.875
        _span(0.5, 0.75, "in_gap"),  # 1 sample at 0.625
        _span(5.5, 6.5, "straddles"),  # samples at 5.625, 5.875 in child; 6.125, 6.375 outer's own
    ]
    counts = samples_by_function(spans, windows, INTERVAL_S)
    assert counts == {_frame("in_gap"): 5, _frame("straddles"): 2}


def test_a_sample_within_the_clock_error_of_an_edge_is_left_out():
    # 6.125 s is 0.125 s after child ended: with a 0.2 s clock error it may be child's
    counts = samples_by_function([_span(5.5, 6.5, "straddles")], [(6.0, 10.0)], INTERVAL_S, margin_s=0.2)
    assert counts == {_frame("straddles"): 1}  # 6.375 only


def test_gap_rows_get_the_top_three_with_their_share(tmp_path):
    run = _run()
    spans = [
        _span(0.0, 2.0, "loads"),
        _span(6.0, 7.0, "parses"),
        _span(7.0, 7.5, "checks"),
        _span(7.5, 7.75, "rare"),
        _span(7.75, 10.0, "loads"),
        _span(10.5, 11.5, "after"),  # outside every top-level phase: (unattributed)
        _span(2.5, 5.5, "in_child"),
    ]
    add_gap_functions(run, _timeline(*spans), roots=[APP])
    gaps = {g["parent"]: g for g in run.phase_gaps}
    # 17 of outer's 24 samples in loads (71%), 4 in parses, 2 in checks; rare (1) is fourth
    assert gaps["outer"]["functions"] == [
        "71% loads (work.py:1)",
        "17% parses (work.py:1)",
        "8% checks (work.py:1)",
    ]
    assert gaps["outer"]["samples"] == 24
    assert gaps[None]["functions"] == ["100% after (work.py:1)"] and gaps[None]["samples"] == 4
    validate_run_dict(json.loads(run.to_json()))


def test_the_named_frame_passes_over_threading_and_lmprof_to_the_users_function():
    wait = _frame("Condition.wait", threading.__file__, 320)
    wrapper = _frame("wrapper", f"{LMPROF}/collect/instrument.py", 90)
    user = _frame("load_shards")
    assert named_frame((_frame("main"), user, wait)) == user
    assert named_frame((_frame("main"), user, wrapper)) == user
    assert named_frame((_frame("main"), user)) == user
    # Under `lmprof profile`, lmprof's own work (nothing of anyone else's above its command
    # line) is named as lmprof's, not as the interpreter's start-up or the lmprof script.
    entry = _frame("main", f"{LMPROF}/cli/main.py", 10)
    reap = _frame("_reap", f"{LMPROF}/collect/memory_sampler.py", 40)
    script = _frame("<module>", "/venv/bin/lmprof", 8)
    session = _frame("ProfileSession.stop", f"{LMPROF}/session.py", 150)
    assert named_frame((script, entry, session, reap)) == reap
    # `lmprof run script.py`: the user's script runs above lmprof's command line
    assert named_frame((script, entry, _frame("<module>", f"{APP}/script.py"), user, wrapper)) == user


def _chrometrace(tid: int, samples: list[tuple[int, list[tuple[str, str]]]], end_us: int) -> list[dict]:
    """What py-spy writes for one thread sampled at these (µs, root-first stack) points:
    only the changes of stack, as begin/end events, and an end for all at `end_us`."""
    events, before = [], []

    def event(ph, frame, ts):
        return {"ph": ph, "name": frame[0], "tid": tid, "ts": ts, "args": {"filename": frame[1], "line": 1}}

    for ts, stack in [*samples, (end_us, [])]:
        same = next(
            (i for i, (a, b) in enumerate(zip(before, stack)) if a != b), min(len(before), len(stack))
        )
        events += [event("E", f, ts) for f in reversed(before[same:])]
        events += [event("B", f, ts) for f in stack[same:]]
        before = stack
    return events


MARK = (clock_mark.__name__, clock_mark.__code__.co_filename)
STEP = ("_mark_step", clock_mark.__code__.co_filename)


def test_the_clock_mark_places_py_spys_stamps_on_the_session_clock():
    # The session clock reads py-spy's + 4.000 s. py-spy samples every 10 ms, 2 ms into each
    # 10 ms of the session clock; the mark's steps (13, 17, 11, ... ms) begin at 5.000 s.
    switches = [5.0]
    for n in MARK_STEPS:
        switches.append(switches[-1] + n * 0.010)
    main, work = ("main", "/a.py"), ("work", "/a.py")
    samples = []
    for j in range(300):
        t = 3.002 + j * 0.010  # session time of the sample
        if 4.1 <= t < 4.3:
            stack = [main, work]
        elif switches[0] <= t < switches[-1]:
            step = max(k for k in range(len(MARK_STEPS)) if switches[k] <= t)
            stack = [main, MARK] + [STEP] * (step + 1)
        else:
            stack = [main]
        samples.append((round((t - 4.0) * 1e6), stack))
    events = _chrometrace(7, samples, end_us=3_000_000)
    events += _chrometrace(8, [(0, [("other_thread", "/b.py")])], end_us=3_000_000)
    timeline = timeline_from_chrometrace(events, mark=switches, interval_s=0.010)
    assert timeline.offset_error_s < 0.005
    work_span = next(s for s in timeline.spans if s.frames[-1][0] == "work")
    # samples at 4.102 ... 4.292 s, each standing for 5 ms either side of it
    assert work_span.start_s == pytest.approx(4.097, abs=timeline.offset_error_s + 1e-9)
    assert work_span.end_s == pytest.approx(4.297, abs=timeline.offset_error_s + 1e-9)
    assert [f[0] for f in work_span.frames] == ["main", "work"]
    assert all(s.frames[0][0] != "other_thread" for s in timeline.spans)


def test_without_a_sample_in_the_mark_there_is_no_timeline():
    events = _chrometrace(7, [(0, [("main", "/a.py")]), (10_000, [("main", "/a.py"), MARK])], end_us=20_000)
    assert timeline_from_chrometrace(events, mark=[5.0, 5.013], interval_s=0.010) is None


def test_terminal_and_html_tables_list_the_functions_under_the_gap_row():
    run = _run()
    add_gap_functions(
        run, _timeline(_span(6.0, 9.0, "parse_config"), _span(10.5, 11.5, "after")), roots=[APP]
    )
    console = Console(width=120, color_system=None, record=True, file=io.StringIO())
    console.print(render_run(run))
    lines = console.export_text().splitlines()
    rest = next(i for i, line in enumerate(lines) if line.lstrip().startswith("(rest of outer)"))
    assert lines[rest + 1].strip() == "· 100% parse_config (work.py:1)"
    unattributed = next(i for i, line in enumerate(lines) if line.lstrip().startswith("(unattributed)"))
    assert lines[unattributed + 1].strip() == "· 100% after (work.py:1)"
    html = phase_table_html(run)
    assert "(rest of outer): 100% parse_config (work.py:1)" in html
    assert "(unattributed): 100% after (work.py:1)" in html
