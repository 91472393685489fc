"""Which drafter a batch step runs, chosen by how many sequences are running (a plan's per-batch choice).

Speculation pays at low concurrency and stops paying when the batch is large enough that the
target's pass is compute-bound; a :class:`DraftPolicy` holds one drafter (or none: plain decoding)
per batch size and :class:`~pyspec.decoding.engine.BatchEngine` asks it every step. Switching is
lossless: every drafter re-syncs its caches to a sequence's context before it proposes, and the
target verifies whatever was proposed.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspec.drafters.base import Drafter


class DraftPolicy:
    """``choices[i]``: the drafter for ``i + 1`` running sequences (None: plain decoding); the last one
    also serves larger batches. ``labels[i]`` names it (default: the drafter's level names).

    Example:
        >>> policy = DraftPolicy([ngram, ngram, None])  # doctest: +SKIP
        >>> policy.for_batch(1) is ngram, policy.for_batch(8) is None  # doctest: +SKIP
        (True, True)
    """

    def __init__(self, choices: Sequence[Drafter | None], labels: Sequence[str] | None = None) -> None:
        if not choices:
            raise ValueError("a draft policy needs a choice for batch size 1 at least")
        if labels is not None and len(labels) != len(choices):
            raise ValueError(f"{len(labels)} labels for {len(choices)} choices")
        self.choices = list(choices)
        self.labels = list(labels) if labels is not None else [_label(d) for d in choices]

    @classmethod
    def fixed(cls, drafter: Drafter | None) -> DraftPolicy:
        """The same drafter (or plain decoding) at every batch size."""
        return cls([drafter])

    def for_batch(self, batch_size: int) -> Drafter | None:
        return self.choices[min(batch_size, len(self.choices)) - 1]

    def label(self, batch_size: int) -> str:
        return self.labels[min(batch_size, len(self.labels)) - 1]

    @property
    def drafters(self) -> list[Drafter]:
        """The distinct drafters, in order of first use."""
        out: list[Drafter] = []
        for d in self.choices:
            if d is not None and all(d is not o for o in out):
                out.append(d)
        return out

    @property
    def max_draft(self) -> int:
        return max((d.max_draft for d in self.drafters), default=0)


def _label(drafter: Drafter | None) -> str:
    if drafter is None:
        return "autoregressive"
    return " > ".join(level.name for level in drafter.levels())
