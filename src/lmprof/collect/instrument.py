"""Wrappers around the transformers entry points where an inference run spends its time.

Installed for the length of a profiling session and removed after it, these turn calls
into phases: `from_pretrained` (with resolve, build_model and read_weights inside it),
what loading does inside it (LOADING_POINTS: config files, GGUF parsing and
dequantization, tokenizer conversion, downloads, weight finalization), the device copy and
dtype cast, tokenizer load/encode/decode, pipeline set-up and calls, and `generate` (split
into prefill and decode by `GenerationWatcher`). They patch classes,
not names a script imported, so they see calls made through objects created before
the session began. Each entry point is optional: what a transformers version lacks is
skipped and left out of `Run.instrumented`, so a report can say what was watched.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from lmprof.collect.generation import GenerationWatcher
from lmprof.collect.loading_points import GGUF_POINTS, LOADING_POINTS
from lmprof.collect.model_moves import (
    bytes_not_of,
    bytes_not_on,
    stream_position,
    target_device,
    target_dtype,
)
from lmprof.collect.phases import PhaseRecorder
from lmprof.record.run import Generation


class SessionHooks(Protocol):
    """What the instrumentation needs of the session that installs it (lmprof.session's
    ProfileSession is the one implementation): the phase recorder and the clock, the device,
    where the pipeline call began, and the places it reports what it saw."""

    phases: PhaseRecorder
    device: Any
    pipeline_call_start_s: float | None

    def now_s(self) -> float: ...

    def observe_model(self, model: Any, name: str) -> None: ...

    def observe_move(self, module: Any) -> None: ...

    def take_deep_tracer(self, model: Any) -> Any: ...

    def finish_deep_trace(self, tracer: Any, kv_samples: list[tuple[float, int]]) -> None: ...

    def add_generation(self, gen: Generation) -> None: ...

    def observe_pipeline_result(self, prompt: Any, result: Any) -> None: ...


class Instrumentation:
    """Install with `install()`, remove with `uninstall()`; `points` names what is wrapped."""

    def __init__(self, session: SessionHooks) -> None:
        self._session = session
        self._restore: list[tuple[Any, str, Any]] = []
        self.points: list[str] = []
        self._gguf_installed = False

    # --- patching machinery ----------------------------------------------------------

    def _patch(self, owner: Any, attr: str, make: Callable[[Callable], Callable], label: str) -> None:
        raw = inspect.getattr_static(owner, attr, None)
        if raw is None:
            return
        if isinstance(raw, classmethod):
            replacement: Any = classmethod(make(raw.__func__))
        elif isinstance(raw, staticmethod):
            replacement = staticmethod(make(raw.__func__))
        else:
            replacement = make(raw)
        had_own = attr in vars(owner) if isinstance(owner, type) else True
        self._restore.append((owner, attr, raw if had_own else None))
        setattr(owner, attr, replacement)
        self.points.append(label)

    def _patch_point(
        self,
        module_name: str,
        owner_name: str | None,
        attr: str,
        phase: str,
        *,
        make: Callable[[Callable], Callable] | None = None,
    ) -> None:
        """Wrap `module.owner.attr` (or `module.attr`) as a phase; skip what this version lacks."""
        import importlib

        try:
            module = importlib.import_module(module_name)
            owner = getattr(module, owner_name) if owner_name else module
            if owner_name is None:
                getattr(module, attr)  # a lazy module resolves the name on first access
        except (ImportError, AttributeError):
            return
        label = ".".join(p for p in (module_name.rsplit(".", 1)[-1], owner_name, attr) if p)
        self._patch(owner, attr, make or self._phase_around(phase), label)

    def _phase_around(
        self,
        name: str,
        describe: Callable[..., dict] | None = None,
        before: Callable[[], None] | None = None,
    ):
        phases = self._session.phases

        def make(func: Callable) -> Callable:
            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if before is not None:
                    before()
                detail = describe(*args, **kwargs) if describe else {}
                with phases.phase(name, **detail):
                    return func(*args, **kwargs)

            return wrapper

        return make

    def uninstall(self) -> None:
        for owner, attr, raw in reversed(self._restore):
            if raw is None:
                delattr(owner, attr)
            else:
                setattr(owner, attr, raw)
        self._restore.clear()

    # --- the entry points ------------------------------------------------------------

    def install(self) -> Instrumentation:
        import transformers.modeling_utils as modeling_utils
        from transformers.generation.utils import GenerationMixin
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase

        model_cls = modeling_utils.PreTrainedModel
        self._patch(
            model_cls, "from_pretrained", self._wrap_from_pretrained, "PreTrainedModel.from_pretrained"
        )
        # The auto class reads the config before it calls the model class's from_pretrained.
        self._patch_point(
            "transformers.models.auto.auto_factory", "_BaseAutoModelClass", "from_pretrained", "load_model",
            make=self._wrap_from_pretrained,
        )  # fmt: skip
        self._patch(
            modeling_utils,
            "_get_resolved_checkpoint_files",
            self._phase_around("resolve"),
            "modeling_utils._get_resolved_checkpoint_files",
        )
        self._patch(
            model_cls, "get_init_context", self._wrap_init_context, "PreTrainedModel.get_init_context"
        )
        self._patch(
            model_cls,
            "_load_pretrained_model",
            self._wrap_read_weights,
            "PreTrainedModel._load_pretrained_model",
        )
        self._patch(model_cls, "to", self._wrap_to_device, "PreTrainedModel.to")
        self._patch(model_cls, "cuda", self._wrap_to_device, "PreTrainedModel.cuda")
        for point in LOADING_POINTS:
            gguf_entry = point[3] == "parse_gguf"  # the first GGUF parse wraps GGUF_POINTS
            self._patch_point(*point, make=self._phase_around(point[3], before=self._install_gguf_points)
                              if gguf_entry else None)  # fmt: skip
        self._patch_point(
            "transformers.modeling_gguf_pytorch_utils", None, "load_gguf_checkpoint", "parse_gguf",
            make=self._wrap_parse_gguf,
        )  # fmt: skip
        # One file fetched into the hub cache (over HTTP or Xet), named as in its repository;
        # http_get, inside it, is the fallback where a huggingface_hub version lacks it.
        self._patch_point(
            "huggingface_hub.file_download", None, "_download_to_tmp_and_move", "download",
            make=self._wrap_cache_download,
        )  # fmt: skip
        self._patch_point(
            "huggingface_hub.file_download", None, "http_get", "download", make=self._wrap_download
        )

        tok = PreTrainedTokenizerBase
        self._patch(tok, "from_pretrained", self._phase_around("load_tokenizer"), "tokenizer.from_pretrained")
        for attr in ("__call__", "encode", "apply_chat_template"):
            self._patch(tok, attr, self._phase_around("tokenize"), f"tokenizer.{attr}")
        for attr in ("decode", "batch_decode"):
            self._patch(tok, attr, self._phase_around("detokenize"), f"tokenizer.{attr}")

        self._patch(GenerationMixin, "generate", self._wrap_generate, "GenerationMixin.generate")
        self._install_pipelines()
        return self

    def _install_pipelines(self) -> None:
        import transformers
        import transformers.pipelines as pipelines

        for owner in (pipelines.Pipeline, getattr(pipelines, "TextGenerationPipeline", None)):
            if owner is not None:
                self._patch(owner, "__call__", self._wrap_pipeline_call, f"{owner.__name__}.__call__")
        # The factory is a plain function: patching it is seen only by code that looks it up
        # after this point (the CLI and `lmprof run` do; a script that imported it earlier
        # still gets its loading phases, just not the enclosing pipeline_setup).
        self._patch(pipelines, "pipeline", self._phase_around("pipeline_setup"), "transformers.pipeline")
        if "pipeline" in vars(transformers):
            self._patch(
                transformers, "pipeline", self._phase_around("pipeline_setup"), "transformers.pipeline"
            )

    # --- wrappers with more to record than a phase -------------------------------------

    def _wrap_from_pretrained(self, func: Callable) -> Callable:
        session = self._session

        @functools.wraps(func)
        def wrapper(cls: Any, *args: Any, **kwargs: Any) -> Any:
            name = args[0] if args else kwargs.get("pretrained_model_name_or_path")
            with session.phases.phase("load_model", model=str(name)):
                model = func(cls, *args, **kwargs)
            session.observe_model(model, str(name))
            return model

        return wrapper

    def _wrap_parse_gguf(self, func: Callable) -> Callable:
        """transformers' GGUF reader: the metadata (config, tokenizer) or, with
        `return_tensors`, every tensor dequantized to the run dtype. Its first call wraps the
        GGUF points inside it (GGUF_POINTS), whose modules a run without GGUF never imports."""
        phases = self._session.phases

        @functools.wraps(func)
        def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
            self._install_gguf_points()
            tensors = bool(kwargs.get("return_tensors", args[0] if args else False))
            with phases.phase("parse_gguf", file=Path(str(path)).name, tensors=tensors) as handle:
                if tensors and os.path.exists(path):
                    handle.add_payload(os.path.getsize(path))
                start = phases_snapshot()
                result = func(path, *args, **kwargs)
                if not tensors:  # the header's pages that the parse made resident
                    handle.add_payload(max(0, phases_snapshot()[1] - start[1]))
            return result

        return wrapper

    def _install_gguf_points(self) -> None:
        if self._gguf_installed:
            return
        self._gguf_installed = True
        with self._session.phases.phase("import_gguf_support"):
            for point in GGUF_POINTS:
                self._patch_point(*point)

    def _wrap_cache_download(self, func: Callable) -> Callable:
        """huggingface_hub's fetch of one file into its cache (called where the file is not
        there yet); the bytes are those of the file it leaves."""
        phases = self._session.phases

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            destination = Path(str(kwargs.get("destination_path", args[1] if len(args) > 1 else "")))
            if destination.is_file() and not kwargs.get("force_download"):
                return func(*args, **kwargs)  # fetched meanwhile by another process: no download
            name = str(kwargs.get("filename") or destination.name)
            with phases.phase("download", file=name) as handle:
                result = func(*args, **kwargs)
                if destination.is_file():
                    handle.add_payload(destination.stat().st_size)
            return result

        return wrapper

    def _wrap_download(self, func: Callable) -> Callable:
        """huggingface_hub's HTTP download of one file (only where a file is really fetched)."""
        phases = self._session.phases

        @functools.wraps(func)
        def wrapper(url: Any, temp_file: Any, *args: Any, **kwargs: Any) -> Any:
            # A CDN's URL (where the Hub redirects weights) ends in a signed query string.
            name = str(kwargs.get("displayed_filename") or urlsplit(str(url)).path.rsplit("/", 1)[-1])
            with phases.phase("download", file=name) as handle:
                start = stream_position(temp_file)
                result = func(url, temp_file, *args, **kwargs)
                handle.add_payload(max(0, stream_position(temp_file) - start))
            return result

        return wrapper

    def _wrap_init_context(self, func: Callable) -> Callable:
        phases = self._session.phases

        @contextmanager
        def build_model_phase():
            with phases.phase("build_model"):
                yield

        @functools.wraps(func)
        def wrapper(cls: Any, *args: Any, **kwargs: Any) -> Any:
            contexts = func(cls, *args, **kwargs)
            # from_pretrained enters these around `cls(config)`: the model's construction.
            return [*contexts, build_model_phase()] if isinstance(contexts, list) else contexts

        return wrapper

    def _wrap_read_weights(self, func: Callable) -> Callable:
        phases = self._session.phases

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            files = kwargs.get("checkpoint_files", args[2] if len(args) > 2 else None) or []
            checkpoint_bytes = sum(os.path.getsize(f) for f in files if os.path.exists(f))
            with phases.phase(
                "read_weights", files=[Path(f).name for f in files], checkpoint_bytes=checkpoint_bytes
            ) as handle:
                start = phases_snapshot()
                result = func(*args, **kwargs)
                # Safetensors are memory-mapped: what this phase really read is what became
                # resident (file pages touched plus anonymous copies), not the file size.
                end = phases_snapshot()
                handle.add_payload(max(0, end[0] - start[0]))
            return result

        return wrapper

    def _wrap_to_device(self, func: Callable) -> Callable:
        session = self._session

        @functools.wraps(func)
        def wrapper(module: Any, *args: Any, **kwargs: Any) -> Any:
            target = target_device(func.__name__, args, kwargs)
            moving = bytes_not_on(module, target) if target is not None else 0
            if not moving:
                dtype = target_dtype(args, kwargs)
                casting = bytes_not_of(module, dtype) if dtype is not None else 0
                if not casting:
                    return func(module, *args, **kwargs)
                with session.phases.phase("cast", dtype=str(dtype).removeprefix("torch.")) as handle:
                    handle.add_payload(casting)
                    return func(module, *args, **kwargs)
            with session.phases.phase("to_device", target=str(target)) as handle:
                handle.add_payload(moving)
                moved = func(module, *args, **kwargs)
            session.observe_move(module)
            return moved

        return wrapper

    def _wrap_generate(self, func: Callable) -> Callable:
        session = self._session

        @functools.wraps(func)
        def wrapper(model: Any, *args: Any, **kwargs: Any) -> Any:
            phases = session.phases
            op = phases.open("generate")
            if op is None:  # a nested generate (assisted decoding) or another thread
                return func(model, *args, **kwargs)
            call = "pipeline" if session.pipeline_call_start_s is not None else "generate"
            start = session.pipeline_call_start_s if call == "pipeline" else op.start_s
            tracer = session.take_deep_tracer(model)  # --deep: trace the first generate call only
            watcher = GenerationWatcher(
                model, phases, session.now_s, session.device, call, start,
                measure_kv=tracer is not None, on_step=tracer.mark_step if tracer is not None else None,
            )  # fmt: skip
            if tracer is not None:
                tracer.start()
            watcher.attach()
            complete = False
            output = None
            try:
                output = func(model, *args, **kwargs)
                complete = True
            finally:
                gen = watcher.detach(output, complete=complete)
                phases.close(op, complete=complete)
                if tracer is not None:  # lmprof's own cost, in a phase of its own
                    with phases.phase("lmprof_trace_export"):
                        session.finish_deep_trace(tracer, watcher.kv_samples)
                if gen is not None:
                    gen.traced = tracer is not None
                    session.add_generation(gen)
            return output

        return wrapper

    def _wrap_pipeline_call(self, func: Callable) -> Callable:
        session = self._session

        @functools.wraps(func)
        def wrapper(pipe: Any, *args: Any, **kwargs: Any) -> Any:
            if session.pipeline_call_start_s is not None:  # TextGenerationPipeline -> Pipeline
                return func(pipe, *args, **kwargs)
            op = session.phases.open("pipeline_call")
            session.pipeline_call_start_s = op.start_s if op is not None else session.now_s()
            try:
                result = func(pipe, *args, **kwargs)
            except BaseException:
                session.phases.close(op, complete=False)
                raise
            finally:
                session.pipeline_call_start_s = None
            session.phases.close(op)
            session.observe_pipeline_result(args[0] if args else kwargs.get("text_inputs"), result)
            return result

        return wrapper


def phases_snapshot() -> tuple[int, int]:
    """(resident bytes, file-backed resident bytes) right now."""
    from lmprof.collect.process_stats import read_memory

    return read_memory()
