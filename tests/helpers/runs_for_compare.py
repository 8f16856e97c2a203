"""Hand-built Runs that differ in chosen figures, for comparison tests: fixed numbers, no model."""

from __future__ import annotations

from helpers.runs_for_tests import MiB, sample_run
from lmprof.analyze.generation import derive_generation_figures
from lmprof.record.deep import DeepProfile
from lmprof.record.groups import RunGroup
from lmprof.record.run import Generation, Run


def generation(
    prefill_s: float = 0.5, steps_s: tuple[float, ...] = (0.5, 0.48, 0.5), prompt_tokens: int = 12
) -> Generation:
    start = 2.2
    first = start + 0.01 + prefill_s
    gen = Generation(
        call="pipeline", batch_size=1, prompt_tokens=prompt_tokens, new_tokens=len(steps_s) + 1, start_s=start,
        first_token_s=first, end_s=first + sum(steps_s), prefill_s=prefill_s, decode_s=sum(steps_s),
        decode_step_latencies_s=list(steps_s), timing="host_clock", prompt="Hello", text="Hi there!",
    )  # fmt: skip
    return derive_generation_figures(gen)


def timed_run(
    run_id: str = "a",
    *,
    prefill_s: float = 0.5,
    steps_s: tuple[float, ...] = (0.5, 0.48, 0.5),
    load_model_s: float = 0.5,
    peak_rss_bytes: int = 720 * MiB,
    model_id: str = "tiny",
    more_generations: tuple[Generation, ...] = (),
    memory_parts: dict[str, int] | None = None,
) -> Run:
    """sample_run() with the figures a comparison reads set from the arguments."""
    run = sample_run()
    run.run_id = run_id
    assert run.model is not None and run.memory is not None
    run.model["id"] = model_id
    load_model = next(p for p in run.phases if p.name == "load_model")
    load_model.end_s = load_model.start_s + load_model_s
    run.memory.peak_rss_bytes = peak_rss_bytes
    gen = generation(prefill_s, steps_s)
    run.generation = gen
    run.generations = [gen, *more_generations]
    if memory_parts is not None:
        run.deep = DeepProfile(
            memory_by_kind={"peak_bytes": sum(memory_parts.values()), "parts": memory_parts}
        )
    return run


def group(*runs: Run, source: str = "") -> RunGroup:
    return RunGroup(runs=list(runs), source=source or "/".join(r.run_id for r in runs))
