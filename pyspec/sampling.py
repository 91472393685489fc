"""Sampling parameters and the token distribution they define (the same for targets and drafts).

Temperature, then top-k, then top-p (nucleus) are applied to the logits; temperature 0 is greedy
(argmax, ties broken towards the lower token id as ``torch.argmax`` does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How a sequence picks its next token.

    Example:
        >>> SamplingParams(temperature=0.7, top_p=0.9, seed=1).greedy
        False
        >>> SamplingParams(top_p=0)
        Traceback (most recent call last):
        ...
        ValueError: top_p must be in (0, 1], got 0
    """

    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = no top-k cut
    top_p: float = 1.0  # 1 = no nucleus cut
    seed: int | None = None  # per-sequence generator seed (None: from torch's global generator)

    def __post_init__(self) -> None:
        if not (
            isinstance(self.temperature, (int, float))
            and math.isfinite(self.temperature)
            and self.temperature >= 0
        ):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self) -> torch.Generator:
        """A CPU generator for this sequence, seeded from ``seed`` (or from torch's global generator)."""
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, (1,)))
        return torch.Generator().manual_seed(seed)


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution ``params`` samples from: ``[..., vocab]`` logits -> fp32 probabilities.

    Greedy gives a one-hot on the argmax.

    Example:
        >>> probabilities(torch.tensor([[0.0, 1.0, 2.0]]), SamplingParams(temperature=1.0, top_k=2))
        tensor([[0.0000, 0.2689, 0.7311]])
    """
    logits = logits.float()
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = logits.topk(params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above
        drop_sorted = before >= params.top_p  # keep the smallest top set whose mass reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from ``[vocab]`` logits: the argmax when greedy, else a draw with ``generator``."""
    if params.greedy:
        return int(logits.argmax())
    probs = probabilities(logits, params)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))
