"""The prompts a load run sends: synthetic (a count of tokens or words), or read from a
JSONL file; a share with one common prefix and a share repeating an earlier prompt.

Each request's prompt is a pure function of (seed, index), so a run of unknown length
(`--duration`) draws them lazily and two runs with one seed send the same prompts. With
`--range-ratio` its input and output lengths are too, from a generator of their own, so a
ratio of 0 sends exactly the prompts a run without the option sent.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmprof.errors import UsageError
from lmprof.load.options import LoadOptions
from lmprof.record.load import length_bounds

# Common short English words: synthetic text that any tokenizer splits into ordinary tokens.
_WORDS = (
    "time person year way day thing man world life hand part child eye woman place work week case "
    "point number group problem fact water room mother area money story month lot right study book "
    "job word business issue side kind head house service friend father power hour game line end "
    "member law car city name team minute idea kid body back parent face others level office door"
).split()


@dataclass(frozen=True)
class Prompt:
    text: str | None = None  # for /v1/completions (and a chat turn when `messages` is None)
    messages: list[dict[str, Any]] | None = None
    input_tokens: int | None = None  # planned; None when not known (a prompts file)
    input_unit: str = "words"  # "tokens" with --tokenizer
    output_tokens: int = 64
    prefixed: bool = False
    repeat_of: int | None = None


def draw_lengths(opts: LoadOptions, index: int) -> tuple[int, int]:
    """(input, output) lengths of request `index`: each uniform over `length_bounds` of
    --input-tokens and --output-tokens, independently; the lengths themselves when R = 0."""
    if not opts.range_ratio:
        return opts.input_tokens, opts.output_tokens
    rng = random.Random(f"{opts.seed}:{index}:lengths")
    return (
        rng.randint(*length_bounds(opts.input_tokens, opts.range_ratio)),
        rng.randint(*length_bounds(opts.output_tokens, opts.range_ratio)),
    )


class TokenCounter:
    """Counts and makes tokens with the model's tokenizer (transformers, imported only here)."""

    def __init__(self, spec: str) -> None:
        from lmprof.models import resolve_model

        path = resolve_model(spec, progress=False).path
        try:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--tokenizer '{spec}': cannot load a tokenizer from '{path}': {exc}") from exc
        special = set(self._tok.all_special_ids or [])
        self._ids = [i for i in range(min(self._tok.vocab_size, 32000)) if i not in special]

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False))

    def text_of(self, rng: random.Random, n_tokens: int) -> str:
        return self._tok.decode([rng.choice(self._ids) for _ in range(n_tokens)])


class PromptSource:
    def __init__(self, opts: LoadOptions, counter: TokenCounter | None = None) -> None:
        self.opts = opts
        self.counter = counter
        self._file = _read_prompts(Path(opts.prompts_file)) if opts.prompts_file else None
        prefix_rng = random.Random(f"{opts.seed}:prefix")
        self._prefix = self._text(prefix_rng, opts.prefix_tokens) if opts.prefix_tokens else ""

    def _text(self, rng: random.Random, n: int) -> str:
        if n <= 0:
            return ""
        if self.counter is not None:
            return self.counter.text_of(rng, n)
        return " ".join(rng.choice(_WORDS) for _ in range(n))

    def get(self, index: int) -> Prompt:
        rng = random.Random(f"{self.opts.seed}:{index}")
        if index > 0 and rng.random() < self.opts.repeat_share:
            root = index
            while True:  # repeat a prompt that is itself original
                root = random.Random(f"{self.opts.seed}:{root}:repeat").randrange(root)
                if root == 0 or random.Random(f"{self.opts.seed}:{root}").random() >= self.opts.repeat_share:
                    break
            original = self._original(root)
            return Prompt(**{**original.__dict__, "repeat_of": root})
        return self._original(index)

    def _original(self, index: int) -> Prompt:
        rng = random.Random(f"{self.opts.seed}:{index}")
        rng.random()  # the repeat draw, so the draws below are the same whether or not it repeats
        prefixed = bool(self._prefix) and rng.random() < self.opts.prefix_share
        if self._file is not None:
            item = self._file[index % len(self._file)]
            return Prompt(
                text=item.get("prompt"),
                messages=item.get("messages"),
                output_tokens=int(
                    item.get("output_tokens") or item.get("max_tokens") or self.opts.output_tokens
                ),
            )
        unit = "tokens" if self.counter is not None else "words"
        input_n, output_n = draw_lengths(self.opts, index)
        # check_options keeps the prefix within the shortest input drawn
        body_n = input_n - (self.opts.prefix_tokens if prefixed else 0)
        body = self._text(rng, body_n)
        text = f"{self._prefix} {body}".strip() if prefixed else body
        return Prompt(
            text=text,
            input_tokens=input_n,
            input_unit=unit,
            output_tokens=output_n,
            prefixed=prefixed,
        )


def _read_prompts(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--prompts '{path}': cannot read it: {exc}") from exc
    items: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--prompts '{path}' line {number}: not JSON ({exc.msg})") from None
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict) or not (
            isinstance(item.get("prompt"), str) or isinstance(item.get("messages"), list)
        ):
            raise UsageError(
                f'--prompts \'{path}\' line {number}: expected {{"prompt": "..."}} or {{"messages": [...]}}'
            )
        items.append(item)
    if not items:
        raise UsageError(f"--prompts '{path}': no prompts in it")
    return items
