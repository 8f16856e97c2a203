"""A load run's figures as JSON (`lmprof load --json`, `lmprof show --json`): the summary of
each level, the server and client facts, the warnings. The full record is run.json."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from lmprof.analyze.load import LoadSummary
from lmprof.record.load import LoadRun


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def load_summary_dict(run: LoadRun, summary: LoadSummary, run_dir: str | None = None) -> dict[str, Any]:
    return _finite(
        {
            "kind": run.kind,
            "schema_version": run.schema_version,
            "run_id": run.run_id,
            "status": run.status,
            "error": run.error,
            "run_dir": run_dir,
            "server": run.server,
            "client": run.client,
            "settings": run.settings,
            "wall_s": run.wall_s,
            "warmup_requests": summary.warmup_requests,
            "levels": [dataclasses.asdict(level) for level in summary.levels],
            "warnings": summary.warnings,
        }
    )


def render_load_json(run: LoadRun, summary: LoadSummary, run_dir: str | None = None) -> str:
    return json.dumps(load_summary_dict(run, summary, run_dir), indent=1, allow_nan=False)
