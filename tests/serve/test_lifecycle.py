"""`lmprof serve` as a user runs it: a subprocess that prints its URL, drains on SIGTERM, exits
0 and leaves a Run that `lmprof show` renders; bad command lines are one line and exit 2."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import aiohttp
import pytest
from serve_helpers import TIMEOUT, streamed_text

from lmprof.cli.main import main


def _start(args: list[str], env: dict) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmprof", "serve", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("lmprof serve: http://"):
            return proc, line.split()[2].removesuffix("/v1")
    proc.kill()
    raise AssertionError(f"no startup line; stderr: {proc.stderr.read()[-2000:]}")


def test_sigterm_drains_in_flight_requests_then_exits_0(random_llama, serve_cache, tmp_path):
    out = tmp_path / "profile"
    env = dict(os.environ, LMPROF_CACHE=str(serve_cache))
    proc, url = _start(
        [str(random_llama), "--port", "0", "--scheduler", "async", "--served-model-name", "m",
         "--profile-out", str(out)],
        env,
    )  # fmt: skip
    body = {"prompt": "Drain me", "temperature": 0, "max_tokens": 200, "ignore_eos": True}

    async def go():
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            resp = await s.post(url + "/v1/completions", json={**body, "stream": True})
            lines = [await resp.content.readline()]  # streaming has begun: the request is in flight
            proc.send_signal(signal.SIGTERM)
            lines += [line async for line in resp.content]
            await asyncio.sleep(0.2)
            try:  # once draining, no new request is taken
                async with s.post(url + "/v1/completions", json={**body, "max_tokens": 1}) as late:
                    late_status = late.status
            except aiohttp.ClientConnectionError:
                late_status = "refused"
            return resp.status, lines, late_status

    try:
        status, lines, late_status = asyncio.run(go())
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stdout = proc.stdout.read()
    assert rc == 0, proc.stderr.read()[-2000:]
    items = [line.decode().strip().removeprefix("data: ") for line in lines if line.strip()]
    items = [item if item == "[DONE]" else json.loads(item) for item in items]
    assert status == 200 and items[-1] == "[DONE]"
    assert late_status in ("refused", 503)
    assert items[-2]["usage"]["completion_tokens"] == 200 and len(streamed_text(items)) > 0
    assert "draining" in stdout
    record = json.loads((out / "run.json").read_text())
    assert record["kind"] == "serve" and record["schema_version"] == 1
    (req,) = record["requests"]
    assert req["completion_tokens"] == 200 and req["outcome"] == "ok"
    assert (
        req["arrived_s"]
        <= req["admitted_s"]
        <= req["started_s"]
        <= req["first_token_s"]
        <= req["responded_s"]
    )
    assert len(record["steps"]) == 200 and record["memory"] and record["memory"][0]["rss_bytes"] > 0
    shown = subprocess.run(
        [sys.executable, "-m", "lmprof", "show", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert shown.returncode == 0 and "requests 1: ok 1" in shown.stdout and "peak host RSS" in shown.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["tiny", "--batch-size", "4"], "--scheduler static-batch"),
        (["tiny", "--scheduler", "static-batch", "--batch-size", "0"], "--batch-size"),
        (["tiny", "--port", "70000"], "--port"),
        (["tiny", "--max-queue", "-1"], "--max-queue"),
        (["tiny", "--dtype", "float8"], "--dtype"),
        (["no-such-model-anywhere"], "no-such-model"),
    ],
)
def test_bad_command_lines_are_one_line_and_exit_2(args, words, serve_cache, capsys, monkeypatch):
    monkeypatch.setenv("LMPROF_CACHE", str(serve_cache))
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and words in err
