"""What `lmprof serve` was asked for, checked once: a bad value is one UsageError line."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmprof.errors import UsageError
from lmprof.serve.backends import ENGINES

SCHEDULERS = ("sequential", "async", "static-batch", "continuous")
DEFAULT_BATCH_SIZE = 8
DEFAULT_BATCH_WAIT_MS = 10.0
DEFAULT_MAX_BATCH = 8  # continuous: rows of the KV pool
DEFAULT_PREFILL_CHUNK = 256  # continuous: prompt tokens prefilled per step at most
# continuous: the longest context a request may have. The KV pool is allocated up front for
# max_batch rows of this many tokens (plus a quarter), so the model's own context (8192 for
# the default model) would reserve GBs for contexts a benchmark never uses.
DEFAULT_MAX_MODEL_LEN = 2048


@dataclass(frozen=True)
class ServeSettings:
    model: str | None = None  # None: lmprof's default model
    engine: str = "transformers"
    device: str = "auto"
    dtype: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    scheduler: str = "sequential"
    batch_size: int | None = None  # static-batch only (default DEFAULT_BATCH_SIZE)
    batch_wait_ms: float | None = None  # static-batch and continuous (default DEFAULT_BATCH_WAIT_MS)
    max_queue: int = 64
    response_cache_bytes: int = 0  # 0: no response cache
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 4096
    max_tokens_limit: int = 4096
    served_model_name: str | None = None  # the name /v1/models lists; default: the model as typed
    profile_out: Path | None = None
    threads: int | None = None
    max_batch_rows: int | None = None  # continuous only (default DEFAULT_MAX_BATCH)
    prefill_chunk: int | None = None  # continuous only (default DEFAULT_PREFILL_CHUNK)
    max_model_len: int | None = None  # continuous only (default DEFAULT_MAX_MODEL_LEN)
    prefix_cache_bytes: int = 0  # continuous only; 0: no prefix cache
    # lmprof's engine only. None: on where it can run (the native step: a CPU float32 model on a
    # machine that can build the kernels; huge pages: a CPU model where the kernel offers them),
    # because a server is run for speed; True: required (an error where it cannot run); False: off.
    native: bool | None = None
    huge_pages: bool | None = None

    def validate(self) -> None:
        if self.engine not in ENGINES:
            raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.scheduler not in SCHEDULERS:
            raise UsageError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise UsageError(f"--dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be 0-65535 (0: any free port), got {self.port}")
        if self.scheduler != "static-batch" and self.batch_size is not None:
            raise UsageError("--batch-size applies to --scheduler static-batch (continuous: --max-batch)")
        if self.scheduler not in ("static-batch", "continuous") and self.batch_wait_ms is not None:
            raise UsageError("--batch-wait-ms applies to --scheduler static-batch or continuous")
        continuous_only = {
            "--max-batch": self.max_batch_rows, "--prefill-chunk": self.prefill_chunk,
            "--max-model-len": self.max_model_len, "--prefix-cache": self.prefix_cache_bytes or None,
        }  # fmt: skip
        given = [flag for flag, value in continuous_only.items() if value is not None]
        if self.scheduler != "continuous" and given:
            raise UsageError(f"{', '.join(given)}: only with --scheduler continuous")
        engine_only = {"--native": self.native, "--huge-pages": self.huge_pages}
        asked = [flag for flag, value in engine_only.items() if value]
        if self.engine != "lmprof" and asked:
            raise UsageError(f"{', '.join(asked)}: only with --engine lmprof")
        if self.scheduler == "continuous" and self.engine != "lmprof":
            raise UsageError("--scheduler continuous runs on lmprof's engine: add --engine lmprof")
        positive = {
            "--batch-size": self.batch_size,
            "--max-queue": self.max_queue,
            "--max-body-bytes": self.max_body_bytes,
            "--max-prompt-tokens": self.max_prompt_tokens,
            "--max-tokens-limit": self.max_tokens_limit,
            "--threads": self.threads,
            "--max-batch": self.max_batch_rows,
            "--prefill-chunk": self.prefill_chunk,
        }
        for flag, value in positive.items():
            if value is not None and value < 1:
                raise UsageError(f"{flag} must be a positive integer, got {value}")
        if self.batch_wait_ms is not None and self.batch_wait_ms < 0:
            raise UsageError(f"--batch-wait-ms must be 0 or more, got {self.batch_wait_ms}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise UsageError(f"--max-model-len must be at least 2 tokens, got {self.max_model_len}")
        if self.prefix_cache_bytes < 0:
            raise UsageError(f"--prefix-cache must be 0 or more bytes, got {self.prefix_cache_bytes}")
        if self.response_cache_bytes < 0:
            raise UsageError(f"--response-cache must be 0 or more bytes, got {self.response_cache_bytes}")
        if self.api_key is not None and not self.api_key.strip():
            raise UsageError("--api-key must not be empty")
        if self.profile_out is not None and self.profile_out.exists() and not self.profile_out.is_dir():
            raise UsageError(f"--profile-out '{self.profile_out}' exists and is not a folder")

    @property
    def max_batch(self) -> int:
        if self.scheduler == "continuous":
            return self.max_batch_rows or DEFAULT_MAX_BATCH
        if self.scheduler != "static-batch":
            return 1
        return self.batch_size or DEFAULT_BATCH_SIZE

    @property
    def prefill_chunk_tokens(self) -> int:
        return self.prefill_chunk or DEFAULT_PREFILL_CHUNK

    @property
    def model_len(self) -> int | None:
        """The longest context a continuous server takes (None: the model's own)."""
        if self.scheduler != "continuous":
            return None
        return self.max_model_len or DEFAULT_MAX_MODEL_LEN

    @property
    def batch_wait_s(self) -> float:
        """static-batch: how long the first request of a batch waits for others; continuous:
        how long a first request at an idle engine waits for others to share its prefill."""
        if self.scheduler not in ("static-batch", "continuous"):
            return 0.0
        wait_ms = DEFAULT_BATCH_WAIT_MS if self.batch_wait_ms is None else self.batch_wait_ms
        return wait_ms / 1000.0

    def as_record(self) -> dict[str, Any]:
        """For the Run: every setting, with the key replaced by whether there is one."""
        record = asdict(self)
        record["api_key"] = self.api_key is not None
        record["profile_out"] = str(self.profile_out) if self.profile_out else None
        record["max_batch"] = self.max_batch
        record["batch_wait_s"] = self.batch_wait_s
        if self.scheduler == "continuous":
            record["prefill_chunk_tokens"] = self.prefill_chunk_tokens
        return record
