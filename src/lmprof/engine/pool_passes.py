"""The forward passes of continuous batching over a KVSlotPool: one decode step for the
decoding rows (torch ops or the native C++ step), prefill chunks of one or more rows, and the
two as one pass (mixed_rows).

Both take plain data (rows, token ids, columns) and leave scheduling to continuous.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor

from lmprof.engine.model import Segment, Transformer, causal_mask
from lmprof.engine.native_decode import NativeInputs, NativeStep
from lmprof.engine.slot_pool import KVSlotPool, RowsScatter, RowsWrite

PrefillChunk = tuple[int, list[int], int]  # (row, token ids, first column = first position)


def decode_rows(
    model: Transformer, pool: KVSlotPool, tokens: list[int], native: NativeInputs | None = None
) -> Tensor:
    """One new token for each of the first len(tokens) rows, written at the shared column
    `pool.clock` (the caller advances it), each row at its own rope position -> logits [n, V].

    native: the inputs of lmprof's C++ step (native_decode.native_inputs), which takes views of
    the first n rows as its batch; None runs torch ops."""
    n, column = len(tokens), pool.clock
    if native is not None:  # marks the column valid and advances the positions itself
        ids = torch.tensor(tokens, device=pool.positions.device)[:, None]  # [n, 1]
        cache = SimpleNamespace(keys=[k[:n] for k in pool.keys], values=[v[:n] for v in pool.values])
        step = NativeStep(native, pool.key_valid[:n], pool.positions[:n], column)
        return model(ids, cache=cache, native=step)[:, -1]  # [n, V]
    segment = decode_segment(pool, tokens)
    logits = model(segment.tokens, segment.positions, segment.mask, segment.cache)[:, -1]  # [n, V]
    pool.positions[:n] += 1
    return logits


def prefill_rows(model: Transformer, pool: KVSlotPool, chunks: list[PrefillChunk]) -> Tensor:
    """Each chunk's tokens into columns [start, start + T) of its row (column = position in a
    prefilling row) -> each row's last logits [k, V]."""
    segment = prefill_segment(pool, chunks)
    logits = model(segment.tokens, segment.positions, segment.mask, segment.cache, last_only=True)[:, -1]
    _advance_prefilled(pool, chunks)
    return logits


def mixed_rows(
    model: Transformer, pool: KVSlotPool, tokens: list[int], chunks: list[PrefillChunk]
) -> tuple[Tensor, Tensor]:
    """decode_rows (torch ops) and prefill_rows as ONE forward pass -> (decode logits [n, V],
    prefill logits [k, V]). The decode rows' tokens ride in the prefill's matrix products,
    which then read the weights once for both; run apart, a step reads them twice."""
    decode, prefill = decode_segment(pool, tokens), prefill_segment(pool, chunks)
    decode_logits, prefill_logits = model.forward_segments([decode, prefill])
    pool.positions[: len(tokens)] += 1
    _advance_prefilled(pool, chunks)
    return decode_logits, prefill_logits


def decode_segment(pool: KVSlotPool, tokens: list[int]) -> Segment:
    """The first len(tokens) rows, one token each at the shared column `pool.clock`, which it
    marks valid."""
    n, column = len(tokens), pool.clock
    ids = torch.tensor(tokens, device=pool.positions.device)[:, None]  # [n, 1]
    pool.key_valid[:n, column] = True
    mask = pool.key_valid[:n, None, None, : column + 1]  # [n, 1, 1, S]
    positions = pool.positions[:n, None]  # [n, 1]
    return Segment(ids, positions, mask, RowsWrite(pool, slice(0, n), slice(column, column + 1), column + 1))


def prefill_segment(pool: KVSlotPool, chunks: list[PrefillChunk]) -> Segment:
    """The chunks' rows, whose columns it marks valid. One row runs on a view of its row;
    several are left-padded to one [k, T] batch (the weights read once for all), whose padding
    writes a scratch column no prefilling row attends to."""
    device = pool.positions.device
    if len(chunks) == 1:
        row, ids, start = chunks[0]
        end = start + len(ids)
        columns = torch.arange(start, end, device=device)
        pool.key_valid[row, start:end] = True
        mask = causal_mask(columns, pool.key_valid[row : row + 1, :end])  # [1, 1, T, end]
        write = RowsWrite(pool, slice(row, row + 1), slice(start, end), end)
        return Segment(torch.tensor([ids], device=device), columns[None], mask, write)  # [1, T]
    k = len(chunks)
    T = max(len(ids) for _, ids, _ in chunks)
    S = max(start + len(ids) for _, ids, start in chunks)
    scratch = pool.columns - 1  # past max_seq_len: never a prefilling row's key
    tokens = torch.zeros(k, T, dtype=torch.long)
    write_columns = torch.full((k, T), scratch, dtype=torch.long)
    query_columns = torch.zeros(k, T, dtype=torch.long)
    for i, (row, ids, start) in enumerate(chunks):
        n = len(ids)
        tokens[i, T - n :] = torch.tensor(ids)
        write_columns[i, T - n :] = torch.arange(start, start + n)
        query_columns[i] = start  # padding sees the row's first new key, so no row is all masked
        query_columns[i, T - n :] = torch.arange(start, start + n)
        pool.key_valid[row, start : start + n] = True
    rows = torch.tensor([row for row, _, _ in chunks], device=device)
    tokens, write_columns, query_columns = (t.to(device) for t in (tokens, write_columns, query_columns))
    before = torch.arange(S, device=device)[None, None, :] <= query_columns[:, :, None]  # [k, T, S]
    mask = (before & pool.key_valid[rows, :S][:, None, :])[:, None]  # [k, 1, T, S]
    return Segment(tokens, query_columns, mask, RowsScatter(pool, rows, write_columns, S))


def _advance_prefilled(pool: KVSlotPool, chunks: list[PrefillChunk]) -> None:
    for row, ids, start in chunks:
        pool.positions[row] = start + len(ids)
