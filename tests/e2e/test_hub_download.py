"""`lmprof profile OWNER/NAME` against a stand-in hub on loopback (tests/helpers/local_hub.py):
the first run downloads, one `download` phase per file inside `resolve`, with its bytes and
rate; the second finds the model in the cache and sends no request."""

from __future__ import annotations

import json

from helpers.local_hub import UNFETCHED, LocalHub, add_model_repo

from lmprof.record.run import load_run
from lmprof.render.units import fmt_bytes

REPO_ID = "someone/tiny-llama"


def test_profile_a_hub_id_times_its_download_then_uses_the_cache(run_cli, tiny_model, tmp_path):
    with LocalHub() as hub:
        repo = add_model_repo(hub, REPO_ID, tiny_model)
        env = hub.environment(tmp_path / "hf-home")
        first = run_cli("profile", REPO_ID, "--max-new-tokens", 2, "--out", tmp_path / "first", env_extra=env)
        assert first.returncode == 0, first.stderr
        requests_by_first = list(hub.requests)
        second = run_cli(
            "profile", REPO_ID, "--max-new-tokens", 2, "--out", tmp_path / "second", env_extra=env
        )
        assert second.returncode == 0, second.stderr
        assert hub.requests == requests_by_first, "the cached model was looked up on the hub"

    fetched = set(repo.files) - UNFETCHED
    total_bytes = repo.fetched_bytes(fetched)
    assert not any(name in path for name in UNFETCHED for _, _, path in requests_by_first)
    assert ("cdn", "GET") in {(origin, method) for origin, method, _ in requests_by_first}

    saved = json.loads((tmp_path / "first" / "run.json").read_text())
    phases = saved["phases"]
    resolve = next(i for i, p in enumerate(phases) if p["name"] == "resolve" and p["parent_index"] is None)
    downloads = [p for p in phases if p["name"] == "download"]
    assert len(downloads) == len(fetched)  # one phase a file: none nested in another
    assert {p["detail"]["file"]: p["payload_bytes"] for p in downloads} == {
        name: repo.files[name].size for name in fetched
    }
    for p in downloads:  # each file inside resolve, timed, with its rate
        assert p["parent_index"] == resolve and p["depth"] == 1
        assert phases[resolve]["start_s"] <= p["start_s"] < p["end_s"] <= phases[resolve]["end_s"]
        assert p["payload_gbps"] > 0
    assert phases[resolve]["payload_bytes"] == total_bytes
    run = load_run(tmp_path / "first")
    assert (run.model["source"], run.model["id"]) == ("hub", REPO_ID)
    row = next(line for line in first.stdout.splitlines() if f"download ×{len(fetched)}" in line)
    assert fmt_bytes(total_bytes) in row

    cached = load_run(tmp_path / "second")
    assert "download" not in [p.name for p in cached.phases]
    assert next(p for p in cached.phases if p.name == "resolve").payload_bytes is None
    assert cached.model["path"] == run.model["path"]
