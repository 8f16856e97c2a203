"""`with lmprof.profile() as run:` around ordinary transformers code, in this process."""

import inspect

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
from transformers.generation.utils import GenerationMixin
from transformers.modeling_utils import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

import lmprof
from lmprof.record.run import validate_run_dict


def test_context_manager_records_a_pipeline_made_inside_it(tiny_model, tmp_path):
    with lmprof.profile() as run:
        pipe = pipeline("text-generation", model=str(tiny_model))
        pipe("Hello there", max_new_tokens=6, min_new_tokens=6)
    path = run.save(tmp_path / "lib")
    assert path.name == "run.json"
    rec = lmprof.load_run(tmp_path / "lib")
    validate_run_dict(rec.to_dict())
    names = [p.name for p in rec.phases]
    for name in (
        "load_model",
        "read_weights",
        "load_tokenizer",
        "pipeline_call",
        "tokenize",
        "prefill",
        "decode",
    ):
        assert name in names
    assert rec.generation.new_tokens == 6 and rec.generation.call == "pipeline"
    assert rec.generation.text is not None
    assert rec.model["architecture"] == "LlamaForCausalLM"


def test_instrumentation_is_removed_after_the_session(tiny_model):
    before = {
        (cls, name): inspect.getattr_static(cls, name)
        for cls, name in [
            (PreTrainedModel, "from_pretrained"),
            (PreTrainedModel, "_load_pretrained_model"),
            (PreTrainedTokenizerBase, "__call__"),
            (GenerationMixin, "generate"),
        ]
    }
    with lmprof.profile():
        assert (
            inspect.getattr_static(GenerationMixin, "generate") is not before[(GenerationMixin, "generate")]
        )
    for (cls, name), raw in before.items():
        assert inspect.getattr_static(cls, name) is raw


def test_generate_steps_and_user_phases(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    inputs = tok(["a b c d"], return_tensors="pt")
    with lmprof.profile() as run:
        with run.phase("my_step"):
            out = model.generate(**inputs, max_new_tokens=7, min_new_tokens=7, do_sample=False)
    rec = run.run
    assert out.shape[-1] - inputs["input_ids"].shape[-1] == 7
    gen = rec.generation
    assert gen.call == "generate" and gen.new_tokens == 7 and len(gen.decode_step_latencies_s) == 6
    assert gen.prompt_tokens == inputs["input_ids"].shape[-1]
    my = next(p for p in rec.phases if p.name == "my_step")
    g = next(p for p in rec.phases if p.name == "generate")
    assert rec.phases[g.parent_index] is my


def test_an_exception_inside_marks_the_run_failed(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with pytest.raises(ValueError):
        with lmprof.profile() as run:
            with run.phase("work"):
                model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2)
                raise ValueError("bad")
    rec = run.run
    assert rec.status == "failed" and rec.error == {"type": "ValueError", "message": "bad"}
    assert [p.complete for p in rec.phases if p.name == "work"] == [False]
    validate_run_dict(rec.to_dict())


def test_interrupt_marks_the_run_incomplete():
    with pytest.raises(KeyboardInterrupt):
        with lmprof.profile() as run:
            raise KeyboardInterrupt
    assert run.run.status == "incomplete"


def test_the_model_record_follows_a_move_after_loading(tiny_model):
    # A pipeline moves the model to the GPU after from_pretrained described it on the CPU; the
    # Run must say where it ran. The meta device stands in for a GPU on a CPU-only machine.
    with lmprof.profile() as run:
        model = AutoModelForCausalLM.from_pretrained(tiny_model)
        assert run.run.model["device"] == "cpu"
        model.to("meta")
    assert run.run.model["device"] == "meta"
    move = next(p for p in run.run.phases if p.name == "to_device")
    assert move.payload_bytes > 0
