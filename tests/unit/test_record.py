import json
import os

import jsonschema
import pytest
from helpers.runs_for_tests import sample_run

from lmprof.errors import RunFileError
from lmprof.record.run import Run, load_run, validate_run_dict


def test_round_trip_and_schema(tmp_path):
    run = sample_run()
    path = run.save(tmp_path / "r")
    data = json.loads(path.read_text())
    validate_run_dict(data)
    again = load_run(tmp_path / "r")
    assert again.to_dict() == run.to_dict()
    assert data["phases"][5]["wall_s"] == pytest.approx(0.2)
    assert os.listdir(tmp_path / "r") == ["run.json"]  # no temp file left behind


def test_schema_rejects_a_broken_record():
    data = sample_run().to_dict()
    data["status"] = "done"
    with pytest.raises(jsonschema.ValidationError):
        validate_run_dict(data)
    data = sample_run().to_dict()
    del data["phases"][0]["cpu_s"]
    with pytest.raises(jsonschema.ValidationError):
        validate_run_dict(data)


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(RunFileError, match="no run record"):
        load_run(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(RunFileError, match="not a readable run record"):
        load_run(tmp_path)
    data = sample_run().to_dict()
    data["schema_version"] = 99
    (tmp_path / "run.json").write_text(json.dumps(data))
    with pytest.raises(RunFileError, match="schema_version 99"):
        load_run(tmp_path)


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    run = sample_run()
    run.save(tmp_path)
    before = (tmp_path / "run.json").read_text()
    run.settings["bad"] = object()  # not serializable
    with pytest.raises(TypeError):
        run.save(tmp_path)
    assert (tmp_path / "run.json").read_text() == before
    assert os.listdir(tmp_path) == ["run.json"]


def test_from_dict_ignores_nothing_required():
    assert isinstance(Run.from_dict(sample_run().to_dict()), Run)
