"""`lmprof show` on a serve Run: figures and text from a hand-built record, no model, no torch."""

from __future__ import annotations

import subprocess
import sys

from lmprof.analyze.serve import serve_figures
from lmprof.record.serve import EngineStep, MemorySample, ServedRequest, ServeRun, load_serve_run
from lmprof.render.serve_terminal import render_serve_run

EXPECTED = """\
lmprof serve run: tiny on transformers, cpu, float32
scheduler static-batch (batch 2, wait 10 ms); max queue 64; response cache off
server up 2.00 s; model busy 400 ms (20%)

requests 3: ok 2, rejected 1; status 200: 2, 429: 1
tokens: prompt 10, completion 6; 8.5 output tokens/s while serving

phase (200s)        n        p50        p90        p99       mean
-----------------------------------------------------------------
wait                2    5.00 ms    5.00 ms    5.00 ms    5.00 ms
queued              2    50.0 ms    90.0 ms    99.0 ms    50.0 ms
prefill             2     100 ms     100 ms     100 ms     100 ms
decode+stream       2     300 ms     460 ms     496 ms     300 ms
ttft                2     155 ms     195 ms     204 ms     155 ms
e2e                 2     455 ms     655 ms     700 ms     455 ms

rows per engine step (prefill and decode steps)
    2       4  ########################################
mean decode occupancy (rows still generating / rows run): 83%

peak host RSS 300 MiB; peak device allocated 1.0 GiB (2 samples)
"""


def hand_built_run() -> ServeRun:
    def req(i: int, queued_s: float, decode_s: float, tokens: int) -> ServedRequest:
        return ServedRequest(
            request_id=f"r{i}", endpoint="completions", stream=True, arrived_s=0.0, admitted_s=0.005,
            started_s=0.005 + queued_s, first_token_s=0.105 + queued_s, finished_s=0.105 + queued_s + decode_s,
            responded_s=0.105 + queued_s + decode_s, prompt_tokens=5, completion_tokens=tokens, batch_size=2,
        )  # fmt: skip

    steps = [EngineStep(0.1 * i, 0.1 * i + 0.1, "prefill" if i == 0 else "decode", 2, 2) for i in range(3)]
    steps.append(EngineStep(0.3, 0.4, "decode", 2, 1))
    return ServeRun(
        settings={"scheduler": "static-batch", "max_batch": 2, "batch_wait_s": 0.01, "max_queue": 64},
        model={"id": "tiny", "engine": "transformers", "device": "cpu", "dtype": "float32"},
        environment={},
        started_unix_s=0.0,
        ended_s=2.0,
        requests=[
            req(0, 0.0, 0.1, 2),
            req(1, 0.1, 0.5, 4),
            ServedRequest("r2", "completions", False, arrived_s=0.2, status=429, outcome="rejected"),
        ],
        steps=steps,
        memory=[MemorySample(0.0, 200 << 20, 1 << 29), MemorySample(1.0, 300 << 20, 1 << 30)],
    )


def test_figures_from_a_hand_built_run():
    f = serve_figures(hand_built_run())
    assert f.requests == 3 and f.outcomes == {"ok": 2, "rejected": 1}
    assert f.completion_tokens == 6 and f.batch_sizes == {2: 4}
    assert abs(f.mean_occupancy - (1 + 1 + 0.5) / 3) < 1e-9
    queued = next(p for p in f.phases if p.name == "queued")
    assert queued.count == 2 and abs(queued.percentiles_s[50] - 0.05) < 1e-9


def test_terminal_text_is_golden():
    assert render_serve_run(hand_built_run()) == EXPECTED


def test_show_renders_a_saved_serve_run_without_torch(tmp_path):
    hand_built_run().save(tmp_path)
    assert load_serve_run(tmp_path).requests[1].completion_tokens == 4
    code = (
        "import sys; from lmprof.cli.main import main; rc = main(['show', sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'show imported torch'; sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == EXPECTED


def test_a_continuous_servers_settings_read_the_same_at_startup_and_in_show():
    from lmprof.record.serve import scheduler_words
    from lmprof.serve.settings import ServeSettings

    record = ServeSettings(engine="lmprof", scheduler="continuous", prefill_chunk=64).as_record()
    words = "continuous (max batch 8, prefill chunk 64, wait 10 ms"
    assert scheduler_words(record) == words + ")"
    assert scheduler_words(record, max_len=2048) == words + ", max len 2048)"
    assert scheduler_words({"scheduler": "sequential"}) == "sequential"
