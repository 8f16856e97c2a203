"""Model resolution: built-in names, local folders and hub ids, to a folder from_pretrained loads.

Built-in models are built once into `cache_root()/models/<name>/`: the trained default
(SmolLM2-135M-Instruct, fetched from PyPI) and random-weight presets with real architectures.
"""

from lmprof.models.builtin import is_builtin_cached
from lmprof.models.cache import cache_root
from lmprof.models.presets import DEFAULT_MODEL, BuiltinModel, list_builtin_models
from lmprof.models.resolve import ModelSource, ResolvedModel, resolve_model

__all__ = [
    "DEFAULT_MODEL",
    "BuiltinModel",
    "ModelSource",
    "ResolvedModel",
    "cache_root",
    "is_builtin_cached",
    "list_builtin_models",
    "resolve_model",
]
