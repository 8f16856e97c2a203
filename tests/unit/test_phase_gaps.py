"""Every second has a name: "(rest of X)" rows, repeats counted inside one parent, the
summary's first lines, and version-1 Runs (saved before phase_gaps existed) still rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.runs_for_tests import phase, sample_run
from rich.console import Console

from lmprof.analyze.phases import phase_gaps, phase_rows, repeated_work
from lmprof.record.run import SCHEMA_VERSION, Run, load_run, validate_run_dict
from lmprof.render.html_tables import phase_table_html
from lmprof.render.terminal import render_run


def _text(run: Run) -> str:
    console = Console(width=140, record=True, color_system=None, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(render_run(run))
    return console.export_text()


def _loading_run() -> Run:
    """pipeline_setup 10 s: load_config twice (2 s each, not adjacent), load_model 5 s of which
    only 1 s is named, and 1 s of pipeline_setup's own."""
    phases = [
        phase("pipeline_setup", 0.0, 10.0),
        phase("load_config", 0.0, 2.0, depth=1, parent=0),
        phase("parse_gguf", 0.0, 1.9, depth=2, parent=1),
        phase("load_model", 2.0, 7.0, depth=1, parent=0),
        phase("read_weights", 2.0, 3.0, depth=2, parent=3),
        phase("load_config", 7.0, 9.0, depth=1, parent=0),
        phase("parse_gguf", 7.0, 8.9, depth=2, parent=5),
    ]
    return Run(run_id="r", created_at="t", lmprof_version="0", status="complete", phases=phases, wall_s=10.0)


def test_repeats_inside_one_parent_merge_with_count_and_total():
    rows = {r.name: r for r in phase_rows(_loading_run())}
    assert rows["load_config"].count == 2 and rows["load_config"].wall_s == 4.0
    assert rows["parse_gguf"].count == 2 and abs(rows["parse_gguf"].wall_s - 3.8) < 1e-9


def test_rest_rows_name_a_parents_own_time_over_two_percent():
    rows = phase_rows(_loading_run())
    names = [r.name for r in rows]
    rest = {r.name: r for r in rows if r.name.startswith("(rest of")}
    assert abs(rest["(rest of load_model)"].wall_s - 4.0) < 1e-9
    assert abs(rest["(rest of pipeline_setup)"].wall_s - 1.0) < 1e-9
    assert "(rest of load_config)" not in rest  # 2 x 0.1 s: 2% of the run, not over it
    # each rest row sits under its parent, after the children
    assert names.index("(rest of load_model)") == names.index("read_weights") + 1
    assert rest["(rest of load_model)"].depth == 2
    gaps = phase_gaps(_loading_run())
    assert gaps[0]["parent"] == "load_model" and abs(gaps[0]["share"] - 0.4) < 1e-9


def test_small_own_time_gets_no_row():
    run = _loading_run()
    run.phases[4] = phase("read_weights", 2.0, 6.9, depth=2, parent=3)  # load_model: 0.1 s own, 1%
    assert "(rest of load_model)" not in [r.name for r in phase_rows(run)]


def test_repeated_work_over_a_second_is_flagged():
    assert repeated_work(_loading_run()) == [
        ("config read", 2, 4.0),
        ("GGUF metadata parsed", 2, pytest.approx(3.8)),
    ]
    assert repeated_work(_loading_run(), min_s=5.0) == []


def test_files_downloaded_once_each_are_no_repeat():
    shard = "model-00001-of-00002.safetensors"
    phases = [
        phase("resolve", 0.0, 4.0),
        phase("download", 0.0, 1.5, depth=1, parent=0, detail={"file": shard}),
        phase("download", 1.5, 3.0, depth=1, parent=0, detail={"file": "model-00002-of-00002.safetensors"}),
    ]
    run = Run(run_id="r", created_at="t", lmprof_version="0", status="complete", phases=phases, wall_s=4.0)
    assert repeated_work(run) == []
    run.phases.append(phase("download", 3.0, 4.0, depth=1, parent=0, detail={"file": shard}))
    assert repeated_work(run) == [("file downloaded", 2, 2.5)]


def test_summary_names_the_largest_gap_and_the_repeats_first():
    run = _loading_run()
    run.phase_gaps = phase_gaps(run)
    lines = _text(run).splitlines()
    assert lines[1].startswith("Largest unnamed time: (rest of load_model) 4.00 s (40.0% of the run)")
    assert "Repeated work: config read 2x: 4.00 s" in lines[2]
    assert "Repeated work: GGUF metadata parsed 2x: 3.80 s" in lines[3]
    assert "(rest of load_model)" in phase_table_html(run)


def test_a_version_1_run_loads_and_renders_its_gaps(tmp_path: Path):
    data = sample_run().to_dict()
    data["schema_version"] = 1
    del data["phase_gaps"]  # version 1 had no such field
    validate_run_dict(data)
    (tmp_path / "run.json").write_text(json.dumps(data))
    run = load_run(tmp_path)
    assert run.schema_version == 1 and run.phase_gaps == []
    text = _text(run)
    assert "(rest of load_model)" in text and "Largest unnamed time: (rest of load_model)" in text


def test_a_new_run_saves_its_gaps_under_the_current_version(tmp_path: Path):
    run = _loading_run()
    run.phase_gaps = phase_gaps(run)
    data = json.loads(run.to_json())
    assert data["schema_version"] == SCHEMA_VERSION == 2
    assert load_run(run.save(tmp_path)).phase_gaps[0]["parent"] == "load_model"
