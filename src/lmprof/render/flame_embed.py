"""The standalone flame-graph SVG (`flame_svg.to_flame_svg`) placed inline in an HTML page.

The standalone file assumes it is the whole document: its script reads
`document.documentElement`, looks its buttons up by id and listens for Ctrl-F on the
window, and its stylesheet uses bare selectors. Inline, several flame graphs share one
page with other content, so each one gets its ids prefixed, its stylesheet scoped to its
own <svg>, and its unchanged script run against a small stand-in `document` and `window`
that answer for that <svg> alone (Ctrl-F and Esc only while the pointer is over it).
"""

from __future__ import annotations

import re

from lmprof.record.deep import FlameGraph
from lmprof.render.flame_svg import to_flame_svg

_PROLOGUE = re.compile(r"<\?xml[^>]*\?>\s*")
_SCRIPT = re.compile(r"<script><!\[CDATA\[(.*?)\]\]></script>", re.DOTALL)
_STYLE = re.compile(r"<style>(.*?)</style>", re.DOTALL)
_ID = re.compile(r' id="([A-Za-z][\w-]*)"')
_RULE = re.compile(r"([^{}]+)\{")

_SHIM = """(function () {
  var root = document.getElementById(%(svg_id)s), prefix = %(prefix)s, over = false;
  root.addEventListener("mouseenter", function () { over = true; });
  root.addEventListener("mouseleave", function () { over = false; });
  var doc = {
    documentElement: root,
    querySelectorAll: function (sel) { return root.querySelectorAll(sel); },
    getElementById: function (id) { return document.getElementById(prefix + id); }
  };
  var win = {
    prompt: function (a, b) { return window.prompt(a, b); },
    addEventListener: function (type, fn) {
      window.addEventListener(type, function (e) { if (over) { fn(e); } });
    }
  };
  (function (document, window) {
%(script)s
  })(doc, win);
})();"""


def inline_flame(flame: FlameGraph, title: str, key: str) -> tuple[str, str]:
    """(svg markup, script) for the flame graph; `key` makes its ids unique in the page.

    The script is returned apart so the page can run it after the markup is in place."""
    svg = to_flame_svg(flame, title)
    prefix = f"flame-{key}-"
    svg_id = f"flame-{key}"
    script_match = _SCRIPT.search(svg)
    script = script_match.group(1) if script_match else ""
    svg = _PROLOGUE.sub("", _SCRIPT.sub("", svg))
    svg = _STYLE.sub(lambda m: "<style>" + scope_css(m.group(1), f"#{svg_id}") + "</style>", svg)
    svg = _ID.sub(lambda m: f' id="{prefix}{m.group(1)}"', svg)
    svg = svg.replace("<svg ", f'<svg id="{svg_id}" class="flame" data-flame="{key}" ', 1)
    svg = svg.replace(
        ' style="background-color:#f8f8f8"', ' style="background-color:#f8f8f8;max-width:100%;height:auto"', 1
    )
    shim = _SHIM % {"svg_id": _js_str(svg_id), "prefix": _js_str(prefix), "script": script}
    return svg.strip(), shim


def scope_css(css: str, scope: str) -> str:
    """Prefix every selector of a flat stylesheet (no @-rules) with `scope`, and
    rewrite id selectors to the prefixed ids."""
    id_prefix = scope.lstrip("#") + "-"

    def rule(m: re.Match[str]) -> str:
        selectors = [s.strip() for s in m.group(1).split(",")]
        scoped = [
            f"{scope} " + re.sub(r"#([A-Za-z][\w-]*)", lambda i: f"#{id_prefix}{i.group(1)}", s)
            for s in selectors
        ]
        return " " + ", ".join(scoped) + " {"

    return _RULE.sub(rule, css)


def _js_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
