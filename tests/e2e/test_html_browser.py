"""The HTML report in a real browser: headless Chromium driven over the DevTools protocol
(tests/helpers/cdp_browser.py). A real tiny `--deep` run and a hand-built hostile Run are opened
from disk: no console errors or network requests, every section shown, the flame graph
zooms on a click, the memory chart holds one point per sample, and no payload executed.

Skips where no Chromium binary is installed (`.ci/run` installs Debian's). With
LMPROF_UPDATE_SCREENSHOTS=1 the section screenshots are also written to docs/screenshots.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers.cdp_browser import Chromium, find_chromium
from helpers.runs_for_html import PROMPT, TEXT, hostile_run

from lmprof.record.run import load_run
from lmprof.render.html_report import REPORT_FILE, SECTIONS, render_html_report, write_html_report

CHROMIUM = find_chromium()
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH (set LMPROF_CHROMIUM)"
)
pytestmark = [pytest.mark.browser, needs_chromium]


@pytest.fixture(scope="module")
def browser():
    with Chromium(CHROMIUM) as b:
        yield b


@pytest.fixture(scope="module")
def real_run_dir(tmp_path_factory, lmprof_cache):
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("html-run") / "run"
    env = dict(os.environ, LMPROF_CACHE=str(lmprof_cache))
    cmd = [
        sys.executable,
        "-m",
        "lmprof",
        "profile",
        "tiny",
        "--deep",
        "--max-new-tokens",
        "6",
        "--out",
        str(out),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    return out


def test_every_run_writes_its_report(real_run_dir):
    report = real_run_dir / REPORT_FILE
    assert report.is_file()
    assert report.read_text(encoding="utf-8") == render_html_report(load_run(real_run_dir))


def assert_clean(browser, path: Path) -> None:
    assert browser.errors() == []
    assert browser.dialogs == []
    assert browser.requests() == [path.resolve().as_uri()]  # the page itself, nothing else


def visible_sections(browser) -> list[str]:
    return browser.evaluate(
        "Array.from(document.querySelectorAll('main > section'))"
        ".filter(s => s.offsetHeight > 0 && s.querySelector('h2').offsetHeight > 0).map(s => s.id)"
    )


def test_real_report_opens_clean_with_every_section(browser, real_run_dir):
    report = real_run_dir / REPORT_FILE
    browser.open(report)
    assert_clean(browser, report)
    assert visible_sections(browser) == [sid for sid, _ in SECTIONS]
    # The deep sections hold data, not the "profiled without --deep" note.
    assert browser.evaluate("document.querySelectorAll('#operators table.sortable').length") >= 3
    assert browser.evaluate("document.querySelectorAll('#flame svg.flame').length") == len(
        load_run(real_run_dir).deep.flames
    )


def test_memory_chart_has_one_point_per_host_sample(browser, real_run_dir):
    run = load_run(real_run_dir)
    browser.open(real_run_dir / REPORT_FILE)
    # The browser's own parse of the polyline, not the attribute we wrote.
    count = browser.evaluate(
        "document.querySelector('polyline[data-series=\"host-rss\"]').points.numberOfItems"
    )
    assert count == len(run.memory.host["t_s"]) > 10
    assert browser.evaluate("document.querySelectorAll('#memory .peak circle').length") >= 1


def frame_box(browser, selector: str) -> dict:
    return browser.evaluate(
        f"(() => {{ const r = document.querySelector({json.dumps(selector)}); r.scrollIntoView({{block: 'center'}});"
        " const b = r.getBoundingClientRect();"
        " return {x: b.x + b.width / 2, y: b.y + b.height / 2, width: parseFloat(r.getAttribute('width'))}; })()"
    )


def test_flame_graph_zooms_on_a_click_and_resets(browser, real_run_dir):
    browser.open(real_run_dir / REPORT_FILE)
    # A depth-1 box narrower than the whole plot: zooming must widen it to the full width.
    key = browser.evaluate(
        "(() => { const gs = Array.from(document.querySelectorAll('#flame-0 g.frame[data-depth=\"1\"]'));"
        " gs.sort((a, b) => b.getAttribute('data-w') - a.getAttribute('data-w'));"
        " const g = gs.find(g => parseFloat(g.getAttribute('data-w')) < 0.99 && parseFloat(g.getAttribute('data-w')) > 0.05);"
        " g.setAttribute('data-test-target', '1'); return g.getAttribute('data-name'); })()"
    )
    assert key
    target = "#flame-0 g.frame[data-test-target] rect"
    before = frame_box(browser, target)
    plot_w = float(browser.evaluate("document.getElementById('flame-0').getAttribute('data-plot-width')"))
    assert before["width"] < plot_w * 0.99
    browser.click(before["x"], before["y"])
    after = frame_box(browser, target)
    assert after["width"] == pytest.approx(plot_w, abs=0.05)
    assert browser.evaluate("document.getElementById('flame-0-unzoom').classList.contains('hide')") is False
    reset = browser.evaluate(
        "(() => { const b = document.getElementById('flame-0-unzoom').getBoundingClientRect();"
        " return {x: b.x + b.width / 2, y: b.y + b.height / 2}; })()"
    )
    browser.click(reset["x"], reset["y"])
    assert frame_box(browser, target)["width"] == pytest.approx(before["width"], abs=0.05)
    assert browser.errors() == []


def test_operator_table_sorts_when_a_header_is_clicked(browser, real_run_dir):
    browser.open(real_run_dir / REPORT_FILE)
    read = (
        "Array.from(document.querySelectorAll('table.operators')[0].tBodies[0].rows)"
        ".map(r => parseFloat(r.cells[1].getAttribute('data-v')))"
    )
    header = browser.evaluate(
        "(() => { const th = document.querySelectorAll('table.operators')[0].tHead.rows[0].cells[1];"
        " th.scrollIntoView({block: 'center'}); const b = th.getBoundingClientRect();"
        " return {x: b.x + b.width / 2, y: b.y + b.height / 2, text: th.textContent}; })()"
    )
    assert header["text"] == "calls"
    browser.click(header["x"], header["y"])
    calls = browser.evaluate(read)
    assert calls == sorted(calls) and len(set(calls)) > 1
    browser.click(header["x"], header["y"])
    assert browser.evaluate(read) == sorted(calls, reverse=True)


def test_hostile_prompt_shows_as_text_and_never_runs(browser, tmp_path):
    path = write_html_report(hostile_run(), tmp_path)
    browser.open(path)
    assert_clean(browser, path)
    assert visible_sections(browser) == [sid for sid, _ in SECTIONS]
    assert browser.evaluate("document.querySelector('#text pre.prompt').innerText") == PROMPT
    assert browser.evaluate("document.querySelector('#text pre.generated').textContent") == TEXT
    assert browser.evaluate("document.querySelector('#text pre.prompt').offsetHeight") > 0
    # Only the page's own scripts exist: the sort script and one per flame graph.
    assert browser.evaluate("document.scripts.length") == 1 + len(hostile_run().deep.flames)
    assert browser.evaluate("document.querySelectorAll('img, main i, main b').length") == 0


def test_screenshot_of_each_section(browser, real_run_dir, tmp_path):
    browser.open(real_run_dir / REPORT_FILE)
    targets = [tmp_path]
    if os.environ.get("LMPROF_UPDATE_SCREENSHOTS") == "1":
        targets.append(SCREENSHOTS)
    for sid, _ in SECTIONS:
        box = browser.evaluate(
            f"(() => {{ const b = document.getElementById('{sid}').getBoundingClientRect();"
            " return {x: 0, y: b.top + window.scrollY, width: document.documentElement.clientWidth,"
            " height: Math.min(b.height, 1400)}; })()"
        )
        for folder in targets:
            shot = folder / f"report-{sid}.png"
            browser.screenshot(shot, clip=box)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 2000
