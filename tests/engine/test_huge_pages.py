"""Weights on transparent huge pages: the kernel's policy, the arena, the in-place move of a
model's tensors (identity, ties, strides, values), the engine switch, and the read probe."""

from __future__ import annotations

import mmap
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from helpers.engine_models import prompt
from torch import nn

from lmprof.collect.hardware_probes import probe_device, probe_read_huge_pages
from lmprof.engine import EngineOptions, generate, load_hf_folder
from lmprof.engine.huge_pages import (
    HUGE_PAGE_BYTES,
    HugePagesUnavailable,
    check_huge_pages,
    huge_page_buffer,
    huge_page_bytes,
    huge_pages_offered,
    move_to_huge_pages,
    thp_mode,
)
from lmprof.errors import UsageError
from lmprof.record.probes import MIB, ProbeSizes
from lmprof.record.run import load_run

THP = thp_mode()
needs_thp = pytest.mark.skipif(THP in (None, "never"), reason=f"transparent huge pages are {THP or 'absent'}")


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("always [madvise] never\n", "madvise"),
        ("[always] madvise never", "always"),
        ("always madvise [never]", "never"),
    ],
)
def test_thp_mode_reads_the_bracketed_policy(tmp_path, text, mode):
    path = tmp_path / "enabled"
    path.write_text(text)
    assert thp_mode(path) == mode


def test_no_huge_pages_is_one_clear_error(tmp_path):
    never = tmp_path / "enabled"
    never.write_text("always madvise [never]\n")
    with pytest.raises(HugePagesUnavailable, match="says never"):
        check_huge_pages(never)
    with pytest.raises(HugePagesUnavailable, match="is missing"):
        check_huge_pages(tmp_path / "absent")
    assert issubclass(HugePagesUnavailable, UsageError)  # the CLI prints one line, exit 2
    assert not huge_pages_offered(never) and not huge_pages_offered(tmp_path / "absent")
    madvise = tmp_path / "madvise"
    madvise.write_text("always [madvise] never\n")
    assert huge_pages_offered(madvise) == hasattr(mmap, "MADV_HUGEPAGE")


@needs_thp
def test_buffer_starts_on_a_huge_page_and_gets_huge_pages():
    buffer = huge_page_buffer(3 * HUGE_PAGE_BYTES + 100)
    assert buffer.data_ptr() % HUGE_PAGE_BYTES == 0
    assert buffer.numel() == 3 * HUGE_PAGE_BYTES + 100
    assert int(buffer.sum()) == 0  # anonymous memory starts zeroed
    buffer.fill_(1)
    assert huge_page_bytes(buffer) >= 2 * HUGE_PAGE_BYTES  # read back from smaps, not assumed


@pytest.mark.skipif(THP != "madvise", reason=f"transparent huge pages are {THP or 'absent'}, not madvise")
def test_an_ordinary_tensor_gets_no_huge_pages_under_madvise():
    # In a fresh interpreter: in a long-lived one (this test run) an ordinary allocation can land
    # in heap that numpy has madvised for huge pages (seen after the GGUF loading tests here).
    code = (
        "import torch\n"
        "from lmprof.engine.huge_pages import HUGE_PAGE_BYTES, huge_page_bytes\n"
        "print(huge_page_bytes(torch.ones(3 * HUGE_PAGE_BYTES, dtype=torch.uint8)) <= HUGE_PAGE_BYTES)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert proc.stdout.strip() == "True"


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(512, 128)
        self.head = nn.Linear(128, 512, bias=False)
        self.head.weight = self.embed.weight
        self.proj = nn.Linear(128, 256)
        self.proj.weight = nn.Parameter(self.proj.weight.detach().t().contiguous().t())  # column-major view
        self.register_buffer("table", torch.arange(512 * 256, dtype=torch.int8).view(512, 256))
        self.norm = nn.Parameter(torch.ones(128))  # small, moved too
        self.reader = nn.Module()
        self.reader.register_buffer("table", self.table)  # one buffer, two holders


@needs_thp
def test_move_keeps_values_identity_ties_and_strides():
    torch.manual_seed(0)
    model = Tied()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    embed, proj = model.embed.weight, model.proj.weight
    stride = proj.stride()
    placement = move_to_huge_pages(model)
    assert placement.tensors == 5  # embed (= head), proj, its bias, norm, table (= reader's)
    assert placement.bytes_moved == (512 * 128 + 256 * 128 + 256 + 128) * 4 + 512 * 256
    assert placement.huge_page_bytes > 0 and 0 < placement.share <= 1
    assert model.embed.weight is embed and model.head.weight is embed  # still one tied Parameter
    assert model.proj.weight is proj and proj.stride() == stride  # still column-major
    starts = [
        t.data_ptr()
        for t in (model.embed.weight, model.proj.weight, model.proj.bias, model.norm, model.table)
    ]
    assert max(starts) - min(starts) < placement.bytes_moved  # all in one arena
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert huge_page_bytes(model.embed.weight) > 0
    assert huge_page_bytes(model.table) > 0 and model.table.dtype == torch.int8
    assert model.reader.table is model.table  # both holders see the moved buffer


@needs_thp
@pytest.mark.parametrize("switches", [{}, {"int8": True}, {"column_major": True, "fuse_qkv": True}])
def test_engine_on_huge_pages_generates_the_same_tokens(model_dirs, switches):
    folder = model_dirs["llama-tied-bias"]
    plain = load_hf_folder(folder, EngineOptions(**switches))
    huge = load_hf_folder(folder, EngineOptions(huge_pages=True, **switches))
    assert plain.huge_page_placement is None
    assert huge.huge_page_placement.tensors > 0 and huge.huge_page_placement.huge_page_bytes > 0
    if not switches.get("int8"):
        assert huge.lm_head.weight is huge.embed_tokens.weight
    ids = prompt(7, seed=3, batch=2)
    assert torch.equal(generate(plain, ids, 6).tokens, generate(huge, ids, 6).tokens)


def test_huge_pages_refuse_a_gpu_before_loading(model_dirs):
    with pytest.raises(UsageError, match="CPU memory"):
        load_hf_folder(model_dirs["qwen2"], EngineOptions(huge_pages=True), device="cuda")


@needs_thp
def test_read_probe_from_huge_pages_joins_the_cpu_probes():
    tiny = replace(ProbeSizes(), read_bytes=MIB, matvec_weight_bytes=MIB, matvec_in_features=256, repeats=2)
    result = probe_read_huge_pages(tiny)
    assert result.skipped is None and result.kind == "read" and result.best_gbps > 0
    assert result.bytes_per_repeat == MIB
    assert "read_huge_pages" in {p.name for p in probe_device("cpu", replace(tiny, matmul_n=32))}


def test_read_probe_says_why_it_skipped(monkeypatch):
    import lmprof.engine.huge_pages as huge_pages

    monkeypatch.setattr(huge_pages, "thp_mode", lambda path=None: "never")
    result = probe_read_huge_pages(replace(ProbeSizes(), read_bytes=MIB))
    assert result.skipped and "huge pages are off" in result.skipped and not result.times_s


@needs_thp
def test_profile_with_huge_pages_records_what_the_kernel_granted(run_cli, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "profile", "tiny", "--engine", "lmprof", "--huge-pages", "--device", "cpu", "--max-new-tokens", 4,
        "--out", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = load_run(out)
    assert run.status == "complete" and run.model["engine_options"]["huge_pages"] is True
    prepare = next(p for p in run.phases if p.name == "prepare_weights")
    assert prepare.detail["huge_pages"] is True
    granted = prepare.detail["huge_page_placement"]
    assert granted["tensors"] > 0 and 0 < granted["huge_page_bytes"] <= granted["bytes_moved"]
    assert "weights on 2 MiB huge pages:" in proc.stdout and "moved in prepare_weights" in proc.stdout


def test_huge_pages_flag_needs_the_engine(run_cli, tmp_path):
    proc = run_cli("profile", "tiny", "--huge-pages", "--out", tmp_path / "run")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith("--huge-pages is a switch of lmprof's engine: add --engine lmprof")
    )
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_ablation_plans_a_huge_pages_row_and_says_why_it_cannot_run(monkeypatch):
    from lmprof.ablation.plan import plan_rows
    from lmprof.ablation.runner import _huge_pages_unavailable

    rows = {r.name: r for r in plan_rows(threads=2, logical_cores=2, prompt_tokens=32)}
    assert rows["huge-pages"].options == {"huge_pages": True} and rows["huge-pages"].skip_reason is None
    assert (
        _huge_pages_unavailable("cuda") == "huge pages place memory on CPU only; this ablation runs on cuda"
    )
    monkeypatch.setattr("lmprof.engine.huge_pages.thp_mode", lambda path=None: "never")
    reason = _huge_pages_unavailable("cpu")
    assert reason and "says never" in reason
    skipped = {
        r.name: r
        for r in plan_rows(threads=2, logical_cores=2, prompt_tokens=32, huge_pages_unavailable=reason)
    }
    assert skipped["huge-pages"].skip_reason == reason
