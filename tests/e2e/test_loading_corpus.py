"""The rule over the loading corpus: in every kind of checkpoint `lmprof profile` loads, no
phase's own time (its wall less its named children's) and no unattributed time is over 10% of
the run's wall time. A cost that no phase names fails here, not in a user's report.

Fast cases use 2-layer models; the default model and its GGUF are marked slow.
"""

from __future__ import annotations

import os
import re

import pytest
from helpers.loading_corpus import CORPUS

from lmprof.analyze.phases import phase_gaps, phase_rows
from lmprof.cli.main import main
from lmprof.record.run import load_run

MAX_OWN_SHARE = 0.10

CASES = [
    pytest.param(
        name, marks=[pytest.mark.slow] if slow else [], id=re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    )
    for name, (_, slow) in CORPUS.items()
]


@pytest.fixture
def profile_in(tmp_path, lmprof_cache, monkeypatch):
    monkeypatch.setenv("LMPROF_CACHE", str(lmprof_cache))

    def profile(name: str):
        builder, slow = CORPUS[name]
        if slow:  # the real models: the user's cache, so they are built once per machine
            monkeypatch.delenv("LMPROF_CACHE")
            if os.environ.get("LMPROF_CACHE_FOR_TESTS"):
                monkeypatch.setenv("LMPROF_CACHE", os.environ["LMPROF_CACHE_FOR_TESTS"])
        spec = builder(tmp_path)
        if spec is None:
            pytest.skip(f"{name}: could not be fetched here")
        out = tmp_path / "run"
        assert main(["profile", spec, "--max-new-tokens", "4", "--out", str(out)]) == 0
        return load_run(out)

    return profile


@pytest.mark.parametrize("name", CASES)
def test_no_phase_hides_more_than_a_tenth_of_the_run(name: str, profile_in) -> None:
    run = profile_in(name)
    unnamed = phase_gaps(run, gap_share=MAX_OWN_SHARE)
    table = "\n".join(f"{'  ' * r.depth}{r.name} x{r.count} {r.wall_s:.3f}s self {r.self_s:.3f}s"
                      for r in phase_rows(run))  # fmt: skip
    assert unnamed == [], f"{name}: time no phase names over 10% of the run:\n{table}"
    names = {p.name for p in run.phases}
    assert {"load_model", "load_config"} <= names
    if "GGUF" in name:
        assert {"parse_gguf", "dequantize"} <= names or "read_weights" in names
        assert any(p.name == "parse_gguf" and p.payload_bytes for p in run.phases), "GGUF bytes read"
        assert "convert_tokenizer" in names
    assert any(point.endswith("get_config_dict") for point in run.instrumented)
