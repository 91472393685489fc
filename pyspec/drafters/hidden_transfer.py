"""Drafting from the target's own pass: Medusa heads and hidden transfer (docs/papers.md §1).

The target's verification pass also computes the next step's drafts, so no separate draft pass runs:

- :class:`FutureHeadsRunner` replaces the target's :class:`~pyspec.model_runner.ModelRunner`. For
  every row the verifier scores (the context's last token and each draft node), it computes the heads'
  distributions of the tokens 2..k+1 positions ahead. Medusa heads read the row's final state. For
  hidden transfer, the layers below t run the real tokens only; then the transfer layers map each
  scored row's state to k *pseudo* states, which join as a chain of nodes below that row in the tree
  mask (they attend to the context, the row's ancestors and each other; nothing attends to them), and
  the layers from t on, the final norm and the shortlisted head run them with the real tokens. Pseudo
  nodes sit after the real ones and are never kept, so their K/V is never committed (the cache rolls
  back past them), and the real rows' logits are exactly those of a pass without them.
- When the verifier keeps a path, the runner keeps the distributions of its last node: they are the
  drafts for the step after the recovered or bonus token.
- :class:`HeadsDrafter` turns them into a static tree (Medusa's format: depth d takes the
  ``widths[d - 1]`` best tokens of future step d) of deterministic candidates, so greedy output is
  the target's and sampled output follows the target's distribution (q = one-hot, docs/papers.md §0).

Example:
    >>> drafter = HeadsDrafter(FutureHeads.load(path), widths=[3, 2, 1])  # doctest: +SKIP
    >>> generate_speculative(target, [ids], drafter)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence

import torch

from pyspec.batch import StepBatch
from pyspec.drafters.base import Draft, Drafter
from pyspec.drafters.heads import FutureHeads, HiddenTransfer
from pyspec.drafters.model import TreeShape
from pyspec.model_runner import ModelRunner, pages_needed
from pyspec.models.llama import LlamaModel
from pyspec.ops import rms_norm
from pyspec.sampling import SamplingParams


class FutureHeadsRunner(ModelRunner):
    """The target's runner when ``heads`` draft: every pass also scores the heads at the rows asked
    for, and :meth:`keep` leaves the last kept row's distributions in :attr:`candidates`."""

    def __init__(self, model: LlamaModel, heads: FutureHeads, num_pages: int, page_size: int = 16) -> None:
        if heads.hidden_size != model.config.hidden_size:
            raise ValueError(
                f"heads of hidden size {heads.hidden_size} for a model of {model.config.hidden_size}"
            )
        if isinstance(heads, HiddenTransfer) and not 1 <= heads.layer < model.config.num_layers:
            raise ValueError(
                f"hidden transfer at layer {heads.layer} for a model of {model.config.num_layers}"
            )
        super().__init__(model, num_pages, page_size)
        self.heads = heads.to(model.embed_tokens.device)
        short_head = model.head_weight[heads.shortlist.to(model.embed_tokens.device)]
        # [V', D]; a packed head's rows widened (exactly): the heads' scores are a dense product
        self.short_head = short_head.dequantize() if model.packed else short_head.contiguous()
        self.candidates: dict[Hashable, tuple[int, torch.Tensor]] = {}  # key -> (context length, [k, V'])
        self._scored: dict[Hashable, dict[int, torch.Tensor]] = {}

    def release(self, key: Hashable) -> None:
        super().release(key)
        self.candidates.pop(key, None)
        self._scored.pop(key, None)

    def run(self, keys, new_tokens, parents, rows):
        start = time.perf_counter()
        seqs = [self._seq[key] for key in keys]
        chains = (
            None
            if all(p is None for p in parents)
            else [
                torch.arange(-1, len(t) - 1) if p is None else p
                for t, p in zip(new_tokens, parents, strict=True)
            ]
        )
        real = StepBatch.build(self.cache, seqs, [list(t) for t in new_tokens], parents=chains)
        offsets = real.qo_indptr[:-1].tolist()
        flat = torch.tensor(
            [offsets[b] + r for b, rs in enumerate(rows) for r in rs], device=real.tokens.device
        )
        with torch.inference_mode():
            if isinstance(self.heads, HiddenTransfer):
                final, states = self._forward_transfer(seqs, new_tokens, chains, rows, real, flat)
                logits = self.model.head(final).float()
            else:
                out = self.model(real, self.cache, logits_rows=flat, hidden_layers=(-1,))
                logits, states = out.logits.float(), self.heads(out.hidden[-1][flat])  # [R, k, D]
            head_logits = (states @ self.short_head.T).float()  # [R, k, V']
        i = 0
        for key, toks, rs in zip(keys, new_tokens, rows, strict=True):
            self._fed[key] = list(toks)
            self._scored[key] = {r: head_logits[i + j] for j, r in enumerate(rs)}
            i += len(rs)
        self.passes += 1
        self.seconds += time.perf_counter() - start
        return list(logits.split([len(r) for r in rows]))

    def _forward_transfer(self, seqs, new_tokens, chains, rows, real: StepBatch, flat: torch.Tensor):
        """Layers below t run the real tokens only; then k pseudo nodes per scored row join (a chain
        below the row, after the sequence's real nodes) and the rest of the layers run both.
        Returns the scored rows' final states ``[R, D]`` and their pseudo nodes' ``[R, k, D]``."""
        m, k, t = self.model, self.heads.num_future, self.heads.layer
        feeds, trees = [], []
        for b, (toks, rs) in enumerate(zip(new_tokens, rows, strict=True)):
            n = len(toks)
            tree = torch.arange(-1, n - 1) if chains is None else chains[b]
            below = [[r] + [n + j * k + i for i in range(k - 1)] for j, r in enumerate(rs)]
            trees.append(torch.cat([tree, torch.tensor([p for c in below for p in c], dtype=torch.long)]))
            feeds.append(list(toks) + [0] * (k * len(rs)))
        full = StepBatch.build(self.cache, seqs, feeds, parents=trees)  # same slots for the real nodes
        starts = full.qo_indptr[:-1].tolist()
        device = real.tokens.device
        to_full = torch.tensor(
            [starts[b] + j for b, toks in enumerate(new_tokens) for j in range(len(toks))], device=device
        )
        pseudo = torch.tensor(
            [starts[b] + len(new_tokens[b]) + j for b, rs in enumerate(rows) for j in range(k * len(rs))],
            device=device,
        )
        x = m.run_layers(real, self.cache, m.embed(real.tokens), stop=t)[0]
        y = x.new_zeros(full.num_tokens, x.shape[1])
        y[to_full] = x
        y[pseudo] = self.heads(x[flat]).reshape(-1, x.shape[1])
        x = rms_norm(m.run_layers(full, self.cache, y, start=t)[0], m.norm, m.config.rms_norm_eps)
        return x[to_full[flat]], x[pseudo].view(len(flat), k, -1)

    def keep(self, keys, kept):
        for key, idx in zip(keys, kept, strict=True):
            scored = self._scored.pop(key, {})
            last = list(idx)[-1] if len(idx) else None
            if last in scored:  # the next context is the kept tokens plus the verifier's next token
                self.candidates[key] = (len(self._cached[key]) + len(idx) + 1, scored[last])
            else:
                self.candidates.pop(key, None)
        super().keep(keys, kept)


class HeadsDrafter(Drafter):
    """Proposes, per sequence, the tree ``widths`` from the heads' distributions left by the target's
    last pass (an empty draft before the first pass or when the context moved elsewhere).

    ``widths[d]``: candidates at depth d + 1, the best of future step d + 1; every node of depth d has
    the same children (Medusa's cartesian tree). Example: ``[3, 1, 1]`` is 3 + 3 + 3 nodes."""

    def __init__(
        self, heads: FutureHeads, widths: Sequence[int] = (1, 1, 1), name: str | None = None
    ) -> None:
        widths = list(widths)
        if not widths or min(widths) < 1 or len(widths) > heads.num_future:
            raise ValueError(f"widths must be 1..{heads.num_future} positive counts, got {widths}")
        super().__init__(name or f"{heads.kind}(k={heads.num_future}, widths={widths})")
        self.heads, self.widths = heads, widths
        self.shape = TreeShape.branching(widths)
        self.max_draft = len(self.shape.parents)
        self.runner: FutureHeadsRunner | None = None

    def target_runner(self, model: LlamaModel, max_lengths: Sequence[int]) -> ModelRunner:
        """The runner the target's verifier uses: it computes this drafter's distributions. Hidden
        transfer needs room for k uncommitted pseudo nodes per scored row."""
        scratch = (
            self.heads.num_future * (self.max_draft + 1) if isinstance(self.heads, HiddenTransfer) else 0
        )
        self.runner = FutureHeadsRunner(
            model, self.heads, pages_needed([n + scratch for n in max_lengths], 16)
        )
        self.vocab_size = model.config.vocab_size
        return self.runner

    def propose(
        self,
        keys: Sequence[Hashable],
        contexts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator],
        budgets: Sequence[int],
    ) -> list[Draft]:
        if self.runner is None:
            raise RuntimeError("HeadsDrafter drafts from the target's pass: use it with generate_speculative")
        drafts = []
        shape, short = self.shape, self.heads.shortlist
        for key, ctx, budget in zip(keys, contexts, budgets, strict=True):
            entry = self.runner.candidates.get(key)
            n = shape.size_within(budget)
            if entry is None or entry[0] != len(ctx) or n == 0:
                drafts.append(Draft())
                continue
            logits = entry[1]  # [k, V']
            ranked = [short[logits[d].topk(w).indices].tolist() for d, w in enumerate(self.widths)]
            tokens = [ranked[d - 1][r] for d, r in zip(shape.depths[:n], shape.ranks[:n], strict=True)]
            drafts.append(Draft(tokens, list(shape.parents[:n])))
        return drafts
