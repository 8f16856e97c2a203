"""The server's life: load the model, start the model thread and the HTTP site, run until
told to stop, then drain (stop accepting, finish every request in flight), stop the model
thread and write the profile. `Server` is what tests drive in-process; `run_server` is what
`lmprof serve` calls (one startup line, signals, exit code)."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from lmprof.errors import UsageError
from lmprof.record.serve import scheduler_words
from lmprof.serve.app import build_app
from lmprof.serve.backends import LoadedModel, load_model
from lmprof.serve.continuous_worker import ContinuousWorker
from lmprof.serve.metrics import ServeMetrics
from lmprof.serve.profiler import ServerProfiler
from lmprof.serve.response_cache import ResponseCache
from lmprof.serve.settings import ServeSettings
from lmprof.serve.state import ServerState
from lmprof.serve.worker import ModelWorker

log = logging.getLogger("lmprof.serve")


@dataclass
class LoadedServerModel:
    settings: ServeSettings
    model: LoadedModel
    loop_tokenizer: Any
    worker_tokenizer: Any
    served_name: str
    description: dict[str, Any]


def load_server_model(settings: ServeSettings) -> LoadedServerModel:
    """Resolve and load the model and two tokenizers (one per thread: a fast tokenizer is not
    safe to share between threads that encode and decode at once)."""
    from transformers import AutoTokenizer

    from lmprof.collect.system import collect_cpu
    from lmprof.models import resolve_model
    from lmprof.workloads.engine import engine_dtype
    from lmprof.workloads.request import choose_device, choose_dtype

    settings.validate()
    device = choose_device(settings.device)
    resolved = resolve_model(settings.model, progress=False)
    native_bf16 = bool(collect_cpu().get("native_bf16"))
    if settings.engine == "lmprof":
        if resolved.gguf_file:
            raise UsageError("--engine lmprof reads safetensors folders; this model is a GGUF file")
        dtype, reason = engine_dtype(settings.dtype, device, native_bf16, resolved.path)
    else:
        dtype, reason = choose_dtype(settings.dtype, device, native_bf16)
    model = load_model(
        settings.engine,
        resolved.path,
        resolved.gguf_file,
        device,
        dtype,
        settings.native,
        settings.huge_pages,
    )
    extra = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
    tokenizers = [AutoTokenizer.from_pretrained(str(resolved.path), **extra) for _ in range(2)]
    description = {
        "id": resolved.model_id, "path": str(resolved.path), "source": resolved.source,
        "engine": settings.engine, "device": str(model.device), "dtype": model.dtype, "dtype_reason": reason,
        "context_tokens": model.context_tokens, "threads": model_threads(settings),
    }  # fmt: skip
    if model.switches:
        description["engine_switches"] = model.switches
    return LoadedServerModel(
        settings,
        model,
        tokenizers[0],
        tokenizers[1],
        settings.served_model_name or resolved.model_id,
        description,
    )


def model_threads(settings: ServeSettings) -> int:
    """Intra-op threads of the model thread: --threads, else one per core but one. The event
    loop needs a core to stream tokens: with every core in torch's pool, each small op waits for
    a pool thread the loop has descheduled (measured on 2 cores: 70 ms decode steps of `tiny`
    instead of 1.5 ms)."""
    if settings.threads is not None:
        return settings.threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


def _device_memory_reader(model: LoadedModel) -> Callable[[], int | None]:
    if model.device.type != "cuda":
        return lambda: None
    import torch

    return lambda: int(torch.cuda.memory_allocated(model.device))


class Server:
    def __init__(self, loaded: LoadedServerModel, settings: ServeSettings | None = None) -> None:
        """`settings` other than the load's (same model, engine, device and dtype) let tests
        serve one loaded model under several schedulers."""
        self.loaded = loaded
        self.settings = settings or loaded.settings
        self.settings.validate()
        self.profiler = ServerProfiler(device_memory_bytes=_device_memory_reader(loaded.model))
        self.metrics = ServeMetrics()
        self.worker = _new_worker(loaded, self.settings, self.profiler.now_s, self._on_step)
        self.state: ServerState | None = None
        self.runner: web.AppRunner | None = None
        self.url = ""

    def _on_step(self, step: Any) -> None:
        self.profiler.add_step(step)
        self.metrics.batch_size.observe(step.batch_size)
        if isinstance(self.worker, ContinuousWorker) and self.worker.prefix_cache is not None:
            self.metrics.count_prefix_cache(self.worker.prefix_cache)

    @property
    def context_tokens(self) -> int:
        """The longest prompt + completion this server takes."""
        limit = self.settings.model_len
        model = self.loaded.model.context_tokens
        return model if limit is None else min(model, limit)

    async def start(self) -> str:
        """Bind and serve; returns the base URL (with the real port when --port 0)."""
        cache_bytes = self.settings.response_cache_bytes
        self.state = ServerState(
            settings=self.settings, served_model=self.loaded.served_name, tokenizer=self.loaded.loop_tokenizer,
            context_tokens=self.context_tokens, worker=self.worker, metrics=self.metrics,
            profiler=self.profiler, cache=ResponseCache(cache_bytes) if cache_bytes else None,
        )  # fmt: skip
        state = self.state
        self.metrics.running.set_function(lambda: self.worker.running)
        self.metrics.waiting.set_function(lambda: self.worker.waiting + state.lock_waiters)
        if isinstance(self.worker, ContinuousWorker):
            self.metrics.watch_kv(lambda: self.worker.kv_bytes_in_use, lambda: self.worker.kv_usage)
        self.runner = web.AppRunner(build_app(self.state), handle_signals=False, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.host, self.settings.port)
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            raise UsageError(
                f"cannot listen on {self.settings.host}:{self.settings.port}: {exc.strerror}"
            ) from exc
        # The threads start once the port is ours (a request that came first just waits queued).
        self.profiler.start()
        self.worker.start()
        host, port = self.runner.addresses[0][:2]
        host = f"[{host}]" if ":" in host else host
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        """Drain: refuse new requests (503), let every admitted one finish, then close."""
        assert self.state is not None and self.runner is not None
        self.state.draining = True
        for site in list(self.runner.sites):
            await site.stop()  # no new connections
        await self.state.idle.wait()
        await self.runner.cleanup()
        await asyncio.get_running_loop().run_in_executor(None, self.worker.stop)
        self.profiler.stop()
        if self.settings.profile_out is not None:
            self.write_profile()

    def write_profile(self) -> None:
        environment = {"python": sys.version.split()[0], "platform": platform.platform(),
                       "processor": platform.processor() or platform.machine()}  # fmt: skip
        run = self.profiler.to_run(self.settings.as_record(), self.loaded.description, environment)
        run.save(self.settings.profile_out)


def _new_worker(
    loaded: LoadedServerModel, settings: ServeSettings, now_s: Callable[[], float], on_step: Callable
) -> ModelWorker | ContinuousWorker:
    if settings.scheduler == "continuous":
        context = loaded.model.context_tokens
        return ContinuousWorker(
            loaded.model, loaded.worker_tokenizer, threads=model_threads(settings),
            max_batch=settings.max_batch, max_seq_len=min(context, settings.model_len or context),
            prefill_chunk=settings.prefill_chunk_tokens, prefix_cache_bytes=settings.prefix_cache_bytes,
            batch_wait_s=settings.batch_wait_s, now_s=now_s, on_step=on_step,
        )  # fmt: skip
    return ModelWorker(
        loaded.model, loaded.worker_tokenizer, threads=model_threads(settings),
        max_batch=settings.max_batch, batch_wait_s=settings.batch_wait_s, now_s=now_s, on_step=on_step,
    )  # fmt: skip


def startup_line(server: Server) -> str:
    s = server.settings
    sched = scheduler_words(s.as_record(), server.context_tokens if s.scheduler == "continuous" else None)
    model = server.loaded.description
    parts = [
        f"lmprof serve: {server.url}/v1 model={server.loaded.served_name}",
        f"engine={s.engine} device={model['device']} dtype={model['dtype']} threads={model_threads(s)}",
        f"scheduler={sched}",
    ]
    switches = model.get("engine_switches")
    if switches:
        parts.append(f"native={'on' if switches['native_decode'] else 'off'}")
        parts.append(f"huge_pages={'on' if switches['huge_pages'] else 'off'}")
    parts += [
        f"max_queue={s.max_queue} response_cache={s.response_cache_bytes or 'off'}"
        f" prefix_cache={s.prefix_cache_bytes or 'off'}",
        f"api_key={'on' if s.api_key else 'off'}",
    ]
    if s.profile_out:
        parts.append(f"profile_out={s.profile_out}")
    return " ".join(parts)


def run_server(settings: ServeSettings, print_line: Callable[[str], None] | None = None) -> int:
    """Serve until SIGINT or SIGTERM, drain, write the profile; 0 on a clean stop."""
    print_line = print_line or (lambda line: print(line, flush=True))
    loaded = load_server_model(settings)
    server = Server(loaded)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():  # a second Ctrl-C: the user will not wait for the drain
                print_line("lmprof serve: stopped without draining")
                os._exit(130)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        await server.start()
        print_line(startup_line(server))
        await stop.wait()
        print_line("lmprof serve: stopping: draining requests in flight (Ctrl-C again to quit now)")
        await server.stop()
        if settings.profile_out is not None:
            print_line(f"lmprof serve: profile written to {settings.profile_out / 'run.json'}")

    asyncio.run(main())
    return 0
