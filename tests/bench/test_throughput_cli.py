"""`lmprof bench throughput`: bad input is one line and exit 2 before any server starts; a
small matrix on `tiny` runs end to end (real servers on loopback, lmprof load in-process)
and its report is saved, printed and rendered."""

from __future__ import annotations

import json

import pytest

from lmprof.cli.main import main
from lmprof.record.throughput import load_throughput_report


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--concurrency", "0"], "--concurrency"),
        (["--concurrency", "1,x"], "--concurrency"),
        (["--requests", "0"], "--requests"),
        (["--rounds", "0"], "--rounds"),
        (["--repeat-share", "1.5"], "--repeat-share"),
        (["--slo", "ttft=fast"], "--slo"),
        (["--workloads", "chat"], "--workloads"),
        (["--output-tokens", "0"], "--output-tokens"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, words, capsys, tmp_path):
    assert main(["bench", "throughput", "tiny", "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and words in err
    assert not (tmp_path / "out" / "throughput.json").exists()


def test_an_out_that_is_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    assert main(["bench", "throughput", "tiny", "--out", str(tmp_path / "f")]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_a_quick_matrix_on_tiny_end_to_end(tmp_path, capsys, monkeypatch, lmprof_cache):
    monkeypatch.setenv("LMPROF_CACHE", str(lmprof_cache))  # the servers inherit it
    out = tmp_path / "bench"
    args = ["bench", "throughput", "tiny", "--quick", "--concurrency", "1,2", "--requests", "4",
            "--output-tokens", "8", "--workloads", "mixed-lengths,repeats", "--out", str(out), "--html"]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    report = load_throughput_report(out)
    assert report.complete and not [s for s in report.servers if s.error]
    names = [r.name for r in report.rows]
    assert names[:3] == [f"{s} @ mixed-lengths" for s in ("sequential", "static-batch", "continuous")]
    assert len(report.points) == len(names) * 2 and not [p for p in report.points if p.error]
    for p in report.points:
        reqs = [r for r in p.load["requests"] if not r["warmup"]]
        assert len(reqs) == 4 and all(r["error_kind"] is None for r in reqs)
        assert p.server_rss_peak_bytes > 0
        if p.row.endswith("@ mixed-lengths"):  # each server generated what each request asked (2-14)
            assert p.load["settings"]["range_ratio"] == 0.75
            assert all(r["output_tokens"] == r["planned_output_tokens"] for r in reqs)
    asked = {r["planned_output_tokens"] for p in report.points for r in p.load["requests"] if not r["warmup"]
             and p.row.endswith("@ mixed-lengths")}  # fmt: skip
    assert len(asked) > 1
    assert "continuous @ mixed-lengths" in text and "targets:" in text
    assert "8 users on mixed-lengths, output tok/s over sequential: not measured" in text  # 1 and 2 users
    row = next(line for line in text.splitlines() if line.startswith("continuous+response-cache @ repeats"))
    assert "x" in row.split()[-1]  # its gain over continuous without the cache is a measured ratio
    assert 'class="chart throughput-latency-mixed-lengths-p50"' in (out / "report.html").read_text()
    assert json.loads((out / "throughput.json").read_text())["kind"] == "throughput"
