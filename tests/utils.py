"""Test utilities (not fixtures): random ragged batches over shuffled paged caches, the devices to
test on, a byte-level tokenizer (a second real tokenizer for cross-tokenizer drafts), greedy-choice
comparison under float blur, and total-variation checks for samplers. Fixtures and hooks live in
``conftest.py``; test modules import these with ``from utils import ...`` (pytest puts ``tests/`` on
``sys.path``)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import pyspec.ops  # noqa: F401  (loads the extension)
from pyspec.tree import ancestor_mask, pack_tree_masks

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    ),
]


@dataclass
class Batch:
    """A ragged batch of new tokens over a paged cache whose pages are handed out in shuffled order."""

    k_cache: torch.Tensor  # [num_pages, page_size, kv_heads, head_dim]
    v_cache: torch.Tensor
    q: torch.Tensor  # [T, q_heads, head_dim]
    k: torch.Tensor  # [T, kv_heads, head_dim]
    v: torch.Tensor
    qo_indptr: torch.Tensor  # [B + 1] int32
    page_table: torch.Tensor  # [B, max_pages] int32, -1 past each sequence's pages
    kv_lens: torch.Tensor  # [B] int32
    parents: list[torch.Tensor]  # per sequence, the tree of its new tokens
    tree_mask: torch.Tensor  # packed

    def args(self):
        return self.qo_indptr, self.page_table, self.kv_lens


def random_parents(n: int, gen: torch.Generator, chain: bool = False) -> torch.Tensor:
    """A random tree of n nodes (parents before children), or a chain."""
    if chain or n == 0:
        return torch.arange(-1, n - 1)
    return torch.tensor(
        [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)], dtype=torch.long
    )


def make_batch(
    lens: list[int],
    news: list[int],
    page_size: int = 16,
    kv_heads: int = 2,
    group: int = 2,
    head_dim: int = 64,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    chain: bool = False,
    spare_pages: int = 3,
) -> Batch:
    """Random K/V for the committed prefixes (already in the cache) and for the new tokens (not yet)."""
    gen = torch.Generator().manual_seed(seed)
    need = [-(-(L + n) // page_size) for L, n in zip(lens, news, strict=True)]
    num_pages = sum(need) + spare_pages
    perm = torch.randperm(num_pages, generator=gen).int()
    table = torch.full((len(lens), max(need + [1])), -1, dtype=torch.int32)
    start = 0
    for b, p in enumerate(need):
        table[b, :p] = perm[start : start + p]
        start += p
    shape = (num_pages, page_size, kv_heads, head_dim)
    T = sum(news)

    def rnd(*s):
        return torch.randn(*s, generator=gen).to(dtype)

    parents = [random_parents(n, gen, chain) for n in news]
    batch = Batch(
        k_cache=rnd(*shape),
        v_cache=rnd(*shape),
        q=rnd(T, kv_heads * group, head_dim),
        k=rnd(T, kv_heads, head_dim),
        v=rnd(T, kv_heads, head_dim),
        qo_indptr=torch.tensor([0] + torch.tensor(news).cumsum(0).tolist(), dtype=torch.int32),
        page_table=table,
        kv_lens=torch.tensor(lens, dtype=torch.int32),
        parents=parents,
        tree_mask=pack_tree_masks([ancestor_mask(p) for p in parents]),
    )
    for name, value in vars(batch).items():
        if isinstance(value, torch.Tensor):
            setattr(batch, name, value.to(device))
    return batch


class ByteTokenizer:
    """UTF-8 bytes as token ids (ByT5-style): another tokenizer than SmolLM2's for the same text."""

    class Encoding:
        def __init__(self, ids):
            self.input_ids = ids

    def __call__(self, text, add_special_tokens=False):
        return self.Encoding(list(text.encode()))

    def decode(self, ids, skip_special_tokens=False):
        return bytes(ids).decode(errors="replace")

    def get_vocab(self):
        return {f"<0x{i:02X}>": i for i in range(256)}


BYTES = ByteTokenizer()


def assert_same_greedy_choice(ours: torch.Tensor, exact: torch.Tensor, blur: float) -> None:
    """Where ``exact``'s top token leads the runner-up by more than 2 x ``blur`` (what two correct
    float32 evaluations may differ by), ``ours`` picks it too; rows ``[T, vocab]``. Near-ties may go
    either way on another CPU, so they are not compared; they must be rare for the check to mean much."""
    top2 = exact.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * blur
    assert clear.float().mean() >= 0.9, f"only {clear.float().mean():.0%} of the rows are clear"
    assert torch.equal(ours.argmax(-1)[clear], exact.argmax(-1)[clear])


def total_variation(samples: list, exact: dict) -> float:
    """Total variation between the empirical law of ``samples`` and ``exact`` (outcome -> probability)."""
    counts: dict = {}
    for s in samples:
        counts[s] = counts.get(s, 0) + 1
    keys = set(counts) | set(exact)
    return 0.5 * sum(abs(counts.get(k, 0) / len(samples) - exact.get(k, 0.0)) for k in keys)


def null_total_variations(exact: dict, n: int, sets: int = 400) -> list[float]:
    """Sorted total variations of ``sets`` sets of ``n`` exact draws from ``exact``: what sampling
    exactly gets with ``n`` samples, to bound a sampler's TV (seeded)."""
    keys = list(exact)
    gen = torch.Generator().manual_seed(0)
    probs = torch.tensor([exact[k] for k in keys])
    draws = torch.multinomial(probs, n * sets, replacement=True, generator=gen)
    return sorted(total_variation([keys[i] for i in chunk.tolist()], exact) for chunk in draws.view(sets, n))
