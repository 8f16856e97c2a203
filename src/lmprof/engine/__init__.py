"""lmprof.engine: a readable Llama-family decoder in plain PyTorch, with optimization switches.

    model = load_hf_folder("path/to/hf-folder", EngineOptions(int8=True))
    result = generate(model, [[1, 2, 3]], max_new_tokens=32)
    result.tokens, result.prefill_s, result.decode_step_s

config.py (architecture + presets), options.py (switches), model.py (the network),
kv_cache.py, quant.py (int8 weights), weights.py (HF folders), generate.py (prefill/decode
loop with timings), cost.py (analytic bytes and FLOPs), native_decode.py + native/ (the decode
step as one call into lmprof's C++ kernels, EngineOptions(native_decode=True)); for serving,
continuous.py (continuous batching over slot_pool.py's KV rows) and prefix_cache.py.
"""

from lmprof.engine.config import PRESETS, EngineConfig, RopeScaling
from lmprof.engine.continuous import ContinuousBatcher, Request, RequestState, StepRecord
from lmprof.engine.generate import (
    DecodeState,
    GenerationResult,
    decode_step,
    generate,
    new_decode_state,
    prefill,
    sample,
)
from lmprof.engine.model import Transformer
from lmprof.engine.options import EngineOptions
from lmprof.engine.prefix_cache import PrefixCache
from lmprof.engine.quant import quantize_int8
from lmprof.engine.weights import eos_token_ids, load_hf_folder

__all__ = [
    "PRESETS",
    "ContinuousBatcher",
    "DecodeState",
    "EngineConfig",
    "EngineOptions",
    "GenerationResult",
    "PrefixCache",
    "Request",
    "RequestState",
    "StepRecord",
    "RopeScaling",
    "Transformer",
    "decode_step",
    "eos_token_ids",
    "generate",
    "load_hf_folder",
    "new_decode_state",
    "prefill",
    "quantize_int8",
    "sample",
]
