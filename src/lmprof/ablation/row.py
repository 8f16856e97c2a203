"""One row of `lmprof ablate`, profiled in a process of its own: `python -m lmprof.ablation.row JOB.json`.

A fresh process per row and round keeps rows from sharing memory (peak RSS is the row's own),
warm caches or allocator state. The row loads its model inside a ProfileSession, warms up
with a short generation (its own `warmup` phase, left out of the generation figures), then
generates the measured tokens and saves the Run to the job's folder. The transformers row
goes through transformers' own `generate` under lmprof's instrumentation, as `lmprof profile
--mode generate` does; engine rows go through `lmprof.workloads.engine`, as `lmprof profile
--engine lmprof` does. The first sequence's new tokens are noted on the generate phase so
the parent can compare greedy outputs between rows.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmprof.ablation.plan import AblationRow
from lmprof.analyze.ablation import AGREEMENT_DETAIL, TOKENS_DETAIL
from lmprof.errors import LmprofError
from lmprof.record.run import STATUS_COMPLETE, STATUS_FAILED
from lmprof.session import ProfileSession


@dataclass
class RowJob:
    row: AblationRow
    model: str | None  # what the user typed; resolved again here (a cache hit)
    prompts: list[list[int]]  # [batch][prompt_tokens] token ids
    max_new_tokens: int
    warmup_tokens: int
    threads: int
    device: str
    out: str  # run folder
    round_index: int
    reference_tokens: list[int] | None = None  # the fp32 engine's greedy tokens, to check against

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "row": self.row.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RowJob:
        return cls(**{**data, "row": AblationRow.from_dict(data["row"])})


def run_row(session: ProfileSession, job: RowJob) -> None:
    if job.row.runner == "transformers":
        _run_transformers_row(session, job)
    else:
        _run_engine_row(session, job)


def _resolve(session: ProfileSession, spec: str | None) -> Any:
    from lmprof.models import resolve_model

    with session.phase("resolve", model=spec or "default"):
        return resolve_model(spec, progress=False)


def note_tokens(session: ProfileSession, token_ids: list[int]) -> None:
    """Put the first sequence's new tokens on the last generate phase (the measured call)."""
    from lmprof.workloads.engine import last_phase

    last_phase(session, "generate").detail[TOKENS_DETAIL] = [int(t) for t in token_ids]


def release_freed_memory(session: ProfileSession) -> None:
    """Hand memory freed while loading back to the OS (glibc's malloc_trim), in its own phase.

    A load-time switch replaces the fp32 weights it read (int8, fused or transposed copies);
    glibc keeps much of that freed memory mapped, so without this the peak RSS of the generate
    call would count weights the row no longer holds."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "malloc_trim"):
        return  # not glibc: nothing to trim this way
    with session.phase("trim_allocator"):
        libc.malloc_trim(0)


def check_against_reference(session: ProfileSession, job: RowJob, next_token_logits: Any) -> None:
    """Teacher-forced agreement: feed the prompt and the reference's greedy tokens through this
    row's model in one forward pass and count how often its argmax picks the reference's next
    token. Unlike comparing two free-running outputs, one early difference does not turn every
    later position into a mismatch. Outside the measured generation, in its own phase."""
    if not job.reference_tokens:
        return
    import torch

    from lmprof.analyze.ablation import token_agreement

    reference = job.reference_tokens
    with session.phase("agreement_check", reference_tokens=len(reference)) as handle, torch.inference_mode():
        sequence = torch.tensor([job.prompts[0] + reference[:-1]], dtype=torch.long, device=job.device)
        logits = next_token_logits(sequence)  # [1, T + n - 1, V]
        predicted = logits[0, len(job.prompts[0]) - 1 :].argmax(dim=-1).tolist()
        handle.note(**{AGREEMENT_DETAIL: token_agreement(predicted, reference)})


def _run_engine_row(session: ProfileSession, job: RowJob) -> None:
    from lmprof.workloads.engine import (
        describe_engine_model,
        import_engine_frameworks,
        load_engine_model,
        profiled_generate,
    )

    import_engine_frameworks(session, job.device)
    import torch

    from lmprof.engine import generate

    torch.set_num_threads(job.threads)  # loading and the agreement check, as the transformers row

    resolved = _resolve(session, job.model)
    options = job.row.engine_options(job.threads)
    session.run.settings["engine_options"] = asdict(options)
    model = load_engine_model(session, resolved.path, options, job.device)
    session.run.model = describe_engine_model(model, resolved, options, job.device)
    release_freed_memory(session)
    with session.phase("warmup", new_tokens=job.warmup_tokens):
        generate(model, job.prompts, job.warmup_tokens, options=options)
    gen, new_tokens = profiled_generate(session, model, job.prompts, job.max_new_tokens, options)
    note_tokens(session, new_tokens[0].tolist())
    session.add_generation(gen)
    check_against_reference(session, job, model)


def _run_transformers_row(session: ProfileSession, job: RowJob) -> None:
    from lmprof.workloads.transformers import import_frameworks

    import_frameworks(session)  # timed imports, then transformers' entry points wrapped
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(job.threads)
    resolved = _resolve(session, job.model)
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if resolved.gguf_file:
        kwargs["gguf_file"] = resolved.gguf_file
    model = AutoModelForCausalLM.from_pretrained(str(resolved.path), **kwargs).eval()
    model.to(job.device)
    release_freed_memory(session)
    tokens = torch.tensor(job.prompts, dtype=torch.long, device=job.device)
    pad = model.generation_config.pad_token_id
    if pad is None:
        eos = model.generation_config.eos_token_id
        pad = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0

    def generate(new_tokens: int) -> Any:
        return model.generate(
            tokens,
            attention_mask=torch.ones_like(tokens),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,  # every row makes the same number of tokens
            pad_token_id=pad,
        )

    with session.phase("warmup", new_tokens=job.warmup_tokens):
        generate(job.warmup_tokens)
    session.run.generations.clear()  # the warm-up's record; its time stays in the warmup phase
    output = generate(job.max_new_tokens)
    note_tokens(session, output[0, tokens.shape[1] :].tolist())
    check_against_reference(session, job, lambda sequence: model(sequence).logits)
    if session.run.model is not None:
        session.run.model.update(source=resolved.source, path=str(resolved.path), spec=resolved.spec)
        session.run.model["id"] = resolved.model_id


def main(argv: list[str] | None = None) -> int:
    """Run the job in JOB.json; the Run is saved even when the row fails (status failed)."""
    args = sys.argv[1:] if argv is None else argv
    job = RowJob.from_dict(json.loads(Path(args[0]).read_text(encoding="utf-8")))
    session = ProfileSession(
        # The row's own device: left to "auto", a CPU row on a GPU host would open a CUDA context
        # and synchronize at each phase in its transformers baseline only.
        device=job.device,
        command=["lmprof", "ablate", "--row", job.row.name, "--round", str(job.round_index)],
        settings={
            "ablation_row": job.row.to_dict(),
            **{k: v for k, v in job.to_dict().items() if k != "row"},
        },
    )
    session.add_python_startup()
    session.start()
    try:
        run_row(session, job)
    except Exception as error:  # the row failed: keep what it measured and say why, on one line
        session.stop(STATUS_FAILED, error)
        session.save(job.out)
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        prefix = "" if isinstance(error, LmprofError) else f"{type(error).__name__}: "
        print(f"{prefix}{first}", file=sys.stderr)
        return 1
    session.stop(STATUS_COMPLETE)
    session.save(job.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
