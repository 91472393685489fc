"""The drafter interface: per sequence, propose a token tree below the last context token.

A drafter is created once and reused; :meth:`Drafter.begin` sets up its per-generation state (KV
caches sized for the sequences) and :meth:`Drafter.end` drops it. Hidden-transfer layers and
Medusa-style heads fit the same interface: they declare :attr:`Drafter.target_states`, and the
decoding core passes them the states the target's last pass left (``propose(..., target_states=)``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from pyspec.model_runner import TargetStates
from pyspec.sampling import SamplingParams
from pyspec.stats import LevelStats


@dataclass
class Draft:
    """One sequence's proposal: ``tokens[i]`` with parent ``parents[i]`` (-1: follows the context).

    ``q [n, vocab]``: the distribution each token was drawn from (after the sequence's sampling
    parameters), for exact speculative sampling; ``None`` when the tokens are deterministic candidates
    (top-k, n-gram), verified with q = one-hot. A chain has ``parents == [-1, 0, 1, ...]``.
    """

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    q: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def chain(cls, tokens: Sequence[int], q: torch.Tensor | None = None) -> Draft:
        """A chain of tokens.

        Example:
            >>> Draft.chain([5, 6, 7]).parents
            [-1, 0, 1]
        """
        return cls(list(tokens), list(range(-1, len(tokens) - 1)), q)


class Drafter(ABC):
    """Proposes draft trees for a batch of sequences identified by hashable keys."""

    #: vocabulary size the drafter's token ids live in; None when it copies context tokens (n-gram)
    vocab_size: int | None = None
    #: the most tokens one proposal can hold (sizes the KV caches of the levels above)
    max_draft: int = 0
    #: what this drafter reads from the pass of the target verifying it (None: nothing); then
    #: :meth:`propose` takes ``target_states``: per sequence, ``(context length, states)`` as that
    #: pass left them at the sequence's last token, or None (no pass yet, or another context)
    target_states: TargetStates | None = None

    def __init__(self, name: str) -> None:
        self.stats = LevelStats(name)

    def levels(self) -> list[LevelStats]:
        """Statistics of this drafter and of the drafters below it, bottom first."""
        return [self.stats]

    def begin(self, max_lengths: Sequence[int]) -> None:
        """Prepares a generation of sequences of at most these lengths (prompt, output and drafts)."""
        self.stats = LevelStats(self.stats.name)

    def add(self, key: Hashable) -> None:  # noqa: B027  (stateless drafters need nothing)
        """A sequence joins."""

    def release(self, key: Hashable) -> None:  # noqa: B027
        """A sequence leaves."""

    def end(self) -> None:  # noqa: B027
        """Frees per-generation state."""

    @abstractmethod
    def propose(
        self,
        keys: Sequence[Hashable],
        contexts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator],
        budgets: Sequence[int],
    ) -> list[Draft]:
        """Drafts for every sequence: a tree of depth at most ``budgets[b]`` below ``contexts[b]``."""
