"""Where transformers spends loading time, as the functions lmprof wraps into phases: config
files, GGUF parsing and dequantization, tokenizer conversion, weight finalization. Read from
the installed transformers' code; a function another version lacks is skipped, and what was
wrapped is listed in the Run's `instrumented` (collect/instrument.py does the wrapping).
"""

from __future__ import annotations

# transformers' own functions where loading spends its time (as of transformers 5.24):
# (module, class or None for a module function, attribute, phase). A point that a version
# lacks is skipped. Points in modules that are expensive to import (the GGUF support) are in
# GGUF_POINTS and are wrapped when a GGUF file is first parsed, never imported for nothing.
LOADING_POINTS: tuple[tuple[str, str | None, str, str], ...] = (
    ("transformers.configuration_utils", "PreTrainedConfig", "get_config_dict", "load_config"),
    ("transformers.generation.configuration_utils", "GenerationConfig", "from_pretrained", "load_config"),
    ("transformers.modeling_utils", "PreTrainedModel", "_finalize_model_loading", "finalize_weights"),
    ("transformers.modeling_utils", "PreTrainedModel", "_move_missing_keys_from_meta_to_device", "init_missing"),
    ("transformers.modeling_utils", "PreTrainedModel", "_initialize_missing_keys", "init_missing"),
    ("transformers.modeling_utils", "PreTrainedModel", "tie_weights", "tie_weights"),
    ("transformers.tokenization_utils_tokenizers", "TokenizersBackend", "convert_to_native_format",
     "convert_tokenizer"),
    ("transformers.quantizers.quantizer_gguf", "GgufHfQuantizer", "read_header", "parse_gguf"),
    ("transformers.models.auto.tokenization_auto", "AutoTokenizer", "from_pretrained", "load_tokenizer"),
)  # fmt: skip
GGUF_POINTS: tuple[tuple[str, str | None, str, str], ...] = (
    ("gguf.gguf_reader", "GGUFReader", "__init__", "read_gguf_header"),
    ("transformers.integrations.gguf.reader", None, "read_gguf_metadata", "parse_gguf"),
    ("transformers.modeling_gguf_pytorch_utils", None, "get_gguf_hf_weights_map", "map_gguf_names"),
    ("transformers.integrations.gguf", None, "convert_gguf_tokenizer", "convert_tokenizer"),
    ("gguf", None, "dequantize", "dequantize"),
)
