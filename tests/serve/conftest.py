import shutil

import pytest
from serve_helpers import load_served


@pytest.fixture(scope="session")
def serve_cache(lmprof_cache):
    """Built-in models for the serve tests: the session's private cache (subprocesses get it
    through their env; the process environment is left alone for the other test folders)."""
    return lmprof_cache


@pytest.fixture(scope="session")
def random_llama(serve_cache, tmp_path_factory):
    """A 2-layer random Llama with `tiny`'s tokenizer, weights drawn wide (std 0.3) and untied.

    `tiny`'s small tied weights make it repeat its last input token whatever came before, so a
    batch whose padding leaked into attention or positions would still answer the same; these
    weights make every token depend on the whole prefix, so such a bug changes the text."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lmprof.models import resolve_model

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMPROF_CACHE", str(serve_cache))
        tiny = resolve_model("tiny", progress=False).path
    folder = tmp_path_factory.mktemp("random-llama")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny))
    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False, initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shutil.copy(tiny / "chat_template.jinja", folder / "chat_template.jinja")
    return folder


@pytest.fixture(scope="session")
def model_transformers(random_llama):
    """The random Llama loaded once for every transformers-engine server of the session."""
    return load_served(str(random_llama), "transformers")


@pytest.fixture(scope="session")
def model_engine(random_llama):
    """The random Llama loaded once on lmprof's engine."""
    return load_served(str(random_llama), "lmprof")
