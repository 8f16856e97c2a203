"""What the server says about itself: GET /v1/models, a version (GET /version, else the
`Server` header), and its Prometheus /metrics scraped before, every second during, and
after the run, on the run's clock.

Only counters and gauges named for inference servers are kept (vLLM's `vllm:`, lmprof's
own `lmprof:`, TGI's `tgi_`, SGLang's `sglang:`, llama.cpp's `llamacpp:`), each summed over
its label sets, so a scrape is a small dict and a long run's record stays small.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from lmprof.load.background import cancel_and_wait
from lmprof.record.load import MetricsSample

KEPT_PREFIXES = ("vllm:", "lmprof:", "tgi_", "sglang:", "llamacpp:")
_KEPT_TYPES = ("counter", "gauge", "unknown", "untyped")  # untyped: a server that writes no TYPE line


async def get_models(
    session: aiohttp.ClientSession, base_url: str, headers: dict[str, str], timeout_s: float = 30.0
) -> tuple[int, list[str]]:
    """(HTTP status, the ids GET /v1/models lists). Connection errors propagate: the URL is wrong."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with session.get(f"{base_url}/v1/models", headers=headers, timeout=timeout) as resp:
        if resp.status != 200:
            return resp.status, []
        try:
            data = await resp.json(content_type=None)
        except ValueError:
            return resp.status, []
    items = data.get("data") if isinstance(data, dict) else None
    return 200, [str(m["id"]) for m in items or [] if isinstance(m, dict) and "id" in m]


# Where servers say their version: vLLM (and lmprof serve) /version, Ollama /api/version,
# TGI /info; each answers {"version": ...}.
VERSION_PATHS = ("/version", "/api/version", "/info")


async def get_version(
    session: aiohttp.ClientSession, base_url: str, headers: dict[str, str]
) -> dict[str, Any]:
    """{"version": ..., "version_from": path, "server_header": ...}, each absent when the
    server does not say."""
    out: dict[str, Any] = {}
    timeout = aiohttp.ClientTimeout(total=10.0)
    for path in VERSION_PATHS:
        try:
            async with session.get(f"{base_url}{path}", headers=headers, timeout=timeout) as resp:
                if resp.headers.get("Server") and "server_header" not in out:
                    out["server_header"] = resp.headers["Server"]
                if resp.status != 200:
                    continue
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, ValueError, TimeoutError):
            continue
        if isinstance(data, dict) and data.get("version"):
            out["version"], out["version_from"] = str(data["version"]), path
            break
    return out


_SERIES_SUFFIXES = ("_bucket", "_sum", "_count", "_created")  # parts of histograms and summaries


def kept_lines(text: str) -> str:
    """Only the lines of kept counters and gauges. vLLM's /metrics is mostly histogram
    buckets (hundreds of KB); parsing those on the event loop would delay the requests the
    loop is timing, so they are dropped with plain string tests first."""
    out = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) == 4 and parts[2].startswith(KEPT_PREFIXES) and parts[3] in _KEPT_TYPES:
                out.append(line)
        elif line.startswith(KEPT_PREFIXES):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if not name.endswith(_SERIES_SUFFIXES):
                out.append(line)
    return "\n".join(out) + "\n"


def parse_metrics(text: str) -> dict[str, float]:
    """Counter and gauge samples of kept families, summed over labels, by sample name."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(kept_lines(text)):
        if family.type not in _KEPT_TYPES or not family.name.startswith(KEPT_PREFIXES):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue  # a counter's creation timestamp, not a count
            values[sample.name] = values.get(sample.name, 0.0) + float(sample.value)
    return values


class MetricsScraper:
    """Scrapes /metrics on a schedule; `available` is False (with `note`) when it cannot."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        headers: dict[str, str],
        now_s,
        interval_s: float = 1.0,
    ) -> None:
        self.session = session
        self.url = f"{base_url}/metrics"
        self.headers = headers
        self.now_s = now_s
        self.interval_s = interval_s
        self.samples: list[MetricsSample] = []
        self.available = False
        self.note = ""
        self._task: asyncio.Task | None = None

    async def scrape(self) -> bool:
        t_s = self.now_s()
        try:
            timeout = aiohttp.ClientTimeout(total=max(self.interval_s, 2.0))
            async with self.session.get(self.url, headers=self.headers, timeout=timeout) as resp:
                if resp.status != 200:
                    self.note = f"GET /metrics answered HTTP {resp.status}"
                    return False
                text = await resp.text(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.note = f"GET /metrics failed: {exc or type(exc).__name__}"
            return False
        try:
            values = await asyncio.to_thread(parse_metrics, text)  # off the loop that times requests
        except (ValueError, IndexError, KeyError, TypeError) as exc:  # the parser's ways to refuse
            self.note = f"GET /metrics is not Prometheus text: {exc}"
            return False
        self.samples.append(MetricsSample(t_s=t_s, values=values))
        self.available = True
        return True

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.scrape()

    def start(self) -> None:
        """Scrape every interval in the background (only once the first scrape worked)."""
        if self.available:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
