"""Comparison renderers on fixed hand-built runs (terminal at width 100 without colour,
markdown, HTML), and `lmprof compare` end to end through the real CLI.

Regenerate the golden files after an intended change with:
    LMPROF_UPDATE_GOLDEN=1 pytest tests/unit/test_compare_render.py
"""

import json
import os
from html.parser import HTMLParser
from pathlib import Path

from helpers.runs_for_compare import generation, group, timed_run
from helpers.runs_for_tests import MiB
from rich.console import Console

from lmprof.analyze.compare import compare
from lmprof.analyze.thresholds import check_thresholds, parse_thresholds
from lmprof.render.compare_html import render_comparison_html
from lmprof.render.compare_markdown import render_comparison_markdown
from lmprof.render.compare_terminal import render_comparison

GOLDEN = Path(__file__).parents[1] / "golden"
THRESHOLDS = parse_thresholds(["ttft_s>+10%", "decode_tokens_per_s<-5%", "peak_device_allocated_bytes>+1GiB"])


def single_runs():
    """One run each: the noise is unknown."""
    a = timed_run("a")
    b = timed_run("b", prefill_s=0.6, steps_s=(0.4, 0.4, 0.41), peak_rss_bytes=800 * MiB)
    return compare([group(a, source="runs/a"), group(b, source="runs/b")])


def repeated_runs():
    """A: three repeat runs; B: one run whose generation calls are in-process repeats."""
    a = [
        timed_run(f"a{i}", prefill_s=p, load_model_s=s)
        for i, p, s in ((1, 0.5, 0.5), (2, 0.52, 0.45), (3, 0.49, 0.55))
    ]
    b = timed_run(
        "b", prefill_s=0.6, more_generations=(generation(0.58), generation(0.63)), peak_rss_bytes=650 * MiB
    )
    return compare([group(*a, source="runs/base"), group(b, source="runs/new")])


def terminal_text(comparison, checks=()) -> str:
    console = Console(width=100, color_system=None, record=True, file=open(os.devnull, "w"))
    console.print(render_comparison(comparison, checks))
    return console.export_text()


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("LMPROF_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_terminal_single_runs_matches_golden():
    comparison = single_runs()
    check_golden("compare_single.txt", terminal_text(comparison, check_thresholds(comparison, THRESHOLDS)))


def test_terminal_repeats_matches_golden():
    check_golden("compare_repeats.txt", terminal_text(repeated_runs()))


def test_markdown_matches_golden():
    comparison = repeated_runs()
    check_golden(
        "compare_markdown.txt",
        render_comparison_markdown(comparison, check_thresholds(comparison, THRESHOLDS)),
    )


def test_markdown_escapes_pipes_and_markup_from_runs():
    a = timed_run("a", model_id="evil|<b>x</b>")
    text = render_comparison_markdown(compare([group(a, source="runs/a"), group(timed_run("b"))]))
    assert "evil\\|&lt;b&gt;x&lt;/b&gt;" in text
    assert "<b>" not in text


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs

    def handle_data(self, data):
        self.text.append(data)


def test_html_is_self_contained_and_escapes_strings_from_runs():
    evil = "<script>alert(1)</script>"
    a = timed_run("a", model_id=evil)
    comparison = compare([group(a, source="runs/<img src=x>"), group(timed_run("b", prefill_s=0.7))])
    page_html = render_comparison_html(comparison, check_thresholds(comparison, THRESHOLDS))
    page = _Page()
    page.feed(page_html)
    page.close()
    assert "script" not in page.tags and "img" not in page.tags
    assert not [name for name, _ in page.attrs if name in ("src", "href")]  # nothing fetched from outside
    text = "".join(page.text)
    assert evil in text and "runs/<img src=x>" in text  # shown as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page_html
    assert page.tags.count("tr") == 1 + len(comparison.rows) + len({r.spec.section for r in comparison.rows})
    assert "breached ttft_s>+10%" in text


# --- end to end through the real CLI ----------------------------------------------------


def test_compare_cli_exit_codes(tmp_path, run_cli):
    timed_run("a").save(tmp_path / "a")
    timed_run("b", prefill_s=0.6).save(tmp_path / "b")
    ok = run_cli("compare", tmp_path / "a", tmp_path / "b" / "run.json", "--markdown", tmp_path / "pr.md")
    assert ok.returncode == 0, ok.stderr
    assert "ttft_s" in ok.stdout and "▲ +19.6% worse" in ok.stdout and "noise unknown" in ok.stdout
    assert "| time to first token (`ttft_s`) |" in (tmp_path / "pr.md").read_text()

    breached = run_cli(
        "compare", tmp_path / "a", tmp_path / "b", "--fail-on", "ttft_s>+10%,tpot_s>+10%", "--json"
    )
    assert breached.returncode == 1
    assert (
        breached.stderr.strip() == "lmprof: breached ttft_s>+10%: B +19.6% against A (beyond noise: unknown)"
    )
    data = json.loads(breached.stdout)
    assert [c["breached"] for c in data["checks"]] == [True, False]

    bad = run_cli("compare", tmp_path / "a", tmp_path / "missing", "--fail-on", "ttft_s>+10%")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "no run at" in bad.stderr
