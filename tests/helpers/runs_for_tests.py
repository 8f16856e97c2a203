"""Hand-built Runs for analysis and renderer tests: fixed numbers, no model."""

from __future__ import annotations

from lmprof.record.run import Generation, MemoryTimeline, Phase, Run

MiB = 1 << 20


def phase(
    name, start, end, depth=0, parent=None, rss=(100 * MiB, 110 * MiB), file_rss=(10 * MiB, 10 * MiB), **kw
):
    return Phase(
        name=name, start_s=start, end_s=end, depth=depth, parent_index=parent, cpu_s=(end - start) * 0.9,
        rss_start_bytes=rss[0], rss_end_bytes=rss[1], rss_peak_bytes=max(rss),
        file_rss_start_bytes=file_rss[0], file_rss_end_bytes=file_rss[1], **kw,
    )  # fmt: skip


def sample_run() -> Run:
    phases = [
        phase("python_startup", -0.5, 0.0),
        phase("import_torch", 0.0, 1.0),
        phase("resolve", 1.0, 1.1),
        phase("pipeline_setup", 1.1, 2.1),
        phase("load_model", 1.1, 1.6, depth=1, parent=3),
        phase(
            "read_weights", 1.2, 1.4, depth=2, parent=4, file_rss=(10 * MiB, 60 * MiB), payload_bytes=50 * MiB
        ),
        phase("load_tokenizer", 1.6, 2.0, depth=1, parent=3),
        phase("pipeline_call", 2.2, 4.2, rss=(110 * MiB, 700 * MiB)),
        phase("tokenize", 2.2, 2.21, depth=1, parent=7),
        phase("generate", 2.21, 4.19, depth=1, parent=7),
        phase("prefill", 2.21, 2.71, depth=2, parent=9, file_rss=(60 * MiB, 560 * MiB)),
        phase("decode", 2.71, 4.19, depth=2, parent=9),
        phase("detokenize", 4.19, 4.2, depth=1, parent=7),
    ]
    gen = Generation(
        call="pipeline", batch_size=1, prompt_tokens=12, new_tokens=4, start_s=2.2, first_token_s=2.71, end_s=4.19,
        prefill_s=0.5, decode_s=1.48, decode_step_latencies_s=[0.5, 0.48, 0.5], timing="host_clock",
        prompt="Hello", text="Hi there!",
    )  # fmt: skip
    memory = MemoryTimeline(
        interval_s=0.01,
        host={"t_s": [0.0, 1.0, 3.0, 4.3], "rss_bytes": [100 * MiB, 200 * MiB, 720 * MiB, 700 * MiB],
              "file_rss_bytes": [10 * MiB, 10 * MiB, 560 * MiB, 560 * MiB]},
        peak_rss_bytes=720 * MiB, peak_rss_t_s=3.0, os_peak_rss_bytes=725 * MiB,
    )  # fmt: skip
    from lmprof.analyze.generation import derive_generation_figures

    derive_generation_figures(gen)
    return Run(
        run_id="abc123", created_at="2026-11-25T00:00:00+00:00", lmprof_version="0.1.0", status="complete",
        command=["lmprof", "profile", "tiny"], settings={"max_new_tokens": 4},
        model={"id": "tiny", "architecture": "LlamaForCausalLM", "parameter_count": 1_234_567, "dtype": "float32",
               "weight_bytes": 4_938_268, "device": "cpu"},
        system={}, environment={}, phases=phases, generation=gen, generations=[gen], memory=memory, wall_s=4.8,
    )  # fmt: skip
