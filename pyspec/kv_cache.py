"""Paged KV cache: page pools for every layer, per-sequence page tables, reference-counted forks.

A sequence owns an ordered list of pages and a committed length. :meth:`PagedKVCache.fork` gives a
new sequence the parent's page list (no KV copied; reference counts go up). Before any write,
:meth:`PagedKVCache.reserve` makes every page the write touches private: a shared page is copied
first (copy-on-write), and missing pages are allocated. Running out of pages raises
:class:`OutOfPagesError` and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pyspec import ops

PAGE_SIZE = 16  # KV slots per page: the one page size every decoding loop and draft cache uses


class OutOfPagesError(RuntimeError):
    """The cache has too few free pages for a request; no sequence was changed."""


@dataclass
class _Sequence:
    pages: list[int] = field(default_factory=list)
    length: int = 0  # committed KV slots


class PagedKVCache:
    """K/V pools ``[num_layers, num_pages, page_size, kv_heads, head_dim]`` and the sequences in them.

    Example:
        >>> cache = PagedKVCache(num_layers=2, num_pages=8, page_size=4, kv_heads=1, head_dim=8)
        >>> a = cache.add_sequence(); cache.reserve(a, 6); cache.commit(a, 6)
        >>> b = cache.fork(a)              # shares a's two pages
        >>> cache.reserve(b, 1)            # b's first write copies the shared, partly filled page
        >>> cache.stats()["used_pages"], cache.stats()["shared_pages"]
        (3, 1)
    """

    def __init__(
        self,
        num_layers: int,
        num_pages: int,
        page_size: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if min(num_layers, num_pages, page_size, kv_heads, head_dim) <= 0:
            raise ValueError("all cache dimensions must be positive")
        shape = (num_layers, num_pages, page_size, kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.page_size = page_size
        self._layers = list(zip(self.k.unbind(0), self.v.unbind(0), strict=True))  # views, made once
        self._refcount = [0] * num_pages
        self._free = list(range(num_pages - 1, -1, -1))  # pop() hands out low pages first
        self._seqs: dict[int, _Sequence] = {}
        self._next_id = 0

    # Sequences -------------------------------------------------------------------------------------

    def add_sequence(self) -> int:
        """Registers an empty sequence and returns its id."""
        self._next_id += 1
        self._seqs[self._next_id] = _Sequence()
        return self._next_id

    def fork(self, parent: int) -> int:
        """New sequence sharing ``parent``'s committed prefix pages (page-table copy, no KV copy)."""
        src = self._seq(parent)
        pages = src.pages[: self._pages_for(src.length)]
        for p in pages:
            self._refcount[p] += 1
        child = self.add_sequence()
        self._seqs[child] = _Sequence(list(pages), src.length)
        return child

    def release(self, seq: int) -> None:
        """Drops a sequence; its pages return to the pool once no other sequence shares them."""
        for p in self._seqs.pop(self._check_id(seq)).pages:
            self._decref(p)

    def length(self, seq: int) -> int:
        """Committed length of a sequence."""
        return self._seq(seq).length

    # Writes ----------------------------------------------------------------------------------------

    def reserve(self, seq: int, num_new: int) -> None:
        """Makes slots ``[length, length + num_new)`` writable: allocates missing pages and copies
        shared ones. All-or-nothing: raises :class:`OutOfPagesError` without changing anything."""
        s = self._seq(seq)
        first, end = s.length // self.page_size, self._pages_for(s.length + num_new)
        shared = [i for i in range(first, min(end, len(s.pages))) if self._refcount[s.pages[i]] > 1]
        missing = max(0, end - len(s.pages))
        if missing + len(shared) > len(self._free):
            raise OutOfPagesError(
                f"sequence {seq} needs {missing + len(shared)} free pages for {num_new} new tokens "
                f"({missing} new, {len(shared)} copy-on-write) but only {len(self._free)} are free"
            )
        if shared:
            new_pages = [self._alloc() for _ in shared]
            ops.copy_pages(self.k, self.v, self._index([s.pages[i] for i in shared]), self._index(new_pages))
            for i, p in zip(shared, new_pages, strict=True):
                self._decref(s.pages[i])
                s.pages[i] = p
        s.pages.extend(self._alloc() for _ in range(missing))

    def commit(self, seq: int, num_tokens: int) -> None:
        """Marks ``num_tokens`` more slots as committed (they must have been reserved)."""
        s = self._seq(seq)
        if num_tokens < 0 or self._pages_for(s.length + num_tokens) > len(s.pages):
            raise ValueError(f"cannot commit {num_tokens} tokens to sequence {seq}: reserve them first")
        s.length += num_tokens

    def set_length(self, seq: int, length: int) -> None:
        """Sets the committed length (e.g. after :func:`pyspec.ops.kv_compact` updated ``kv_lens``)."""
        s = self._seq(seq)
        if length < 0 or self._pages_for(length) > len(s.pages):
            raise ValueError(f"length {length} of sequence {seq} is not covered by its pages")
        s.length = length

    def rollback(self, seq: int, length: int) -> None:
        """Shrinks a sequence to ``length`` slots and frees the pages past it."""
        s = self._seq(seq)
        if not 0 <= length <= s.length:
            raise ValueError(f"rollback length {length} must be within [0, {s.length}]")
        keep = self._pages_for(length)
        for p in s.pages[keep:]:
            self._decref(p)
        del s.pages[keep:]
        s.length = length

    # Views for the ops ------------------------------------------------------------------------------

    def tables(self, seqs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(page_table [B, max_pages], kv_lens [B])`` int32 on the cache's device, for the ops."""
        rows = [self._seq(s).pages for s in seqs]
        width = max([len(r) for r in rows] + [1])
        table = torch.full((len(seqs), width), -1, dtype=torch.int32)
        for b, r in enumerate(rows):
            table[b, : len(r)] = torch.tensor(r, dtype=torch.int32)
        lens = torch.tensor([self._seq(s).length for s in seqs], dtype=torch.int32)
        return table.to(self.k.device), lens.to(self.k.device)

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(k, v)`` pools ``[num_pages, page_size, kv_heads, head_dim]`` of each layer (views)."""
        return self._layers

    def stats(self) -> dict[str, int]:
        """Page usage: total, used, free and shared (referenced by more than one sequence) pages."""
        used = sum(1 for c in self._refcount if c > 0)
        return {
            "total_pages": len(self._refcount),
            "used_pages": used,
            "free_pages": len(self._free),
            "shared_pages": sum(1 for c in self._refcount if c > 1),
            "sequences": len(self._seqs),
        }

    # Internals -------------------------------------------------------------------------------------

    def _pages_for(self, length: int) -> int:
        return -(-length // self.page_size)

    def _check_id(self, seq: int) -> int:
        if seq not in self._seqs:
            raise KeyError(f"unknown sequence id {seq}")
        return seq

    def _seq(self, seq: int) -> _Sequence:
        return self._seqs[self._check_id(seq)]

    def _alloc(self) -> int:
        p = self._free.pop()
        self._refcount[p] = 1
        return p

    def _decref(self, page: int) -> None:
        self._refcount[page] -= 1
        if self._refcount[page] == 0:
            self._free.append(page)

    def _index(self, pages: list[int]) -> torch.Tensor:
        return torch.tensor(pages, dtype=torch.int32, device=self.k.device)
