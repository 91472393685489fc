"""The weights-free n-gram (prompt lookup) drafter: continue the context as it continued before."""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence

import torch

from pyspec.drafters.base import Draft, Drafter
from pyspec.sampling import SamplingParams


def lookup(context: Sequence[int], block_size: int, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """Tokens that followed the latest earlier occurrence of the context's last n tokens, trying
    n = ``max_ngram`` down to ``min_ngram``; empty when nothing matches.

    Example:
        >>> lookup([1, 2, 3, 4, 9, 2, 3], block_size=2)
        [4, 9]
    """
    ctx = torch.as_tensor(list(context), dtype=torch.long)
    L = ctx.numel()
    for n in range(min(max_ngram, L - 1), min_ngram - 1, -1):
        windows = ctx[: L - 1].unfold(0, n, 1)  # [L - n, n], windows that end before the last token
        hits = (windows == ctx[L - n :]).all(1).nonzero().flatten()
        if hits.numel():
            start = int(hits[-1]) + n
            return ctx[start : start + block_size].tolist()
    return []


class NgramDrafter(Drafter):
    """Prompt lookup over the prompt and the text generated so far; deterministic candidates.

    Example:
        >>> d = NgramDrafter(block_size=3)
        >>> d.propose([0], [[7, 8, 9, 1, 7, 8]], [SamplingParams()], [None], [5])[0].tokens
        [9, 1, 7]
    """

    def __init__(self, block_size: int = 4, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if block_size < 1 or not 1 <= min_ngram <= max_ngram:
            raise ValueError("block_size must be >= 1 and 1 <= min_ngram <= max_ngram")
        super().__init__(f"ngram(block={block_size})")
        self.block_size, self.max_ngram, self.min_ngram = block_size, max_ngram, min_ngram
        self.max_draft = block_size

    def propose(
        self,
        keys: Sequence[Hashable],
        contexts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator],
        budgets: Sequence[int],
    ) -> list[Draft]:
        start = time.perf_counter()
        drafts = [
            Draft.chain(lookup(ctx, min(self.block_size, budget), self.max_ngram, self.min_ngram))
            if budget > 0
            else Draft()
            for ctx, budget in zip(contexts, budgets, strict=True)
        ]
        self.stats.passes += 1
        self.stats.seconds += time.perf_counter() - start
        return drafts
