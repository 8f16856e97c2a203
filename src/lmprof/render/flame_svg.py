"""A flame graph as one standalone, interactive SVG, in the manner of flamegraph.pl.

Root at the bottom, callees stacked above, each box as wide as its share of the weight;
siblings are merged and sorted by name (a flame graph, not a flame chart). Boxes are
coloured by frame layer ("phase:", "py:", "module:", "op:", "kernel:", "alloc:").
The inline script gives click-to-zoom, reset zoom, and regex search (the Search button
or Ctrl-F) that highlights matches and shows the share of the total they cover. The file
loads nothing from anywhere else, so it opens from disk or an air-gapped machine.
"""

from __future__ import annotations

import colorsys
import math
import re
import zlib
from dataclasses import dataclass, field

from lmprof.record.deep import FlameGraph
from lmprof.render.units import fmt_bytes, fmt_s

WIDTH_PX = 1200
X_PAD_PX = 10
FRAME_HEIGHT_PX = 16
FONT_SIZE_PX = 12
CHAR_WIDTH_PX = FONT_SIZE_PX * 0.59  # flamegraph.pl's estimate for Verdana
TOP_PX = 50  # title, subtitle, buttons
BOTTOM_PX = 30  # the details line

# Hue (degrees) and saturation per frame layer; lightness varies by name within a layer.
_LAYER_HUES = {
    "phase": (275, 0.55),
    "py": (48, 0.85),
    "module": (120, 0.50),
    "op": (20, 0.80),
    "kernel": (185, 0.60),
    "alloc": (215, 0.65),
}
_OTHER_COLOUR = (0, 0.0)

# Characters XML 1.0 forbids even when escaped; a frame name could carry any of them.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass
class _Node:
    name: str
    weight: float = 0.0
    children: dict[str, _Node] = field(default_factory=dict)


def to_flame_svg(flame: FlameGraph, title: str, min_width_px: float = 0.1) -> str:
    """Boxes narrower than `min_width_px` at full width are left out with their callees,
    as flamegraph.pl does, so a profile with thousands of tiny operators stays small."""
    root = _tree(flame)
    plot_w = WIDTH_PX - 2 * X_PAD_PX
    boxes: list[tuple[_Node, int, float, float]] = []  # node, depth, x0 and width as shares of the total
    if root.weight > 0:
        _layout(root, 0, 0.0, root.weight, plot_w, min_width_px, boxes)
    depth_count = max((d for _, d, _, _ in boxes), default=0) + 1
    height = TOP_PX + depth_count * FRAME_HEIGHT_PX + BOTTOM_PX

    out = [
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH_PX}" height="{height}" '
        f'viewBox="0 0 {WIDTH_PX} {height}" style="background-color:#f8f8f8" '
        f'data-xpad="{X_PAD_PX}" data-plot-width="{plot_w}" data-char-width="{CHAR_WIDTH_PX:.3f}">',
        f"<style>{_STYLE}</style>",
        f'<text id="title" x="{WIDTH_PX / 2}" y="20" text-anchor="middle">{_esc(title)}</text>',
        f'<text id="subtitle" x="{WIDTH_PX / 2}" y="38" text-anchor="middle">'
        f"{_esc(_subtitle(flame, root.weight))}</text>",
        f'<text id="unzoom" class="button hide" x="{X_PAD_PX}" y="20">Reset Zoom</text>',
        f'<text id="search" class="button" x="{WIDTH_PX - X_PAD_PX}" y="20" text-anchor="end">Search</text>',
        f'<text id="matched" x="{WIDTH_PX - X_PAD_PX}" y="{height - 10}" text-anchor="end"></text>',
        f'<text id="details" x="{X_PAD_PX}" y="{height - 10}"> </text>',
        '<g id="frames">',
    ]
    for node, depth, x0, w in boxes:
        out.append(_box(node, depth, x0, w, flame.unit, root.weight, plot_w, height))
    out += ["</g>", f"<script><![CDATA[{_SCRIPT}]]></script>", "</svg>", ""]
    return "\n".join(out)


def _tree(flame: FlameGraph) -> _Node:
    root = _Node("all")
    for stack, weight in zip(flame.stacks, flame.weights):
        if not stack or not (math.isfinite(weight) and weight > 0):
            continue  # nothing to draw, as in the folded and speedscope exports
        node = root
        node.weight += weight
        for name in stack:
            node = node.children.setdefault(name, _Node(name))
            node.weight += weight
    return root


def _layout(
    node: _Node,
    depth: int,
    x0: float,
    total: float,
    plot_w: int,
    min_width_px: float,
    boxes: list[tuple[_Node, int, float, float]],
) -> None:
    boxes.append((node, depth, x0 / total, node.weight / total))
    x = x0
    for name in sorted(node.children):
        child = node.children[name]
        if child.weight / total * plot_w >= min_width_px:
            _layout(child, depth + 1, x, total, plot_w, min_width_px, boxes)
        x += child.weight


def _box(
    node: _Node, depth: int, x0: float, w: float, unit: str, total: float, plot_w: int, height: int
) -> str:
    x = X_PAD_PX + x0 * plot_w
    width = w * plot_w
    y = height - BOTTOM_PX - (depth + 1) * FRAME_HEIGHT_PX
    fill = _colour(node.name) if depth else "rgb(200,200,200)"
    tip = f"{node.name} ({_fmt_weight(node.weight, unit)}, {100 * node.weight / total:.2f}%)"
    name = _esc(node.name)
    return (
        f'<g class="frame" data-name="{name}" data-depth="{depth}" data-x0="{x0:.12g}" data-w="{w:.12g}" '
        f'data-fill="{fill}"><title>{_esc(tip)}</title>'
        f'<rect x="{x:.2f}" y="{y}" width="{width:.2f}" height="{FRAME_HEIGHT_PX - 1}" fill="{fill}" rx="2" ry="2"/>'
        f'<text x="{x + 3:.2f}" y="{y + FRAME_HEIGHT_PX - 4}">{_esc(_fit(node.name, width))}</text></g>'
    )


def _fit(name: str, width_px: float) -> str:
    """The label that fits the box; the script redoes this after each zoom."""
    max_chars = int((width_px - 6) // CHAR_WIDTH_PX)
    if max_chars < 3:
        return ""
    return name if len(name) <= max_chars else name[: max_chars - 2] + ".."


def _colour(name: str) -> str:
    layer = name.split(":", 1)[0] if ":" in name else ""
    hue, sat = _LAYER_HUES.get(layer, _OTHER_COLOUR)
    # crc32, not hash(): the same frame gets the same shade in every run and process.
    shade = (zlib.crc32(name.encode("utf-8")) % 1000) / 1000
    r, g, b = colorsys.hls_to_rgb(hue / 360, 0.58 + 0.2 * shade, sat)
    return f"rgb({round(r * 255)},{round(g * 255)},{round(b * 255)})"


def _fmt_weight(weight: float, unit: str) -> str:
    if unit == "seconds":
        return fmt_s(weight)
    if unit == "bytes":
        return fmt_bytes(weight)
    return f"{weight:g} {unit}"


def _subtitle(flame: FlameGraph, total: float) -> str:
    parts = [f"{flame.name}: {_fmt_weight(total, flame.unit)} in total"]
    if flame.source:
        parts.append(flame.source)
    return " · ".join(parts) + " · click a box to zoom, Ctrl-F to search"


def _esc(text: str) -> str:
    """Text safe inside an XML element or a double-quoted attribute."""
    text = _XML_INVALID.sub("\ufffd", text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    # As character references, line breaks and tabs survive attribute-value normalization.
    return text.replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")


_STYLE = (
    "text { font-family: Verdana, sans-serif; font-size: 12px; fill: #000; }"
    " #title { font-size: 17px; } #subtitle { fill: #555; }"
    " .frame text { pointer-events: none; }"
    " .frame rect { stroke: #f8f8f8; stroke-width: 0.5; cursor: pointer; }"
    " .frame:hover rect { stroke: #000; stroke-width: 0.5; }"
    " .parent { opacity: 0.5; } .hide { display: none; }"
    " .button { cursor: pointer; fill: #1a56a0; } .button:hover { text-decoration: underline; }"
)

# Plain ES5 so it runs in any browser's SVG viewer. Positions come from data-x0 / data-w
# (shares of the total), so zoom and reset never accumulate rounding.
_SCRIPT = r"""
(function () {
  "use strict";
  var svg = document.documentElement;
  var xpad = parseFloat(svg.getAttribute("data-xpad"));
  var plotW = parseFloat(svg.getAttribute("data-plot-width"));
  var charW = parseFloat(svg.getAttribute("data-char-width"));
  var frames = Array.prototype.slice.call(document.querySelectorAll("g.frame"));
  var details = document.getElementById("details");
  var matched = document.getElementById("matched");
  var unzoomButton = document.getElementById("unzoom");
  var searchButton = document.getElementById("search");

  function num(g, key) { return parseFloat(g.getAttribute("data-" + key)); }

  function place(g, x, w) {
    var rect = g.querySelector("rect"), text = g.querySelector("text");
    var name = g.getAttribute("data-name"), maxChars = Math.floor((w - 6) / charW);
    rect.setAttribute("x", x.toFixed(2));
    rect.setAttribute("width", w.toFixed(2));
    text.setAttribute("x", (x + 3).toFixed(2));
    if (maxChars < 3) { text.textContent = ""; }
    else if (name.length <= maxChars) { text.textContent = name; }
    else { text.textContent = name.slice(0, maxChars - 2) + ".."; }
  }

  function zoom(target) {
    var x0 = num(target, "x0"), w0 = num(target, "w"), d0 = num(target, "depth"), eps = 1e-12;
    frames.forEach(function (g) {
      var x = num(g, "x0"), w = num(g, "w"), d = num(g, "depth");
      if (d < d0 && x <= x0 + eps && x + w >= x0 + w0 - eps) {
        g.classList.remove("hide"); g.classList.add("parent"); place(g, xpad, plotW);
      } else if (d >= d0 && x >= x0 - eps && x + w <= x0 + w0 + eps) {
        g.classList.remove("hide"); g.classList.remove("parent");
        place(g, xpad + (x - x0) / w0 * plotW, w / w0 * plotW);
      } else {
        g.classList.add("hide");
      }
    });
    unzoomButton.classList.toggle("hide", d0 === 0);
  }

  function unzoom() {
    frames.forEach(function (g) {
      g.classList.remove("hide"); g.classList.remove("parent");
      place(g, xpad + num(g, "x0") * plotW, num(g, "w") * plotW);
    });
    unzoomButton.classList.add("hide");
  }

  function clearSearch() {
    frames.forEach(function (g) { g.querySelector("rect").setAttribute("fill", g.getAttribute("data-fill")); });
    matched.textContent = "";
    searchButton.textContent = "Search";
  }

  function search(term) {
    if (term === null) { return; }
    if (term === "") { clearSearch(); return; }
    var re;
    try { re = new RegExp(term); } catch (err) { alert("Not a regular expression: " + err.message); return; }
    var ranges = [];
    frames.forEach(function (g) {
      var hit = num(g, "depth") > 0 && re.test(g.getAttribute("data-name"));
      g.querySelector("rect").setAttribute("fill", hit ? "rgb(230,0,230)" : g.getAttribute("data-fill"));
      if (hit) { ranges.push([num(g, "x0"), num(g, "x0") + num(g, "w")]); }
    });
    // Matches nested in other matches cover the same weight: count the union of ranges.
    ranges.sort(function (a, b) { return a[0] - b[0]; });
    var share = 0, end = -1;
    ranges.forEach(function (r) {
      if (r[1] > end) { share += r[1] - Math.max(r[0], end); end = r[1]; }
    });
    matched.textContent = "Matched: " + (100 * share).toFixed(1) + "% of the total";
    searchButton.textContent = "Search: " + term + " (click to change, Esc to clear)";
  }

  function prompted() { search(window.prompt("Highlight frames matching (regular expression)", "")); }

  frames.forEach(function (g) {
    g.addEventListener("click", function () { zoom(g); });
    g.addEventListener("mouseover", function () { details.textContent = g.querySelector("title").textContent; });
    g.addEventListener("mouseout", function () { details.textContent = " "; });
  });
  unzoomButton.addEventListener("click", unzoom);
  searchButton.addEventListener("click", prompted);
  window.addEventListener("keydown", function (e) {
    if ((e.ctrlKey || e.metaKey) && (e.key === "f" || e.key === "F")) { e.preventDefault(); prompted(); }
    else if (e.key === "Escape") { clearSearch(); }
  });
})();
"""
