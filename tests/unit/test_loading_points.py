"""The loading points: each wraps a function of the installed transformers when it is there,
is skipped (and left out of Run.instrumented) when a version lacks it, and is undone after."""

from __future__ import annotations

import sys
import types

from lmprof.clock import FakeClock
from lmprof.collect.instrument import Instrumentation
from lmprof.collect.loading_points import GGUF_POINTS, LOADING_POINTS
from lmprof.collect.phases import PhaseRecorder
from lmprof.collect.process_stats import ProcessSnapshot


class _Session:
    def __init__(self) -> None:
        self.clock = FakeClock()
        snap = ProcessSnapshot(1, 1, 0, 0, 0)
        self.phases = PhaseRecorder(self.clock.as_clock(), 0.0, read=lambda: snap)


def test_a_point_this_version_lacks_is_skipped_not_an_error(monkeypatch):
    inst = Instrumentation(_Session())
    inst._patch_point("lmprof_no_such_module", None, "load", "load_config")
    inst._patch_point("json", None, "no_such_function", "load_config")
    inst._patch_point("json", "NoSuchClass", "load", "load_config")
    assert inst.points == []


def test_a_point_becomes_a_phase_and_is_undone(monkeypatch):
    module = types.ModuleType("lmprof_fake_loader")
    session = _Session()

    def read_header(path):
        session.clock.advance(2.0)
        return path

    module.read_header = read_header
    monkeypatch.setitem(sys.modules, "lmprof_fake_loader", module)
    inst = Instrumentation(session)
    inst._patch_point("lmprof_fake_loader", None, "read_header", "parse_gguf")
    assert inst.points == ["lmprof_fake_loader.read_header"]
    assert module.read_header("x.gguf") == "x.gguf"
    assert [(p.name, p.wall_s) for p in session.phases.phases] == [("parse_gguf", 2.0)]
    inst.uninstall()
    assert module.read_header is read_header


def test_the_installed_transformers_has_every_loading_point():
    """Run against the pinned transformers: a point that moved shows up here, not as a silent gap."""
    inst = Instrumentation(_Session())
    try:
        for point in LOADING_POINTS:
            inst._patch_point(*point)
        for point in GGUF_POINTS:
            inst._patch_point(*point)
        wrapped = {label.rsplit(".", 1)[-1] for label in inst.points}
        assert {p[2] for p in LOADING_POINTS + GGUF_POINTS} <= wrapped
    finally:
        inst.uninstall()
