"""Exports: folded stacks, speedscope JSON, the SVG flame graph, the Perfetto trace, and the
files written for a run. Hand-built Run and DeepProfile, fixed numbers, no model."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
from helpers.runs_for_tests import sample_run

from lmprof.record.deep import DeepProfile, FlameGraph, TraceEvent
from lmprof.record.run import Run
from lmprof.render.exports import write_exports
from lmprof.render.flame_svg import to_flame_svg
from lmprof.render.folded import FOLDED_LINE, parse_folded, to_folded
from lmprof.render.perfetto import to_chrome_trace
from lmprof.render.speedscope import to_speedscope

FIXTURES = Path(__file__).parents[1] / "fixtures" / "exports"
SVG_NS = "{http://www.w3.org/2000/svg}"
XSS = "<script>alert(1)</script>"
MM = ["phase:decode", "py:generate (utils.py:2584)", "module:model", "op:aten::mm"]


def time_flame() -> FlameGraph:
    return FlameGraph(
        name="time", unit="seconds", source="hand-built",
        stacks=[
            ["phase:prefill", "module:model", "module:model.layers.0.mlp", "op:aten::mm"],
            ["phase:prefill", "module:model", "module:model.layers.0.self_attn", "op:aten::bmm"],
            MM,
            ["phase:decode", "py:generate (utils.py:2584)", "op:aten::argmax"],
            list(MM),  # the same stack again: merged in folded text and the SVG
            ["phase:decode", XSS],
            ["phase:decode", "op:odd;name\nsplit"],
        ],
        weights=[0.1200004, 0.08, 0.3, 0.0004, 0.2, 0.05, 0.0100007],
    )  # fmt: skip


def memory_flame() -> FlameGraph:
    return FlameGraph(
        name="memory", unit="bytes", source="hand-built",
        stacks=[["alloc:weights", "module:model.embed_tokens"], ["alloc:weights", "module:model.layers.0.mlp"],
                ["alloc:kv_cache", "module:model.layers.0.self_attn"]],
        weights=[4_000_000, 12_000_000, 262_144],
    )  # fmt: skip


def deep_run() -> Run:
    run = sample_run()
    run.deep = DeepProfile(
        flames=[time_flame(), memory_flame()],
        trace=[
            TraceEvent("model.layers.0", "module", 2.72, 0.2, "cpu thread 1"),
            TraceEvent("aten::mm", "op", 2.73, 0.05, "cpu thread 1", {"shapes": [[1, 64], [64, 64]]}),
            TraceEvent("sgemm", "kernel", 2.74, 0.01, "cuda stream 7"),
        ],
    )
    run.memory.device = {
        "t_s": [2.0, 3.0],
        "allocated_bytes": [1 << 20, 2 << 20],
        "reserved_bytes": [4 << 20, 4 << 20],
    }
    return run


# --- folded ------------------------------------------------------------------------


def test_folded_follows_the_grammar_merges_stacks_and_keeps_the_total():
    flame = time_flame()
    text = to_folded(flame)
    assert all(FOLDED_LINE.match(line) for line in text.splitlines())
    rows = parse_folded(text)
    assert len(rows) == 6  # seven stacks, two of them equal
    assert sum(w for _, w in rows) == round(flame.total * 1e6)
    assert dict((";".join(f), w) for f, w in rows)[";".join(MM)] == 500_000
    assert text.splitlines() == sorted(text.splitlines())
    # A ';' or a newline inside a frame would change the stack; both are replaced.
    assert ["phase:decode", "op:odd,name split"] in [f for f, _ in rows]


def test_folded_bytes_flame_weighs_in_bytes():
    rows = parse_folded(to_folded(memory_flame()))
    assert rows == [
        (["alloc:kv_cache", "module:model.layers.0.self_attn"], 262_144),
        (["alloc:weights", "module:model.embed_tokens"], 4_000_000),
        (["alloc:weights", "module:model.layers.0.mlp"], 12_000_000),
    ]


def test_folded_leaves_out_stacks_it_cannot_draw():
    flame = FlameGraph("t", "seconds", "", stacks=[[], ["a"], ["b"], ["c"]], weights=[1.0, 0.0, -1.0, 2e-6])
    assert to_folded(flame) == "c 2\n"


def test_parse_folded_rejects_lines_outside_the_grammar():
    for bad in ["a;b", "a;;b 3", ";a 3", "a -3", "a 1.5"]:
        with pytest.raises(ValueError):
            parse_folded(bad + "\n")


# --- speedscope --------------------------------------------------------------------


@pytest.mark.parametrize("flame", [time_flame(), memory_flame()], ids=["time", "memory"])
def test_speedscope_validates_against_speedscope_schema(flame):
    schema = json.loads((FIXTURES / "speedscope-file-format-schema.json").read_text(encoding="utf-8"))
    doc = json.loads(json.dumps(to_speedscope(sample_run(), flame)))
    jsonschema.Draft7Validator(schema).validate(doc)
    (profile,) = doc["profiles"]
    assert profile["type"] == "sampled"
    assert profile["unit"] == flame.unit
    assert sum(profile["weights"]) == pytest.approx(flame.total)
    assert profile["endValue"] == pytest.approx(flame.total)
    # Every sample is one of the flame's stacks, through the shared frame table.
    names = [f["name"] for f in doc["shared"]["frames"]]
    assert [[names[i] for i in s] for s in profile["samples"]] == flame.stacks
    assert doc["exporter"].startswith("lmprof ")


def test_speedscope_gives_python_frames_their_file_and_line():
    doc = to_speedscope(sample_run(), time_flame())
    frame = next(f for f in doc["shared"]["frames"] if f["name"].startswith("py:"))
    assert (frame["file"], frame["line"]) == ("utils.py", 2584)


# --- SVG ---------------------------------------------------------------------------


def frame_groups(svg: str) -> list[ET.Element]:
    root = ET.fromstring(svg)
    return [g for g in root.iter(f"{SVG_NS}g") if g.get("class") == "frame"]


def test_svg_has_one_box_per_frame_node_sized_by_weight():
    flame = time_flame()
    svg = to_flame_svg(flame, "tiny: time")
    groups = frame_groups(svg)
    nodes = {tuple(s[: i + 1]) for s in flame.stacks for i in range(len(s))}
    assert len(groups) == len(nodes) + 1  # and "all" at the root
    assert all(len(g.findall(f"{SVG_NS}rect")) == 1 for g in groups)
    rect = {g.get("data-name"): g.find(f"{SVG_NS}rect") for g in groups}
    full = float(rect["all"].get("width"))
    assert float(rect["phase:decode"].get("width")) / full == pytest.approx(0.5604007 / flame.total, abs=1e-4)
    # Root at the bottom: callees sit above their callers.
    assert (
        float(rect["all"].get("y"))
        > float(rect["phase:decode"].get("y"))
        > float(rect["op:aten::mm"].get("y"))
    )
    title = next(g for g in groups if g.get("data-name") == "phase:prefill").find(f"{SVG_NS}title").text
    assert title == f"phase:prefill (200 ms, {100 * 0.2000004 / flame.total:.2f}%)"


def test_svg_colours_frames_by_layer():
    groups = frame_groups(to_flame_svg(time_flame(), "t"))
    fills = {g.get("data-name").split(":")[0]: g.find(f"{SVG_NS}rect").get("fill") for g in groups}
    assert len({fills["phase"], fills["py"], fills["module"], fills["op"]}) == 4


def test_svg_is_interactive_and_standalone():
    svg = to_flame_svg(time_flame(), "t")
    script = ET.fromstring(svg).find(f"{SVG_NS}script").text
    for needle in ("function zoom", "function unzoom", "function search", "Matched: ", "keydown", "RegExp"):
        assert needle in script
    assert "href" not in svg and "src=" not in svg and "@import" not in svg
    assert svg.count("http") == 1  # the SVG namespace, nothing fetched


def test_svg_escapes_frame_names_and_title():
    svg = to_flame_svg(time_flame(), XSS)
    assert XSS not in svg
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in svg
    root = ET.fromstring(svg)
    assert len(root.findall(f"{SVG_NS}script")) == 1  # only lmprof's own
    assert XSS in [g.get("data-name") for g in frame_groups(svg)]


def test_svg_of_an_empty_flame_still_parses():
    groups = frame_groups(to_flame_svg(FlameGraph("time", "seconds", ""), "empty"))
    assert groups == []


# --- Perfetto / Chrome trace -------------------------------------------------------


def test_trace_round_trips_and_has_no_negative_times():
    trace = json.loads(json.dumps(to_chrome_trace(deep_run()), allow_nan=False))
    assert trace["displayTimeUnit"] == "ms"
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert spans and all(e["ts"] >= 0 and e["dur"] >= 0 for e in spans)
    # python_startup starts at -0.5 s on the session clock: it is the origin.
    startup = next(e for e in spans if e["name"] == "python_startup")
    assert startup["ts"] == 0 and startup["dur"] == 500_000


def test_trace_phases_nest_inside_their_parents():
    run = deep_run()
    events = [e for e in to_chrome_trace(run)["traceEvents"] if e.get("cat") == "phase"]
    by_name = {e["name"]: e for e in events}
    assert len(events) == len(run.phases)
    assert len({e["tid"] for e in events}) == 1
    nested = 0
    for p in run.phases:
        if p.parent_index is None:
            continue
        child, parent = by_name[p.name], by_name[run.phases[p.parent_index].name]
        assert parent["ts"] <= child["ts"]
        assert child["ts"] + child["dur"] <= parent["ts"] + parent["dur"] + 1e-6
        nested += 1
    assert nested == 8


def test_trace_has_one_step_per_generated_token():
    run = deep_run()
    trace = to_chrome_trace(run)
    steps = [e for e in trace["traceEvents"] if e.get("cat") == "token"]
    assert len(steps) == sum(g.new_tokens for g in run.generations) == 4
    assert [e["name"] for e in steps] == ["prefill", "decode step", "decode step", "decode step"]
    # Prefill ends at the first token (2.71 s; origin -0.5 s); the last step ends at 2.71 + 1.48.
    assert steps[0]["ts"] + steps[0]["dur"] == pytest.approx(3_210_000)
    assert steps[-1]["ts"] + steps[-1]["dur"] == pytest.approx(4_690_000)
    assert steps[0]["ts"] == pytest.approx(2_710_000)
    tracks = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert tracks[steps[0]["tid"]] == "tokens"


def test_trace_puts_deep_events_on_named_tracks():
    trace = to_chrome_trace(deep_run())
    tracks = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    deep = {
        e["name"]: tracks[e["tid"]]
        for e in trace["traceEvents"]
        if e.get("cat") in ("op", "module", "kernel")
    }
    assert deep == {"model.layers.0": "cpu thread 1", "aten::mm": "cpu thread 1", "sgemm": "cuda stream 7"}
    assert len(set(tracks.values())) == len(tracks)


def test_trace_has_one_counter_event_per_memory_sample():
    run = deep_run()
    counters = [e for e in to_chrome_trace(run)["traceEvents"] if e["ph"] == "C"]
    host, device = run.memory.host, run.memory.device
    assert len(counters) == len(host["t_s"]) + len(device["t_s"])
    host_events = [e for e in counters if e["name"] == "host memory"]
    assert [e["args"]["rss_bytes"] for e in host_events] == host["rss_bytes"]
    assert [e["args"]["file_rss_bytes"] for e in host_events] == host["file_rss_bytes"]
    assert [e["args"] for e in counters if e["name"] == "device memory"][1] == {
        "allocated_bytes": 2 << 20, "reserved_bytes": 4 << 20,
    }  # fmt: skip


# --- files -------------------------------------------------------------------------


def test_write_exports_writes_every_format(tmp_path):
    written = write_exports(deep_run(), tmp_path)
    names = sorted(p.name for p in written)
    assert names == sorted(
        f"flame-{n}.{ext}" for n in ("time", "memory") for ext in ("speedscope.json", "folded", "svg")
    ) + ["trace.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no temp files left behind
    json.loads((tmp_path / "flame-time.speedscope.json").read_text(encoding="utf-8"))
    parse_folded((tmp_path / "flame-memory.folded").read_text(encoding="utf-8"))
    ET.fromstring((tmp_path / "flame-time.svg").read_text(encoding="utf-8"))
    assert json.loads((tmp_path / "trace.json").read_text(encoding="utf-8"))["traceEvents"]


def test_write_exports_without_deep_profile_writes_the_timeline(tmp_path):
    written = write_exports(sample_run(), tmp_path)
    assert [p.name for p in written] == ["trace.json"]
    events = json.loads(written[0].read_text(encoding="utf-8"))["traceEvents"]
    assert {e.get("cat") for e in events} >= {"phase", "token", "memory"}


def test_write_exports_keeps_flame_names_inside_the_run_folder(tmp_path):
    run = deep_run()
    run.deep.flames = [
        FlameGraph("../x", "bytes", "", [["a"]], [1]),
        FlameGraph("..x", "bytes", "", [["a"]], [1]),
    ]
    written = write_exports(run, tmp_path / "run")
    assert all(p.parent == tmp_path / "run" for p in written)
    assert len({p.name for p in written}) == len(written)


# --- the SVG's script, run in node against a stand-in DOM ----------------------------

# Just enough DOM for the script: attributes, classList, text, listeners, lookups.
FAKE_DOM_JS = r"""
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
function el(attrs, text) {
  const classes = new Set((attrs["class"] || "").split(" ").filter(Boolean));
  const e = {
    attrs: Object.assign({}, attrs), textContent: text || "", children: {}, listeners: {},
    getAttribute(k) { return k in this.attrs ? this.attrs[k] : null; },
    setAttribute(k, v) { this.attrs[k] = String(v); },
    addEventListener(type, f) { (this.listeners[type] = this.listeners[type] || []).push(f); },
    fire(type, ev) { (this.listeners[type] || []).forEach((f) => f(ev || {})); },
    querySelector(tag) { return this.children[tag]; },
    classList: {
      add: (c) => classes.add(c), remove: (c) => classes.delete(c), contains: (c) => classes.has(c),
      toggle: (c, on) => (on ? classes.add(c) : classes.delete(c)),
    },
  };
  return e;
}
const frames = input.frames.map((f) => {
  const g = el(f.attrs);
  g.children = { rect: el(f.rect), text: el({}, f.text), title: el({}, f.title) };
  return g;
});
const ids = {};
for (const [id, attrs] of Object.entries(input.ids)) ids[id] = el(attrs);
const prompts = input.prompts.slice();
const win = el({});
win.prompt = () => prompts.shift();
global.alert = (m) => { throw new Error(m); };
const doc = {
  documentElement: el(input.svg),
  querySelectorAll: (sel) => (sel === "g.frame" ? frames : []),
  getElementById: (id) => ids[id],
};
global.window = win;
global.document = doc;
new Function(input.script)();
function state() {
  return frames.map((g) => ({
    name: g.getAttribute("data-name"), hidden: g.classList.contains("hide"),
    parent: g.classList.contains("parent"), x: +g.children.rect.getAttribute("x"),
    width: +g.children.rect.getAttribute("width"), fill: g.children.rect.getAttribute("fill"),
    label: g.children.text.textContent,
  }));
}
const out = {};
frames.find((g) => g.getAttribute("data-name") === input.zoom).fire("click");
out.zoomed = state();
out.unzoomShown = !ids.unzoom.classList.contains("hide");
win.fire("keydown", { ctrlKey: true, key: "f", preventDefault() {} });
out.searched = state();
out.matched = ids.matched.textContent;
ids.unzoom.fire("click");
win.fire("keydown", { key: "Escape" });
out.reset = state();
out.matchedAfterReset = ids.matched.textContent;
console.log(JSON.stringify(out));
"""


def run_svg_script(svg: str, zoom: str, search: str, tmp_path: Path) -> dict:
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    root = ET.fromstring(svg)
    frames = [
        {
            "attrs": dict(g.attrib),
            "rect": dict(g.find(f"{SVG_NS}rect").attrib),
            "text": g.find(f"{SVG_NS}text").text or "",
            "title": g.find(f"{SVG_NS}title").text,
        }
        for g in frame_groups(svg)
    ]
    ids = {e.get("id"): dict(e.attrib) for e in root.iter() if e.get("id")}
    payload = {
        "svg": dict(root.attrib), "frames": frames, "ids": ids, "prompts": [search],
        "script": root.find(f"{SVG_NS}script").text, "zoom": zoom,
    }  # fmt: skip
    harness = tmp_path / "fake_dom.js"
    harness.write_text(FAKE_DOM_JS, encoding="utf-8")
    done = subprocess.run(
        [node, str(harness)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


def test_svg_script_zooms_searches_and_resets(tmp_path):
    flame = time_flame()
    svg = to_flame_svg(flame, "t")
    out = run_svg_script(svg, zoom="phase:prefill", search="aten::mm", tmp_path=tmp_path)
    zoomed = {f["name"]: f for f in out["zoomed"]}
    assert out["unzoomShown"]
    assert zoomed["all"]["parent"] and not zoomed["all"]["hidden"] and zoomed["all"]["width"] == 1180
    assert zoomed["phase:prefill"]["width"] == 1180 and zoomed["phase:prefill"]["x"] == 10
    assert zoomed["phase:decode"]["hidden"] and zoomed[XSS]["hidden"]
    assert zoomed["module:model.layers.0.mlp"]["width"] == pytest.approx(
        1180 * 0.1200004 / 0.2000004, abs=0.01
    )
    assert zoomed["module:model.layers.0.mlp"]["label"] == "module:model.layers.0.mlp"
    # Both aten::mm boxes light up; their share of the total is shown, not aten::bmm's.
    searched = [f for f in out["searched"] if f["fill"] == "rgb(230,0,230)"]
    assert [f["name"] for f in searched] == ["op:aten::mm", "op:aten::mm"]
    assert out["matched"] == f"Matched: {100 * 0.6200004 / flame.total:.1f}% of the total"
    initial = {(g.get("data-name"), g.find(f"{SVG_NS}rect").get("width")) for g in frame_groups(svg)}
    assert {(f["name"], f"{f['width']:.2f}") for f in out["reset"]} == initial
    assert not any(f["hidden"] or f["parent"] for f in out["reset"]) and out["matchedAfterReset"] == ""
