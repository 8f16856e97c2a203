"""`lmprof profile`'s one entry point: the request checked, then run by transformers or by
lmprof's engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmprof.workloads.request import ProfileRequest

if TYPE_CHECKING:
    from lmprof.session import ProfileSession


def run_profile(session: ProfileSession, req: ProfileRequest) -> None:
    req.validate()
    if req.engine == "lmprof":
        from lmprof.workloads.engine import run_engine_profile

        run_engine_profile(session, req)
    else:
        from lmprof.workloads.transformers import run_transformers_profile

        run_transformers_profile(session, req)
