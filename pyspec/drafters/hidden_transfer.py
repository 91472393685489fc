"""Drafting from the target's own pass: Medusa heads and hidden transfer (docs/papers.md §1).

The target's verification pass also computes what the next step drafts from, so no separate draft
pass runs. :class:`HeadsDrafter` declares :class:`~pyspec.model_runner.TargetStates` for it:

- Medusa heads read each scored row's final state; the heads run on the state of the row that drew
  the step's last token (the verifier returns it, :attr:`~pyspec.decoding.verifier.Verified.states`);
- hidden transfer: the layers below t run the real tokens only; then the transfer layers map each
  scored row's state to k *pseudo* states that run through the layers from t on beside the real
  tokens, uncommitted (:meth:`pyspec.model_runner.ModelRunner.score`); the verifier returns the
  pseudo states of the row that drew the step's last token.

The decoding core hands those states back to :meth:`HeadsDrafter.propose` at the next step, which
scores them with the target's head over the heads' shortlist and proposes a static tree (Medusa's
format: depth d takes the ``widths[d - 1]`` best tokens of future step d) of deterministic
candidates, so greedy output is the target's and sampled output follows the target's distribution
(q = one-hot, docs/papers.md §0). This works in every loop: generate, the batch engine, APAR.

Example:
    >>> drafter = HeadsDrafter(target, FutureHeads.load(path), widths=[3, 2, 1])  # doctest: +SKIP
    >>> generate_speculative(target, [ids], drafter)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from pyspec.drafters.base import Draft, Drafter
from pyspec.drafters.heads import FutureHeads, HiddenTransfer
from pyspec.drafters.model import TreeShape
from pyspec.model_runner import TargetStates
from pyspec.models.llama import LlamaModel
from pyspec.sampling import SamplingParams


class HeadsDrafter(Drafter):
    """Proposes, per sequence, the tree ``widths`` from the heads' distributions at the states the
    target's last pass left (an empty draft before the first pass or when the context moved elsewhere).

    ``widths[d]``: candidates at depth d + 1, the best of future step d + 1; every node of depth d has
    the same children (Medusa's cartesian tree). Example: ``[3, 1, 1]`` is 3 + 3 + 3 nodes.

    Example:
        >>> HeadsDrafter(target, load_heads(target, "medusa"), widths=[3, 1, 1]).max_draft  # doctest: +SKIP
        9
    """

    def __init__(
        self,
        target: LlamaModel,
        heads: FutureHeads,
        widths: Sequence[int] = (1, 1, 1),
        name: str | None = None,
    ) -> None:
        widths = list(widths)
        if not widths or min(widths) < 1 or len(widths) > heads.num_future:
            raise ValueError(f"widths must be 1..{heads.num_future} positive counts, got {widths}")
        if heads.hidden_size != target.config.hidden_size:
            raise ValueError(
                f"heads of hidden size {heads.hidden_size} for a model of {target.config.hidden_size}"
            )
        super().__init__(name or f"{heads.kind}(k={heads.num_future}, widths={widths})")
        device = target.embed_tokens.device
        self.heads, self.widths = heads.to(device), widths
        self.shape = TreeShape.branching(widths)
        self.max_draft = len(self.shape.parents)
        self.vocab_size = target.config.vocab_size
        short_head = target.head_weight[heads.shortlist.to(device)]
        # [V', hidden]; a packed head's rows widened (exactly): the heads' scores are a dense product
        self.short_head = short_head.dequantize() if target.packed else short_head.contiguous()
        if isinstance(heads, HiddenTransfer):
            self.target_states = TargetStates(self.heads, heads.layer, heads.num_future)
        else:
            self.target_states = TargetStates()

    def propose(
        self,
        keys: Sequence[Hashable],
        contexts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator],
        budgets: Sequence[int],
        target_states: Sequence[tuple[int, torch.Tensor] | None] | None = None,
    ) -> list[Draft]:
        if target_states is None:
            raise ValueError("HeadsDrafter drafts from the target's pass: it needs target_states")
        drafts = []
        shape, short = self.shape, self.heads.shortlist
        for ctx, budget, entry in zip(contexts, budgets, target_states, strict=True):
            n = shape.size_within(budget)
            if entry is None or entry[0] != len(ctx) or n == 0:
                drafts.append(Draft())
                continue
            with torch.inference_mode():
                states = entry[1] if isinstance(self.heads, HiddenTransfer) else self.heads(entry[1][None])[0]
                logits = (states @ self.short_head.T).float()  # [k, V']
            ranked = [short[logits[d].topk(w).indices].tolist() for d, w in enumerate(self.widths)]
            tokens = [ranked[d - 1][r] for d, r in zip(shape.depths[:n], shape.ranks[:n], strict=True)]
            drafts.append(Draft(tokens, list(shape.parents[:n])))
        return drafts
