"""The continuous batcher's KV memory: one preallocated row per running request.

Layout. Every layer holds K and V as [rows, KV, columns, hd]; a request owns one row. A key's
column need not equal its rope position: rope is applied before a key is cached and attention
is a masked sum over keys, so only `key_valid` says which columns a row sees. That freedom
lets every decode step write ONE shared column (`clock`) for all rows, which is exactly what
today's batch decode step does (torch path and the native C++ step, whose `slot` is one int
for the whole batch): the native step then runs on a continuous batch unchanged, with per-row
rope positions (`positions`) and per-row validity.

- A new request's prompt goes to columns [0, L) of its fresh row; when it joins decoding the
  clock is moved to at least L (the other rows get a gap of invalid columns, masked).
- Decoding rows are kept as the prefix [0, n) of the pool, so a step hands the model views
  `keys[:n]`, `key_valid[:n]`, `positions[:n]` without copying the cache; a request that
  leaves has its row filled by the last decoding row (one row copy, its valid columns only).
- When the clock reaches the last column, every decoding row is compacted (its valid columns
  moved to the left, order kept) and the clock restarts after the longest row. With `slack`
  columns beyond max_seq_len that happens at most once every `slack` steps and copies the
  live cache once. The batcher's default slack, max_seq_len / 4, amortizes to a copy of
  4 / max_seq_len of the live cache per step, and bounds the columns attention scans to a
  quarter more than the longest row.

Why rows and not pages of a shared pool: on CPU, torch's SDPA and the native step read a
contiguous [B, KV, S, hd] cache; pages would have to be gathered into one every step and
every layer (a copy of the whole live cache per step, about as many bytes as the attention
reads itself), and the memory pages save (no per-request maximum reserved) matters less
than that copy on a host with tens of GB. Measured (benchmarks/continuous_step.py, SmolLM2-135M
fp32, one thread, 2-core Xeon, 2026-12-07): gathering 8 rows of 512 tokens from 16-token
pages took 36 ms a step, beside 49 ms for the whole native decode step at batch 8; at 2048
tokens, 325 ms. The price of rows is max_batch x columns reserved up front and gap columns
that attention scans but masks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmprof.engine.model import Transformer


class KVSlotPool:
    """K/V for `rows` requests x `columns` cache columns, per layer, with per-row validity and
    rope positions. Rows [0, n_decoding) decode; the rest are free or hold prefilling requests."""

    def __init__(self, model: Transformer, rows: int, columns: int) -> None:
        config, device = model.config, model.inv_freq.device
        shape = (rows, config.n_kv_heads, columns, config.head_dim)
        self.rows, self.columns = rows, columns
        self.keys = [torch.zeros(shape, dtype=model.dtype, device=device) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, dtype=model.dtype, device=device) for _ in range(config.n_layers)]
        self.key_valid = torch.zeros(rows, columns, dtype=torch.bool, device=device)
        self.positions = torch.zeros(rows, dtype=torch.long, device=device)  # next token's rope position
        self.clock = 0  # the column the next decode step writes, for every decoding row
        self.compactions = 0

    @property
    def bytes_per_token(self) -> int:
        k = self.keys[0]
        return 2 * len(self.keys) * k.shape[1] * k.shape[3] * k.element_size()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def reset_row(self, row: int) -> None:
        self.key_valid[row] = False
        self.positions[row] = 0

    def write_prefix(self, row: int, start: int, keys: Tensor, values: Tensor) -> None:
        """Place K/V [L, KV, T, hd] (e.g. prefix-cache blocks) at columns [start, start+T) of `row`."""
        T = keys.shape[2]
        for layer in range(len(self.keys)):
            self.keys[layer][row, :, start : start + T] = keys[layer]
            self.values[layer][row, :, start : start + T] = values[layer]
        self.key_valid[row, start : start + T] = True
        self.positions[row] = start + T

    def read_columns(self, row: int, start: int, end: int) -> tuple[Tensor, Tensor]:
        """Copies of `row`'s K/V at columns [start, end): [L, KV, end-start, hd] each. Only
        valid for a row whose tokens sit at columns equal to their positions (see compact_row)."""
        keys = torch.stack([k[row, :, start:end] for k in self.keys])
        values = torch.stack([v[row, :, start:end] for v in self.values])
        return keys, values

    def move_row(self, src: int, dst: int) -> None:
        """Copy row `src` into row `dst` (only up to its last valid column) and clear `src`."""
        if src == dst:
            return
        used = self.used_columns(src)
        for cache in self.keys + self.values:
            cache[dst, :, :used] = cache[src, :, :used]
        self.key_valid[dst] = self.key_valid[src]
        self.positions[dst] = self.positions[src]
        self.reset_row(src)

    def swap_rows(self, a: int, b: int) -> None:
        if a == b:
            return
        used = max(self.used_columns(a), self.used_columns(b))
        for cache in self.keys + self.values:
            cache[[a, b], :, :used] = cache[[b, a], :, :used]
        self.key_valid[[a, b]] = self.key_valid[[b, a]]
        self.positions[[a, b]] = self.positions[[b, a]]

    def used_columns(self, row: int) -> int:
        """One past the row's last valid column (0 for an empty row)."""
        valid = self.key_valid[row].nonzero()
        return int(valid[-1]) + 1 if valid.numel() else 0

    def compact_row(self, row: int) -> int:
        """Move `row`'s valid columns to [0, n) keeping their order, so column = position again;
        returns n."""
        columns = self.key_valid[row].nonzero().squeeze(1)
        n = columns.numel()
        for cache in self.keys + self.values:
            cache[row, :, :n] = cache[row, :, columns]
        self.key_valid[row] = False
        self.key_valid[row, :n] = True
        return n

    def compact(self, decoding: int) -> None:
        """Compact every decoding row and restart the clock after the longest."""
        self.clock = max((self.compact_row(row) for row in range(decoding)), default=0)
        self.compactions += 1


class RowsWrite:
    """The cache a forward pass sees (it only calls `update`): writes the new K/V at the given
    columns of the given rows and returns the K/V the layer attends over.

    decode: rows [0, n), one shared column; prefill: one row, a run of columns."""

    def __init__(self, pool: KVSlotPool, rows: slice, columns: slice, attend_columns: int) -> None:
        self.pool, self.rows, self.columns, self.attend = pool, rows, columns, attend_columns

    def update(self, layer: int, slots: Tensor | None, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # k, v: [B, KV, T, hd] -> [B, KV, attend_columns, hd] (views of the pool, no copy)
        keys, values = self.pool.keys[layer], self.pool.values[layer]
        keys[self.rows, :, self.columns] = k
        values[self.rows, :, self.columns] = v
        return keys[self.rows, :, : self.attend], values[self.rows, :, : self.attend]


class RowsScatter:
    """The cache of a forward pass over several rows at once, each writing its own columns:
    rows [k], columns [k, T]; returns copies of those rows' first `attend_columns` columns."""

    def __init__(self, pool: KVSlotPool, rows: Tensor, columns: Tensor, attend_columns: int) -> None:
        self.pool, self.rows, self.columns, self.attend = pool, rows, columns, attend_columns

    def update(self, layer: int, slots: Tensor | None, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # k, v: [k, KV, T, hd]; indexing [rows, :, columns] puts the indexed dims first: [k, T, KV, hd]
        keys, values = self.pool.keys[layer], self.pool.values[layer]
        keys[self.rows[:, None], :, self.columns] = k.transpose(1, 2)
        values[self.rows[:, None], :, self.columns] = v.transpose(1, 2)
        return keys[self.rows, :, : self.attend], values[self.rows, :, : self.attend]
