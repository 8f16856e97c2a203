"""benchmarks/gguf_f32.py: the same weights written for llama.cpp as f32 or as q8_0, so the
benchmark's llama.cpp rows run the very values the engine runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, Keys, LlamaFileType
from gguf.quants import dequantize

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gguf_f32.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gguf_f32", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def source(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    tensors = {
        "blk.0.ffn_up.weight": rng.standard_normal((8, 64)).astype(np.float32),  # rows of 2 blocks
        "blk.0.attn_norm.weight": rng.standard_normal(64).astype(np.float32),  # a vector
        "blk.0.odd.weight": rng.standard_normal((4, 40)).astype(np.float32),  # rows not whole blocks
    }
    path = tmp_path / "source.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_file_type(int(LlamaFileType.ALL_F32))
    writer.add_context_length(64)
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, tensors


def read_back(path: Path) -> tuple[dict[str, tuple[GGMLQuantizationType, np.ndarray]], int]:
    reader = GGUFReader(path)
    tensors = {
        t.name: (t.tensor_type, dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist()))))
        for t in reader.tensors
    }
    return tensors, int(reader.fields[Keys.General.FILE_TYPE].contents())


def test_q8_0_quantizes_the_matrices_and_keeps_the_vectors(source, tmp_path):
    path, original = source
    out = tmp_path / "q8.gguf"
    load_script().write_gguf(path, out, "q8_0")
    tensors, file_type = read_back(out)
    assert file_type == LlamaFileType.MOSTLY_Q8_0
    kind, values = tensors["blk.0.ffn_up.weight"]
    assert kind == GGMLQuantizationType.Q8_0
    step = np.abs(original["blk.0.ffn_up.weight"]).max() / 127  # one int8 step of the largest block
    assert np.abs(values - original["blk.0.ffn_up.weight"]).max() <= step
    assert not np.array_equal(values, original["blk.0.ffn_up.weight"])  # really quantized
    for name in ("blk.0.attn_norm.weight", "blk.0.odd.weight"):
        kind, values = tensors[name]
        assert kind == GGMLQuantizationType.F32 and np.array_equal(values, original[name])
    assert read_back(out)[0].keys() == original.keys()


def test_f32_keeps_every_value(source, tmp_path):
    path, original = source
    out = tmp_path / "f32.gguf"
    load_script().write_gguf(path, out)
    tensors, file_type = read_back(out)
    assert file_type == LlamaFileType.ALL_F32
    for name, value in original.items():
        kind, values = tensors[name]
        assert kind == GGMLQuantizationType.F32 and np.array_equal(values, value)
