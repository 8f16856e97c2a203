"""Nesting of host trace spans into a tree, by time, on the main thread.

torch.profiler emits flat spans; a span that starts inside another and ends before it is
its child. Python frames (with_stack), module ranges and aten ops all nest this way, so
one walk gives the call stack of every op: Python -> nn.Module path -> op -> launch.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from lmprof.collect.trace_events import LAUNCH_CATEGORIES, MODULE_PREFIX, Span

HOST_CATEGORIES = {"cpu_op", "user_annotation", "python_function", *LAUNCH_CATEGORIES}
HOOK_FILE = "lmprof/collect/torch_trace.py"
EPS_S = 1e-9
# View, metadata and empty-allocation ops that run inside another op (aten::linear -> aten::t
# -> aten::transpose -> aten::as_strided): folded into that op, their microseconds its own
# time, and no node made. They were about a third of the default model's 100,000 traced ops,
# and every analysis walks every node. Called directly from model code they stay ops.
FOLDED_INSIDE_OPS = frozenset(
    "aten::" + name
    for name in (
        "as_strided", "resolve_conj", "resolve_neg", "view", "_unsafe_view", "_reshape_alias", "reshape",
        "transpose", "t", "slice", "select", "narrow", "unsqueeze", "squeeze", "expand", "permute", "alias",
        "detach", "empty", "empty_strided", "empty_like",
    )
)  # fmt: skip


@dataclass(eq=False, slots=True)
class Node:
    """One span in the tree. What the analyses ask of every node's ancestors (its nearest
    module, the nearest module of a step-part category, whether an op encloses it, its stack of
    frames) is worked out once, from the parent, as the tree is built: a decode step of a
    30-layer model has thousands of ops, and walking each one's ancestors per question cost
    seconds over 16 steps."""

    span: Span
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    module: str | None = None  # the nearest module path, this node's own when it is a range
    category_module: str | None = None  # the nearest module path whose category is not "other"
    in_op: bool = False  # an aten op (or a native op) encloses this node
    frames: tuple[str, ...] = ()  # root first, this node's own frame last

    def __post_init__(self) -> None:
        parent = self.parent
        path = self.module_path
        if parent is not None:
            self.module = path if path is not None else parent.module
            self.category_module = parent.category_module
            self.in_op = parent.in_op or parent.span.cat == "cpu_op"
            self.frames = parent.frames + (frame_label(self),)
        else:
            self.module = path
            self.frames = (frame_label(self),)
        if path is not None and module_category(path) != "other_in_model":
            self.category_module = path

    own_s: float | None = None  # self_s, once asked (the tree is complete by then)

    @property
    def self_s(self) -> float:
        if self.own_s is None:
            self.own_s = max(self.span.dur_s - sum([c.span.dur_s for c in self.children]), 0.0)
        return self.own_s

    @property
    def is_module(self) -> bool:
        return self.span.cat == "user_annotation" and self.span.name.startswith(MODULE_PREFIX)

    @property
    def module_path(self) -> str | None:
        return self.span.name[len(MODULE_PREFIX) :] if self.is_module else None

    def ancestors(self) -> Iterator[Node]:
        node = self.parent
        while node is not None:
            yield node
            node = node.parent

    def nearest_module(self) -> str | None:
        return self.module

    def walk(self) -> Iterator[Node]:
        """This node and everything under it, in time order (an explicit stack: nested
        generators cost a frame per level for every node)."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))


@functools.lru_cache(maxsize=4096)
def module_category(path: str | None) -> str:
    """Which part of a transformer block a module path is (for the decode-step breakdown)."""
    if path is None:
        return "outside_model"
    leaf = path.rsplit(".", 1)[-1].lower()
    # Norms first: "post_attention_layernorm" and "attention_norm" are norms, not attention.
    if "norm" in leaf or leaf.startswith("ln"):
        return "norm"
    if "attn" in leaf or "attention" in leaf:
        return "attention"
    if "mlp" in leaf or leaf in ("ffn", "feed_forward"):
        return "mlp"
    if "embed" in leaf or leaf == "wte":
        return "embedding"
    if leaf in ("lm_head", "output"):
        return "lm_head"
    return "other_in_model"


def frame_label(node: Node) -> str:
    """A node's frame in a flame graph: its layer, then its name."""
    s = node.span
    if node.is_module:
        return "module:" + (node.module_path or "")
    if s.cat == "python_function":
        return "py:" + s.name
    if s.cat in LAUNCH_CATEGORIES:
        return "cuda:" + s.name
    return "op:" + s.name


def _is_own_hook(span: Span) -> bool:
    return span.cat == "python_function" and HOOK_FILE in span.name


def build_tree(spans: Iterable[Span], main_tid: int | str) -> list[Node]:
    """Root nodes of the main thread's host spans (spans must be sorted by start, longest first).

    lmprof's own module hooks open a module range in one Python frame and close it in
    another, so those frames (and what runs inside them: record_function's own calls)
    are dropped; the module range then nests in the module's `_call_impl` frame, and the
    hooks' cost stays visible as that frame's own time. Ops of FOLDED_INSIDE_OPS inside
    another op make no node."""
    host = [s for s in spans if s.cat in HOST_CATEGORIES and s.tid == main_tid]
    hooks = [(s.start_s, s.end_s) for s in host if _is_own_hook(s)]
    hook_starts = [h[0] for h in hooks]
    roots: list[Node] = []
    stack: list[Node] = []
    for span in host:
        if span.cat != "user_annotation" and _inside(hooks, hook_starts, span):
            continue
        while stack and stack[-1].span.end_s <= span.start_s + EPS_S:
            stack.pop()
        if (
            span.name in FOLDED_INSIDE_OPS
            and stack
            and stack[-1].span.cat == "cpu_op"
            and span.cat == "cpu_op"
        ):
            continue
        if stack and span.end_s > stack[-1].span.end_s:
            # A span that outlives its parent (a hook's Python frame that closes the module
            # range it runs in) is clipped to it, so children never exceed their parent.
            parent_end = stack[-1].span.end_s
            span = replace(span, dur_s=max(parent_end - span.start_s, 0.0))
        node = Node(span, parent=stack[-1] if stack else None)
        (node.parent.children if node.parent else roots).append(node)
        stack.append(node)
    return roots


def all_nodes(roots: list[Node]) -> Iterator[Node]:
    """Every node, in time order (pre-order of a tree nested by time)."""
    stack = list(reversed(roots))
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


def innermost_at(roots: list[Node], t_s: float) -> Node | None:
    """The deepest node covering time t_s (for instant events such as allocations)."""
    level = roots
    found = None
    while True:
        nxt = None
        lo, hi = 0, len(level)
        while lo < hi:  # children are sorted by start: binary search the last start <= t
            mid = (lo + hi) // 2
            if level[mid].span.start_s <= t_s:
                lo = mid + 1
            else:
                hi = mid
        if lo and level[lo - 1].span.end_s >= t_s:
            nxt = level[lo - 1]
        if nxt is None:
            return found
        found, level = nxt, nxt.children


def _inside(hooks: list[tuple[float, float]], starts: list[float], span: Span) -> bool:
    import bisect

    i = bisect.bisect_right(starts, span.start_s + EPS_S) - 1
    return i >= 0 and hooks[i][0] <= span.start_s + EPS_S and span.end_s <= hooks[i][1] + EPS_S
