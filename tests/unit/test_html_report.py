"""The HTML report without a browser: sections, escaping, self-containment, well-formed
markup, and the figures each chart was drawn from. Hand-built Runs, no model."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from helpers.runs_for_html import FRAME, MODEL_ID, PROMPT, TEXT, hostile_run
from helpers.runs_for_tests import sample_run

from lmprof.cli.main import main
from lmprof.record.run import Run, load_run
from lmprof.render.html_report import REPORT_FILE, SECTIONS, render_html_report, write_html_report
from lmprof.render.perfetto import token_steps

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Page(HTMLParser):
    """Every element with its attributes, script bodies, and nesting errors."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []
        self._stack: list[str] = []
        self.feed(text)
        self.close()
        if self._stack:
            self.errors.append(f"unclosed: {self._stack}")

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag not in VOID:
            self._stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self._stack or self._stack[-1] != tag:
            self.errors.append(
                f"</{tag}> closes <{self._stack[-1] if self._stack else None}> at {self.getpos()}"
            )
            return
        self._stack.pop()

    def handle_data(self, data):
        if self._stack and self._stack[-1] == "script":
            self.scripts.append(data)
        else:
            self.text.append(data)

    def with_attr(self, name: str, value: str | None = None) -> list[dict[str, str | None]]:
        return [a for _, a in self.elements if name in a and (value is None or a[name] == value)]

    def by_class(self, cls: str) -> list[tuple[str, dict[str, str | None]]]:
        return [(t, a) for t, a in self.elements if cls in (a.get("class") or "").split()]


@pytest.fixture(scope="module")
def hostile() -> tuple[Run, str, Page]:
    run = hostile_run()
    text = render_html_report(run)
    return run, text, Page(text)


def test_every_section_is_present_with_a_heading(hostile):
    _, text, page = hostile
    ids = [a["id"] for t, a in page.elements if t == "section"]
    assert ids == [sid for sid, _ in SECTIONS]
    for sid, title in SECTIONS:
        assert re.search(rf'<section id="{sid}">\s*<h2>{re.escape(title)}</h2>', text)


def test_markup_well_formed_and_ids_unique(hostile):
    _, text, page = hostile
    assert text.startswith("<!DOCTYPE html>")
    assert page.errors == []
    ids = [a["id"] for _, a in page.elements if "id" in a]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_model_and_user_text_is_escaped(hostile):
    _, text, page = hostile
    for payload in (PROMPT, TEXT, MODEL_ID, FRAME, "resolve<i>x</i>", "<b>not bold</b>"):
        assert payload not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    # Shown as text where it belongs, parsed back to exactly what the user typed.
    body = "".join(page.text)
    for payload in (PROMPT, TEXT, "<b>not bold</b>"):
        assert payload in body
    # No script, handler or element came from the payloads.
    assert not any(re.search(r"alert\([1-5]\)", s) for s in page.scripts)
    assert not any(k.startswith("on") for _, a in page.elements for k in a)
    assert not [t for t, _ in page.elements if t in ("img", "i", "b")]


def test_self_contained_no_external_references(hostile):
    _, text, page = hostile
    for tag, attrs in page.elements:
        assert tag not in ("link", "iframe", "object", "embed", "img", "base"), tag
        for key in ("src", "href", "xlink:href", "action", "poster"):
            value = attrs.get(key)
            if value is not None:
                assert value.startswith("#"), f"<{tag} {key}={value!r}>"
        assert "src" not in attrs
    styles = re.findall(r"<style>(.*?)</style>", text, re.DOTALL)
    assert styles and not any("url(" in s or "@import" in s for s in styles)
    assert not any(re.search(r"https?:|//[a-z]", s) for s in page.scripts)
    # The only http(s) text left is the SVG namespace, which no browser fetches.
    assert set(re.findall(r"https?://[^\s\"'<]+", text)) <= {"http://www.w3.org/2000/svg"}


def test_memory_charts_have_one_point_per_sample_and_the_peak(hostile):
    run, _, page = hostile
    host = page.with_attr("data-series", "host-rss")
    assert len(host) == 1 and int(host[0]["data-points"]) == len(run.memory.host["t_s"])
    assert len(host[0]["points"].split()) == len(run.memory.host["t_s"])
    device = page.with_attr("data-series", "device-allocated")
    assert len(device[0]["points"].split()) == len(run.memory.device["t_s"])
    peaks = page.by_class("peak")
    assert [float(a["data-bytes"]) for _, a in peaks] == [run.memory.peak_rss_bytes, 3 * (1 << 20)]
    bands = [a["data-name"] for _, a in page.by_class("band")]
    assert bands[: len([p for p in run.phases if p.depth == 0])] == [
        p.name for p in run.phases if p.depth == 0
    ]


def test_timeline_draws_every_phase_and_every_token_step(hostile):
    run, _, page = hostile
    whole = page.by_class("gantt")[0][1]
    assert int(whole["data-phases"]) == len(run.phases)
    assert int(whole["data-steps"]) == len(token_steps(run.generation)) == run.generation.new_tokens
    assert len(page.by_class("step")) == 2 * len(token_steps(run.generation))  # whole run and the zoomed call
    assert len(page.by_class("prefill")) == 2


def test_latency_chart_has_each_step_and_the_percentile_lines(hostile):
    run, _, page = hostile
    ((_, chart),) = page.by_class("latency")[:1]
    assert int(chart["data-points"]) == len(run.generation.decode_step_latencies_s)
    lines = {a["data-name"]: float(a["data-seconds"]) for _, a in page.by_class("percentile")}
    assert set(lines) == {"p50", "p90", "p99"}
    assert lines == pytest.approx(run.generation.itl_percentiles_s, rel=1e-5)


def test_deep_tables_are_sortable_with_raw_values(hostile):
    run, text, page = hostile
    assert len(page.by_class("sortable")) >= 3
    assert "SORT_SCRIPT" not in text and any("aria-sort" in s for s in page.scripts)
    values = sorted(float(a["data-v"]) for a in page.with_attr("data-v") if a["data-v"])
    assert 90.0 in values  # aten::<add> calls
    assert "model.layers.*.mlp" in text  # layers summed, as in the terminal


def test_memory_by_kind_sits_beside_its_expectation(hostile):
    _, _, page = hostile
    expected = {a["data-kind"] for _, a in page.by_class("expected")}
    assert expected == {"weights_mapped", "kv_cache"}


def test_flame_graphs_are_inline_scoped_and_interactive(hostile):
    run, text, page = hostile
    flames = [a for t, a in page.elements if t == "svg" and "flame" in (a.get("class") or "").split()]
    assert [a["data-flame"] for a in flames] == ["0", "1"]
    assert "<?xml" not in text
    assert len([a for _, a in page.by_class("frame")]) >= 2 * 3
    for key in ("0", "1"):
        for part in ("unzoom", "search", "details", "matched"):
            assert f'id="flame-{key}-{part}"' in text
    # Each flame's own script runs against its own <svg>, and its stylesheet is scoped to it.
    assert sum("getElementById(prefix + id)" in s for s in page.scripts) == 2
    assert "#flame-0 .frame rect" in text and "#flame-0 #flame-0-title" in text


def test_a_run_without_deep_still_has_every_section_saying_so():
    page = Page(render_html_report(sample_run()))
    assert [a["id"] for t, a in page.elements if t == "section"] == [sid for sid, _ in SECTIONS]
    assert "".join(page.text).count("profiled without --deep") == 3
    assert page.errors == []


def test_a_bare_run_renders():
    bare = Run(run_id="x", created_at="2026-01-01T00:00:00+00:00", lmprof_version="0", status="failed",
               error={"type": "OSError", "message": "<boom>"})  # fmt: skip
    text = render_html_report(bare)
    assert "&lt;boom&gt;" in text and Page(text).errors == []


def test_write_and_show_html_rebuild_the_report_from_run_json(tmp_path, capsys):
    run = hostile_run()
    run.save(tmp_path)
    assert write_html_report(run, tmp_path) == tmp_path / REPORT_FILE
    first = (tmp_path / REPORT_FILE).read_text(encoding="utf-8")
    (tmp_path / REPORT_FILE).unlink()
    assert main(["show", str(tmp_path), "--html"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / REPORT_FILE)
    assert (
        (tmp_path / REPORT_FILE).read_text(encoding="utf-8")
        == first
        == render_html_report(load_run(tmp_path))
    )


def test_collector_costs_are_stated():
    from helpers.runs_for_tests import sample_run

    from lmprof.record.deep import DeepProfile
    from lmprof.render.html_report import render_html_report

    run = sample_run()
    run.deep = DeepProfile(overhead={"py-spy": {"slowdown": 1.23, "repeats": 3}})
    assert "py-spy slowed a calibration workload 1.23x" in render_html_report(run)
