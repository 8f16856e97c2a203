"""Tensors on transparent huge pages: 2 MiB pages where the kernel grants them.

A batch-1 decode step streams every weight once. With 4 KiB pages that stream crosses a page
(a TLB miss, and on many CPUs a stop for the hardware prefetcher) every 4 KiB; with 2 MiB pages
it crosses one every 2 MiB. On this project's 2-core EPYC a 256 MiB sum read 24 GB/s from
4 KiB pages and 30 GB/s from huge pages at one thread, and the native decode step ran 1.2x
faster. Where Linux's transparent huge pages are `madvise` (the common default), memory gets
them only when asked: an anonymous mapping, aligned to 2 MiB, marked MADV_HUGEPAGE before it
is touched. The kernel may still refuse (fragmented memory), so what was granted is read back
from /proc/self/smaps rather than assumed.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lmprof.errors import UsageError

HUGE_PAGE_BYTES = 2 * 2**20
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")
SMAPS = Path("/proc/self/smaps")
TENSOR_ALIGN_BYTES = 64  # one cache line: every tensor in an arena starts on its own line


class HugePagesUnavailable(UsageError):
    """This system cannot give a process transparent huge pages."""


def thp_mode(path: Path = THP_ENABLED) -> str | None:
    """The kernel's transparent-huge-page policy ("always", "madvise", "never"), None off Linux."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def check_huge_pages(path: Path = THP_ENABLED) -> None:
    """Raise HugePagesUnavailable unless this process can ask for huge pages."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        raise HugePagesUnavailable("huge pages need Linux's madvise(MADV_HUGEPAGE); drop huge_pages here")
    mode = thp_mode(path)
    if mode in (None, "never"):
        said = "is missing" if mode is None else "says never"
        raise HugePagesUnavailable(
            f"transparent huge pages are off ({path} {said}); "
            "enable them (echo madvise | sudo tee it) or drop huge_pages"
        )


def huge_pages_offered(path: Path = THP_ENABLED) -> bool:
    """Whether check_huge_pages would pass: for benchmarks that use huge pages where offered."""
    try:
        check_huge_pages(path)
    except HugePagesUnavailable:
        return False
    return True


def check_huge_pages_on(device: str | torch.device, switch: str = "huge_pages") -> None:
    """Raise UsageError unless `switch` can put a model's weights on huge pages for `device`:
    a CPU model on a system that gives huge pages (HugePagesUnavailable otherwise)."""
    if torch.device(device).type != "cpu":
        raise UsageError(f"{switch} places weights in CPU memory; drop it on {device}")
    check_huge_pages()


def huge_page_buffer(nbytes: int) -> Tensor:
    """A zero-filled uint8 tensor of `nbytes`, starting on a 2 MiB boundary, asked to be on
    huge pages. The tensor keeps its mapping alive; the mapping is unmapped when it is freed."""
    check_huge_pages()
    mapped = (nbytes + 2 * HUGE_PAGE_BYTES - 1) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
    region = mmap.mmap(-1, mapped, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(mmap.MADV_HUGEPAGE)  # before the first touch: faults then map 2 MiB at once
    whole = torch.frombuffer(region, dtype=torch.uint8)  # holds a reference to `region`
    start = (-whole.data_ptr()) % HUGE_PAGE_BYTES
    return whole[start : start + nbytes]


def huge_page_bytes(tensor: Tensor, smaps: Path = SMAPS) -> int:
    """How many of `tensor`'s bytes the kernel backs with huge pages (AnonHugePages of the
    mappings it lies in, clipped to the tensor). 0 where smaps cannot be read."""
    begin = tensor.data_ptr()
    end = begin + tensor.numel() * tensor.element_size()
    total = 0
    try:
        lines = smaps.read_text().splitlines()
    except OSError:
        return 0
    overlap = 0
    for line in lines:
        head = line.split(maxsplit=1)[0] if line else ""
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(part, 16) for part in head.split("-"))
            overlap = max(0, min(hi, end) - max(lo, begin))
        elif head == "AnonHugePages:" and overlap:
            total += min(overlap, int(line.split()[1]) * 1024)
    return total


@dataclass(frozen=True)
class HugePagePlacement:
    """What `move_to_huge_pages` did: bytes moved into the arena and bytes on huge pages."""

    tensors: int
    bytes_moved: int
    huge_page_bytes: int

    @property
    def share(self) -> float:
        return self.huge_page_bytes / self.bytes_moved if self.bytes_moved else 0.0


def _storage_bytes(tensor: Tensor) -> int:
    return tensor.untyped_storage().nbytes()


def _cpu_tensors(module: nn.Module) -> Iterator[tuple[nn.Module, str, Tensor]]:
    """(owner, attribute, tensor) for every CPU parameter and buffer, small ones too: a norm
    weight left behind on a memory-mapped checkpoint would keep the whole file mapped (and
    its pages resident) beside the arena. A tensor held by two modules comes once per holder."""
    for owner in module.modules():
        for table in (owner._parameters, owner._buffers):
            for name, tensor in table.items():
                if tensor is not None and tensor.device.type == "cpu":
                    yield owner, name, tensor


def _aligned(nbytes: int) -> int:
    return (nbytes + TENSOR_ALIGN_BYTES - 1) // TENSOR_ALIGN_BYTES * TENSOR_ALIGN_BYTES


def move_to_huge_pages(module: nn.Module) -> HugePagePlacement:
    """Move the storages of `module`'s CPU tensors into one huge-page arena, in place.

    Each storage moves whole, and every tensor on it is rebuilt with its own offset, shape and
    strides (column-major views stay column-major, views of a fused weight stay views of it).
    Parameters keep their identity, so tied weights stay tied. An old storage is released once
    its last tensor has moved; while moving, memory holds up to two copies of the weights (a
    checkpoint mapped from disk stays mapped until its last tensor has moved), and afterwards
    one.
    """
    check_huge_pages()
    # Each distinct tensor with every (module, attribute) that holds it.
    holders: dict[int, tuple[Tensor, list[tuple[nn.Module, str]]]] = {}
    for owner, name, tensor in _cpu_tensors(module):
        holders.setdefault(id(tensor), (tensor, []))[1].append((owner, name))
    if not holders:
        return HugePagePlacement(0, 0, 0)
    storages: dict[int, int] = {}  # old storage address -> byte offset in the arena
    total = moved_bytes = 0
    for tensor, _ in holders.values():
        key = tensor.untyped_storage().data_ptr()
        if key not in storages:
            storages[key] = total
            total += _aligned(_storage_bytes(tensor))
            moved_bytes += _storage_bytes(tensor)
    arena = huge_page_buffer(total)
    arena_storage = arena.untyped_storage()
    arena_base = arena.storage_offset()  # bytes from the mapping's start to the 2 MiB boundary
    copied: set[int] = set()
    moved_tensors = len(holders)
    while holders:
        # Popped, so no reference here keeps an old storage alive once its tensors have moved.
        tensor, places = holders.pop(next(iter(holders)))
        old = tensor.untyped_storage()
        offset = storages[old.data_ptr()]
        if old.data_ptr() not in copied:
            arena[offset : offset + old.nbytes()].copy_(torch.empty(0, dtype=torch.uint8).set_(old))
            copied.add(old.data_ptr())
        moved = torch.empty(0, dtype=tensor.dtype).set_(
            arena_storage,
            (arena_base + offset) // tensor.element_size() + tensor.storage_offset(),
            tensor.shape,
            tensor.stride(),
        )
        if isinstance(tensor, nn.Parameter):
            tensor.data = moved  # every module holding this Parameter sees the move
        else:
            for owner, name in places:
                owner._buffers[name] = moved
        del tensor, old
    # The arena also holds alignment padding: count no more huge-page bytes than were moved.
    return HugePagePlacement(moved_tensors, moved_bytes, min(moved_bytes, huge_page_bytes(arena)))
