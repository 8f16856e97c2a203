"""`lmprof load`, `show` and `compare` of load runs from the command line: JSON on stdout,
the saved run, exit codes, one-line errors, Ctrl-C, and no torch import."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers.mock_openai_server import spawned_mock_server

from lmprof.cli.main import main
from lmprof.record.load import load_load_run

REPO = Path(__file__).resolve().parents[2]


def lmprof(*args, timeout=60, check_torch=False):
    """The real command in a fresh process, as a user runs it."""
    code = "import sys; from lmprof.cli.main import main; rc = main(sys.argv[1:]); "
    code += (
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'; "
        * check_torch
    )
    code += "sys.exit(rc)"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_json_on_stdout_and_the_saved_run(mock_server, tmp_path, capsys):
    url, _ = mock_server(ttft_s=0.01, itl_s=0.002)
    out = tmp_path / "run"
    code = main(["load", url, "--concurrency", "1,2", "--requests", "6", "--output-tokens", "4",
                 "--slo", "ttft=1s", "--out", str(out), "--json"])  # fmt: skip
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "load" and data["status"] == "complete"
    assert [lv["completed"] for lv in data["levels"]] == [6, 6]
    assert [lv["concurrency"] for lv in data["levels"]] == [1, 2]
    assert data["levels"][0]["goodput"]["share"] == 1.0
    assert data["levels"][0]["latency_s"]["ttft"]["p50"] > 0.01
    record = load_load_run(out)
    assert record.kind == "load" and record.schema_version == 1 and len(record.levels) == 2
    assert (out / "report.html").is_file()
    # The round trip keeps every request exactly.
    again = load_load_run(out)
    assert again.to_dict() == record.to_dict()


def test_show_and_compare_with_fail_on(mock_server, tmp_path, capsys):
    fast_url, _ = mock_server(ttft_s=0.005, itl_s=0.002)
    slow_url, _ = mock_server(ttft_s=0.060, itl_s=0.002)
    common = ["--concurrency", "2", "--requests", "6", "--output-tokens", "4"]
    assert main(["load", fast_url, *common, "--out", str(tmp_path / "a"), "--json"]) == 0
    assert main(["load", slow_url, *common, "--out", str(tmp_path / "b"), "--json"]) == 0
    capsys.readouterr()

    assert main(["show", str(tmp_path / "b")]) == 0
    shown = capsys.readouterr().out
    assert "concurrency 2" in shown and "TTFT" in shown and "mock-model" in shown
    assert main(["show", str(tmp_path / "b"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["levels"][0]["completed"] == 6
    (tmp_path / "b" / "report.html").unlink()
    assert main(["show", str(tmp_path / "b"), "--html"]) == 0
    page = (tmp_path / "b" / "report.html").read_text()
    assert "<svg" in page and "request-timeline" in page and "http://" not in page.split("<body>")[0]

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert main(["compare", a, b, "--fail-on", "ttft_p50=+20%"]) == 1  # TTFT rose ~10x
    assert "ttft_p50" in capsys.readouterr().out
    assert main(["compare", a, b, "--fail-on", "error_share>+0.5"]) == 0
    capsys.readouterr()
    assert main(["compare", a, b, "--json", "--fail-on", "ttft_p50=+20%"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["checks"][0]["breached"] is True


def test_bad_url_is_one_line_and_exit_2(tmp_path):
    result = lmprof("load", "http://127.0.0.1:9", "--requests", "1", "--out", tmp_path / "x")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "cannot reach" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x").exists()


def test_bad_options_are_one_line_and_exit_2(capsys):
    for args, words in (
        (["not-a-url", "--requests", "1"], "not an http"),
        (["http://127.0.0.1:9", "--requests", "1", "--slo", "ttft=soon"], "--slo"),
        (["http://127.0.0.1:9"], "--requests M or --duration S"),
        (["http://127.0.0.1:9", "--requests", "1", "--rate", "1", "--concurrency", "2"], "not both"),
        (
            ["http://127.0.0.1:9", "--requests", "1", "--concurrency", "2", "--max-concurrency", "2"],
            "open loop",
        ),
        (["http://127.0.0.1:9", "--requests", "1", "--rate", "nan"], "positive"),
    ):
        assert main(["load", *args]) == 2
        err = capsys.readouterr().err
        assert words in err and err.strip().count("\n") == 0, err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--range-ratio", "1"], "--range-ratio 1.0: a ratio in [0, 1)"),
        (["--range-ratio", "-0.2"], "--range-ratio -0.2: a ratio in [0, 1)"),
        (["--range-ratio", "nan"], "--range-ratio nan"),
        (["--range-ratio", "0.5", "--prompts", "p.jsonl"], "a --prompts file sets its own"),
        (  # the prefix must fit in the shortest input drawn: 64 * 0.25 = 16
            ["--range-ratio", "0.75", "--input-tokens", "64", "--prefix-tokens", "20", "--prefix-share", "1"],
            "the shortest input drawn (16",
        ),
    ],
)
def test_a_bad_range_ratio_is_one_line_and_exit_2(args, words, capsys, tmp_path):
    out = tmp_path / "x"
    assert main(["load", "http://127.0.0.1:9", "--requests", "1", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert words in err and err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert not out.exists()


def test_api_key_is_sent_and_a_refused_key_is_one_line(mock_server, tmp_path, capsys):
    url, server = mock_server(ttft_s=0.002, itl_s=0.001, api_key="sk-right")
    common = ["--requests", "2", "--output-tokens", "2", "--json"]
    assert main(["load", url, *common, "--api-key", "sk-wrong", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "--api-key" in err and err.strip().count("\n") == 0
    assert main(["load", url, *common, "--api-key", "sk-right", "--out", str(tmp_path / "b")]) == 0
    saved = (tmp_path / "b" / "run.json").read_text()
    assert "sk-right" not in saved and load_load_run(tmp_path / "b").settings["api_key"] == "***"


def test_compare_refuses_a_load_run_beside_a_profile_run(mock_server, tmp_path, capsys):
    url, _ = mock_server(ttft_s=0.002, itl_s=0.001)
    assert (
        main(["load", url, "--requests", "2", "--output-tokens", "2", "--out", str(tmp_path / "a"), "--json"])
        == 0
    )
    profile = tmp_path / "p"
    profile.mkdir()
    (profile / "run.json").write_text(json.dumps({"run_id": "x", "schema_version": 1}))
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(profile)]) == 2
    err = capsys.readouterr().err
    assert "is not a load run" in err and err.strip().count("\n") == 0


def test_ctrl_c_saves_the_run_incomplete(tmp_path):
    with spawned_mock_server(ttft_ms=5, itl_ms=5) as url:
        out = tmp_path / "run"
        proc = subprocess.Popen(
            [sys.executable, "-m", "lmprof", "load", url, "--concurrency", "4", "--duration", "30",
             "--output-tokens", "20", "--out", str(out)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # until the server has had some requests
                with urllib.request.urlopen(f"{url}/mock/stats", timeout=5) as resp:
                    if json.load(resp)["received"] >= 12:
                        break
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    record = load_load_run(out)
    assert record.status == "incomplete" and record.levels and not record.levels[0].complete
    done = [r for r in record.requests if r.level == 0 and r.ok]
    assert len(done) >= 8
    assert {r.error_kind for r in record.requests if not r.ok} <= {"cancelled"}


def test_load_show_compare_never_import_torch(tmp_path):
    with spawned_mock_server(ttft_ms=2, itl_ms=1) as url:
        out = tmp_path / "run"
        result = lmprof("load", url, "--requests", "2", "--out", out, "--json", check_torch=True)
    assert result.returncode == 0, result.stderr
    for args in (["show", out], ["show", out, "--html"], ["compare", out, out]):
        result = lmprof(*args, check_torch=True)
        assert result.returncode == 0, result.stderr
    assert os.path.isfile(out / "report.html")


def test_a_server_that_goes_away_ends_the_run_saved_as_failed(mock_server, tmp_path, capsys):
    url, _ = mock_server(ttft_s=0.002, itl_s=0.001, close_after_requests=6)
    out = tmp_path / "run"
    code = main(
        ["load", url, "--concurrency", "2", "--duration", "20", "--output-tokens", "2", "--out", str(out)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "refused 50 connections in a row" in err and err.strip().count("\n") == 0
    record = load_load_run(out)
    assert record.status == "failed" and "refused" in record.error["message"]
    assert record.wall_s < 5  # stopped, not hammering a dead port for 20 s
    # 50 in a row ends it; a disconnect of a request in flight when the server went can
    # break the first row, so allow a second one.
    assert 50 <= sum(r.error_kind == "connect" for r in record.requests) < 150
