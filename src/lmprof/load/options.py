"""What a load run was asked to do, checked once: bad input is a UsageError with one line."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from lmprof.errors import UsageError
from lmprof.record.load import length_bounds

ENDPOINTS = ("/v1/completions", "/v1/chat/completions")
SLO_NAMES = ("ttft", "tpot", "e2el", "itl")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|us|µs)?\s*$")
_SCALE = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, None: 1e-3}  # a bare SLO number is ms, as vLLM's


@dataclass
class LoadOptions:
    base_url: str  # scheme://host:port, no trailing /v1
    endpoint: str = "/v1/completions"
    stream: bool = True
    api_key: str | None = None
    model: str | None = None
    concurrency: list[int] = field(default_factory=list)  # closed-loop levels
    rates_rps: list[float] = field(default_factory=list)  # open-loop levels
    burstiness: float = 1.0
    max_concurrency: int | None = None
    requests: int | None = None  # per level
    duration_s: float | None = None  # per level
    warmup: int = 0
    sweep_steps: int = 0  # --sweep: open-loop rates spread below the probed saturation rate
    input_tokens: int = 128
    output_tokens: int = 64
    range_ratio: float = 0.0  # each request's lengths drawn from [L*(1-R), L*(1+R)], as vLLM's
    tokenizer: str | None = None
    prompts_file: str | None = None
    prefix_tokens: int = 0
    prefix_share: float = 0.0
    repeat_share: float = 0.0
    seed: int = 0
    slo_s: dict[str, float] = field(default_factory=dict)
    timeout_s: float = 600.0
    ignore_eos: bool = True
    scrape_interval_s: float = 1.0

    @property
    def url(self) -> str:
        return self.base_url + self.endpoint

    @property
    def chat(self) -> bool:
        return self.endpoint.endswith("/chat/completions")

    def to_settings(self) -> dict[str, Any]:
        """For the Run: everything but the key."""
        data = asdict(self)
        data["api_key"] = "***" if self.api_key else None
        data["rates_rps"] = [r if math.isfinite(r) else "inf" for r in self.rates_rps]  # JSON has no infinity
        return data


def split_url(url: str, endpoint: str | None) -> tuple[str, str]:
    """(base URL, endpoint) from what the user typed: a server's root, its /v1, or a full
    endpoint URL. An explicit --endpoint wins over a path in the URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"'{url}' is not an http(s) URL; pass e.g. http://127.0.0.1:8000")
    path = parts.path.rstrip("/")
    found = next((e for e in ENDPOINTS if path.endswith(e)), None)
    if found is not None:
        path = path[: -len(found)]
    elif path.endswith("/v1"):
        path = path[:-3]
    chosen = endpoint or found or ENDPOINTS[0]
    if chosen in ("completions", "chat"):
        chosen = ENDPOINTS[0] if chosen == "completions" else ENDPOINTS[1]
    if chosen not in ENDPOINTS:
        raise UsageError(f"--endpoint '{chosen}': use one of {', '.join(ENDPOINTS)}")
    return f"{parts.scheme}://{parts.netloc}{path}", chosen


def parse_slo(text: str | None) -> dict[str, float]:
    """`ttft=500ms,tpot=50ms,e2el=2s` -> seconds by name. A bare number is milliseconds."""
    if not text:
        return {}
    out: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        match = _DURATION.match(value) if sep else None
        if name not in SLO_NAMES or match is None:
            raise UsageError(
                f"--slo '{part.strip()}': expected NAME=DURATION with NAME one of {', '.join(SLO_NAMES)}, "
                "e.g. --slo ttft=500ms,tpot=50ms,e2el=2s"
            )
        out[name] = float(match.group(1)) * _SCALE[match.group(2)]
    return out


def parse_levels(text: str | None, what: str, cast: type) -> list:
    """`1,2,4,8` -> [1, 2, 4, 8]; each level positive."""
    if text is None:
        return []
    try:
        values = [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(
            f"{what} '{text}': expected a number or a comma-separated list, e.g. 1,2,4"
        ) from None
    if not values or any(not v > 0 for v in values):  # `not >` also refuses nan
        raise UsageError(f"{what} '{text}': every level must be positive")
    return values


def check_options(opts: LoadOptions) -> None:
    """Combinations no parser type can catch."""
    if opts.concurrency and opts.rates_rps:
        raise UsageError("pass --concurrency (closed loop) or --rate (open loop), not both")
    if opts.sweep_steps and (opts.concurrency or opts.rates_rps):
        raise UsageError("--sweep chooses the rates itself; leave out --concurrency and --rate")
    if opts.max_concurrency is not None and opts.concurrency:
        raise UsageError(
            "--max-concurrency caps an open loop (--rate, --sweep); a closed loop's cap is --concurrency"
        )
    if opts.requests is not None and opts.requests <= 0:
        raise UsageError("--requests must be positive")
    if opts.duration_s is not None and opts.duration_s <= 0:
        raise UsageError("--duration must be positive")
    if opts.requests is None and opts.duration_s is None:
        raise UsageError("pass --requests M or --duration S: a load run must end")
    for name, value in (("--prefix-share", opts.prefix_share), ("--repeat-share", opts.repeat_share)):
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"{name} {value}: a share is between 0 and 1")
    if opts.input_tokens <= 0 or opts.output_tokens <= 0:
        raise UsageError("--input-tokens and --output-tokens must be positive")
    if not 0.0 <= opts.range_ratio < 1.0:  # `not <=` also refuses nan
        raise UsageError(
            f"--range-ratio {opts.range_ratio}: a ratio in [0, 1) (lengths drawn from L*(1-R) to L*(1+R))"
        )
    if opts.range_ratio and opts.prompts_file:
        raise UsageError(
            "--range-ratio draws synthetic prompt and output lengths; a --prompts file sets its own: "
            "leave one out"
        )
    shortest = length_bounds(opts.input_tokens, opts.range_ratio)[0]
    if opts.prefix_tokens < 0 or opts.prefix_tokens > shortest:
        limit = (
            f"the shortest input drawn ({shortest}: --input-tokens {opts.input_tokens}, "
            f"--range-ratio {opts.range_ratio:g})"
            if opts.range_ratio
            else f"--input-tokens ({opts.input_tokens})"
        )
        raise UsageError(
            f"--prefix-tokens {opts.prefix_tokens}: the shared prefix is part of the input, so 0 <= it <= {limit}"
        )
    if opts.burstiness <= 0:
        raise UsageError("--burstiness must be positive (1 = Poisson arrivals)")
    if opts.max_concurrency is not None and opts.max_concurrency <= 0:
        raise UsageError("--max-concurrency must be positive")
    if opts.warmup < 0:
        raise UsageError("--warmup cannot be negative")
    if opts.timeout_s <= 0:
        raise UsageError("--timeout must be positive")
