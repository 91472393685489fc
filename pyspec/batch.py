"""The ragged batch of one forward pass: every sequence's new tokens concatenated, no padding."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pyspec.kv_cache import PagedKVCache
from pyspec.tree import ancestor_mask, depths, pack_tree_masks


@dataclass(frozen=True)
class StepBatch:
    """Metadata of one forward pass, built once per step and read by every layer.

    Sequence b owns rows ``qo_indptr[b]:qo_indptr[b + 1]`` of ``tokens``; its new tokens' K/V go to
    slots ``kv_lens[b] + i`` of its pages. A tree's node i sits at position ``kv_lens[b] + depth(i)``.
    """

    seq_ids: tuple[int, ...]  # [B] cache sequence ids
    tokens: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    qo_indptr: torch.Tensor  # [B + 1] int32
    page_table: torch.Tensor  # [B, max_pages] int32
    kv_lens: torch.Tensor  # [B] int32, committed lengths before this step
    tree_mask: torch.Tensor | None  # packed [sum n_b^2] bool, None = causal

    @property
    def num_tokens(self) -> int:
        return self.tokens.numel()

    def last_rows(self) -> torch.Tensor:
        """Index of each sequence's last new token (sequences without new tokens are skipped)."""
        ends = self.qo_indptr[1:].long()
        return (ends - 1)[ends > self.qo_indptr[:-1].long()]

    @classmethod
    def build(
        cls,
        cache: PagedKVCache,
        seq_ids: list[int],
        tokens: list[list[int]],
        parents: list[torch.Tensor] | None = None,
    ) -> StepBatch:
        """Reserves cache room for every sequence's new tokens and lays out the batch.

        ``parents``: per sequence, a parent array making its new tokens a tree (``None``: a chain).
        Reservation is all-or-nothing per sequence: :class:`pyspec.OutOfPagesError` leaves the
        sequences reserved before it usable and no sequence's committed KV changed.

        Example:
            >>> cache = PagedKVCache(num_layers=1, num_pages=4, page_size=4, kv_heads=1, head_dim=8)
            >>> a, b = cache.add_sequence(), cache.add_sequence()
            >>> StepBatch.build(cache, [a, b], [[5, 6, 7], [9]]).qo_indptr.tolist()
            [0, 3, 4]
        """
        if len(tokens) != len(seq_ids):
            raise ValueError(f"{len(seq_ids)} sequences but {len(tokens)} token lists")
        for seq, toks in zip(seq_ids, tokens, strict=True):
            cache.reserve(seq, len(toks))
        page_table, kv_lens = cache.tables(seq_ids)
        counts = [len(t) for t in tokens]
        if parents is None:
            offsets = [torch.arange(n) for n in counts]
            mask = None
        else:
            for p, n in zip(parents, counts, strict=True):
                if p.numel() != n:
                    raise ValueError(f"a tree of {p.numel()} nodes for {n} new tokens")
            offsets = [depths(p) for p in parents]
            mask = pack_tree_masks([ancestor_mask(p) for p in parents])
        device = cache.k.device
        positions = torch.cat(
            [kv_lens[b].cpu().long() + offsets[b] for b in range(len(seq_ids))] or [torch.zeros(0)]
        )
        indptr = torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), dtype=torch.int32)
        flat = [t for toks in tokens for t in toks]
        return cls(
            seq_ids=tuple(seq_ids),
            tokens=torch.tensor(flat, dtype=torch.long, device=device),
            positions=positions.long().to(device),
            qo_indptr=indptr.to(device),
            page_table=page_table,
            kv_lens=kv_lens,
            tree_mask=None if mask is None else mask.to(device),
        )

    def commit(self, cache: PagedKVCache) -> None:
        """Commits every new token (autoregressive decoding: all of them are kept)."""
        for b, seq in enumerate(self.seq_ids):
            cache.commit(seq, int(self.qo_indptr[b + 1] - self.qo_indptr[b]))
