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
    prefilling row) -> each row's last logits [k, V], in the chunks' order."""
    segments, order = prefill_segments(pool, chunks)
    if len(segments) == 1:
        segment = segments[0]
        logits = model(segment.tokens, segment.positions, segment.mask, segment.cache, last_only=True)[:, -1]
    else:
        logits = _in_chunk_order(model.forward_segments(segments), order)
    _advance_prefilled(pool, chunks)
    return logits


def mixed_rows(
    model: Transformer, pool: KVSlotPool, tokens: list[int], chunks: list[PrefillChunk]
) -> tuple[Tensor, Tensor]:
    """decode_rows (torch ops) and prefill_rows as ONE forward pass -> (decode logits [n, V],
    prefill logits [k, V]). The decode rows' tokens ride in the prefill's matrix products,
    which then read the weights once for both; run apart, a step reads them twice."""
    decode = decode_segment(pool, tokens)
    segments, order = prefill_segments(pool, chunks)
    decode_logits, *prefill_logits = model.forward_segments([decode, *segments])
    pool.positions[: len(tokens)] += 1
    _advance_prefilled(pool, chunks)
    return decode_logits, _in_chunk_order(prefill_logits, order)


def decode_segment(pool: KVSlotPool, tokens: list[int]) -> Segment:
    """The first len(tokens) rows, one token each at the shared column `pool.clock`, which it
    marks valid."""
    n, column = len(tokens), pool.clock
    ids = torch.tensor(tokens, device=pool.positions.device)[:, None]  # [n, 1]
    pool.key_valid[:n, column] = True
    mask = pool.key_valid[:n, None, None, : column + 1]  # [n, 1, 1, S]
    positions = pool.positions[:n, None]  # [n, 1]
    return Segment(ids, positions, mask, RowsWrite(pool, slice(0, n), slice(column, column + 1), column + 1))


def prefill_segments(pool: KVSlotPool, chunks: list[PrefillChunk]) -> tuple[list[Segment], list[list[int]]]:
    """The chunks as segments of one forward pass: chunks of one length share a [k, T] segment,
    and each length has its own, so no token is padding (a prompt of 16 tokens beside one of
    112 would compute 96 padding tokens in a left-padded batch: a fifth of a prefill's time
    at mixed lengths). Also returns each segment's chunk indices."""
    by_length: dict[int, list[int]] = {}
    for i, (_, ids, _) in enumerate(chunks):
        by_length.setdefault(len(ids), []).append(i)
    order = list(by_length.values())
    return [prefill_segment(pool, [chunks[i] for i in indices]) for indices in order], order


def prefill_segment(pool: KVSlotPool, chunks: list[PrefillChunk]) -> Segment:
    """Chunks of one length T as one [k, T] batch, each row at its own columns, which it marks
    valid. One row runs on a view of its row; several write through an index."""
    device = pool.positions.device
    T = len(chunks[0][1])
    if any(len(ids) != T for _, ids, _ in chunks):
        raise ValueError("a prefill segment holds chunks of one length (prefill_segments groups them)")
    if len(chunks) == 1:
        row, ids, start = chunks[0]
        end = start + T
        columns = torch.arange(start, end, device=device)
        pool.key_valid[row, start:end] = True
        mask = causal_mask(columns, pool.key_valid[row : row + 1, :end])  # [1, 1, T, end]
        write = RowsWrite(pool, slice(row, row + 1), slice(start, end), end)
        return Segment(torch.tensor([ids], device=device), columns[None], mask, write)  # [1, T]
    for row, _, start in chunks:
        pool.key_valid[row, start : start + T] = True
    S = max(start for _, _, start in chunks) + T
    tokens = torch.tensor([ids for _, ids, _ in chunks], device=device)  # [k, T]
    starts = torch.tensor([start for _, _, start in chunks], device=device)
    columns = starts[:, None] + torch.arange(T, device=device)  # [k, T]: column = position
    rows = torch.tensor([row for row, _, _ in chunks], device=device)
    before = torch.arange(S, device=device)[None, None, :] <= columns[:, :, None]  # [k, T, S]
    mask = (before & pool.key_valid[rows, :S][:, None, :])[:, None]  # [k, 1, T, S]
    return Segment(tokens, columns, mask, RowsScatter(pool, rows, columns, S))


def _in_chunk_order(parts: list[Tensor], order: list[list[int]]) -> Tensor:
    """Segments' logits [k_i, V] -> [k, V] with row i the i-th chunk's."""
    logits = torch.cat(parts)
    index = torch.tensor([i for indices in order for i in indices], device=logits.device)
    return torch.empty_like(logits).index_copy_(0, index, logits)


def _advance_prefilled(pool: KVSlotPool, chunks: list[PrefillChunk]) -> None:
    for row, ids, start in chunks:
        pool.positions[row] = start + len(ids)
