"""Hierarchical speculative decoding (docs/papers.md §2): a stack of drafts of rising size.

Level 0 drafts on its own (the n-gram drafter or a model drafting autoregressively). A level
0 < i < K is a :class:`HierarchyLevel`: it asks the level below for a block, verifies it with one
pass of its model (exact acceptance, q = the lower level's distributions), appends the accepted
tokens and the recovered or bonus token, and repeats until it holds ``block_size`` tokens; it returns
exactly ``block_size`` of them with its own model's distributions, so the level above verifies them
exactly. Each level keeps its own KV cache and rolls back what the level above rejected
(:meth:`ModelRunner.sync`). Levels of different tokenizers are joined by
:class:`~pyspec.drafters.cross.CrossTokenizerDrafter` (n-gram -> SmolLM2 -> Qwen, say).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F

from pyspec.decoding.verifier import Verifier
from pyspec.drafters.base import Draft, Drafter
from pyspec.drafters.cross import CrossTokenizerDrafter
from pyspec.drafters.hidden_transfer import HeadsDrafter
from pyspec.drafters.model import ModelDrafter, TreeShape
from pyspec.drafters.names import resolve_draft
from pyspec.drafters.ngram import NgramDrafter
from pyspec.drafters.trained import HEADS, load_heads
from pyspec.models.llama import LlamaModel
from pyspec.sampling import SamplingParams
from pyspec.stats import LevelStats


class HierarchyLevel(Drafter):
    """A middle level of a hierarchy: ``model`` verifies ``lower``'s blocks until it holds
    ``block_size`` tokens, and proposes exactly those (the surplus of its last verification is
    dropped: a prefix of exactly distributed tokens is exactly distributed, and blocks of a fixed size
    are what :mod:`planner.hierarchy` models) as a chain; with ``widths``, as a tree: at depth d the
    held token and the ``widths[d] - 1`` next tokens ranked highest by ``model`` there, as
    deterministic candidates (leaves). Both stay exact: after the held token (drawn from the
    model's distribution) is rejected, the residual does not depend on which token it was, and a
    deterministic candidate is exact from any residual.

    Example:
        >>> level = HierarchyLevel(NgramDrafter(4), model.first_layers(10), block_size=6)  # doctest: +SKIP
    """

    def __init__(
        self,
        lower: Drafter,
        model: LlamaModel,
        block_size: int,
        widths: Sequence[int] | None = None,
        name: str | None = None,
    ) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if widths is not None and (not widths or min(widths) < 1):
            raise ValueError(f"widths must be a non-empty list of positive counts, got {widths}")
        label = f"{name or model.name}(block={block_size})"
        super().__init__(label)
        self.lower, self.block_size, self.widths = lower, block_size, list(widths or [])
        self.verifier = Verifier(model, label)
        self.vocab_size = model.config.vocab_size
        self.max_draft = block_size * max(self.widths, default=1)

    def levels(self) -> list[LevelStats]:
        return self.lower.levels() + [self.verifier.stats]

    def begin(self, max_lengths: Sequence[int]) -> None:
        self.lower.begin(max_lengths)
        self.verifier.begin([n + self.lower.max_draft for n in max_lengths])

    def add(self, key: Hashable) -> None:
        self.lower.add(key)
        self.verifier.add(key)

    def release(self, key: Hashable) -> None:
        self.lower.release(key)
        self.verifier.release(key)

    def end(self) -> None:
        self.lower.end()
        self.verifier.end()

    def propose(
        self,
        keys: Sequence[Hashable],
        contexts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator],
        budgets: Sequence[int],
    ) -> list[Draft]:
        held: list[list[int]] = [[] for _ in keys]
        probs: list[list[torch.Tensor]] = [[] for _ in keys]
        alts: list[list[list[int]]] = [[] for _ in keys]
        extra = max(self.widths, default=1) - 1
        want = [min(self.block_size, b) for b in budgets]
        act = [b for b in range(len(keys)) if want[b] > 0]
        while act:
            ctx = [list(contexts[b]) + held[b] for b in act]
            sub = (
                [keys[b] for b in act],
                ctx,
                [params[b] for b in act],
                [generators[b] for b in act],
            )
            drafts = self.lower.propose(*sub, [budgets[b] - len(held[b]) - 1 for b in act])
            results = self.verifier.step(sub[0], ctx, drafts, sub[2], sub[3], alternatives=extra)
            for b, res in zip(act, results, strict=True):
                held[b] += res.tokens
                alts[b] += res.alternatives or [[] for _ in res.tokens]
                if res.probs is not None:
                    probs[b].append(res.probs)
            act = [b for b in act if len(held[b]) < want[b]]
        drafts = []
        for b in range(len(keys)):  # exactly the block: the surplus of the last verification is dropped
            n = want[b]
            q = torch.cat(probs[b])[:n] if probs[b] else None
            drafts.append(
                self._tree(held[b][:n], alts[b][:n], q) if self.widths else Draft.chain(held[b][:n], q)
            )
        return drafts

    def _tree(self, held: list[int], alts: list[list[int]], q: torch.Tensor | None) -> Draft:
        """The held chain with each depth's next-ranked tokens as sibling leaves (held token first)."""
        tokens, parents, rows, parent = [], [], [], -1
        for depth, token in enumerate(held):
            width = self.widths[depth] if depth < len(self.widths) else 1
            node = len(tokens)
            for i, t in enumerate([token] + alts[depth][: width - 1]):
                tokens.append(t)
                parents.append(parent)
                if q is not None:
                    rows.append(q[depth] if i == 0 else F.one_hot(torch.tensor(t), q.shape[1]).to(q.dtype))
            parent = node
        return Draft(tokens, parents, torch.stack(rows) if rows else None)


def same_vocabulary(draft: LlamaModel, target: LlamaModel) -> bool:
    """Whether ``draft`` and ``target`` share one vocabulary (size and token ids)."""
    if draft.config.vocab_size != target.config.vocab_size:
        return False
    dt, tt = draft.tokenizer, target.tokenizer
    return dt is None or tt is None or dt is tt or dt.get_vocab() == tt.get_vocab()


def check_vocabulary(draft: LlamaModel, target: LlamaModel) -> None:
    """Raises ValueError unless ``draft``'s tokens can reach ``target``: one shared vocabulary, or two
    tokenizers to re-tokenize through (:class:`CrossTokenizerDrafter`)."""
    if same_vocabulary(draft, target):
        return
    dn, tn = draft.name, target.name
    if draft.tokenizer is None or target.tokenizer is None:
        raise ValueError(
            f"draft {dn!r} has a vocabulary of {draft.config.vocab_size} tokens but the target {tn!r} has "
            f"{target.config.vocab_size}, and without both tokenizers its drafts cannot be re-tokenized"
        )


def build_stack(
    target: LlamaModel,
    drafts: Sequence[str | LlamaModel],
    block_sizes: Sequence[int] | None = None,
    tree: TreeShape | Sequence[int] | None = None,
    tree_sampling: str = "topk",
) -> Drafter:
    """The drafter feeding ``target``: ``drafts`` bottom to top, models or names
    (:mod:`pyspec.drafters.names`: ``"ngram"`` only at the bottom, ``"early:N"``, ``"draft-lm-1l"``,
    registry models); or ``["medusa"]`` / ``["hidden-transfer"]`` alone, the target's trained heads
    (:class:`HeadsDrafter`, ``tree``: per-depth widths, default a chain).

    ``block_sizes[i]``: tokens level i proposes per request (default 4 each). ``tree``: the top draft
    proposes a tree instead of a chain. A single draft model expands any :class:`TreeShape` (per-depth
    widths ``[3, 2, 1]`` mean :meth:`TreeShape.branching`); the top level of a stack takes widths only,
    its held chain plus ``widths[d] - 1`` sibling candidates at depth d (see :class:`HierarchyLevel`).
    A draft with another tokenizer than the level above it (or the target) has its proposals
    re-tokenized (:class:`CrossTokenizerDrafter`), as chains of deterministic candidates.

    Example:
        >>> build_stack(target, ["ngram", target.first_layers(8)], [4, 6])  # doctest: +SKIP
    """
    if not drafts:
        raise ValueError("no drafts given")
    if any(d in HEADS for d in drafts if isinstance(d, str)):
        if len(drafts) != 1:
            raise ValueError(
                "Medusa heads and hidden transfer draft from the target's own pass: "
                "they are the only draft, not a level of a stack"
            )
        if isinstance(tree, TreeShape):
            raise ValueError("heads take a tree as per-depth widths, e.g. [3, 2, 1]")
        heads = load_heads(target, drafts[0])
        return HeadsDrafter(target, heads, [1] * heads.num_future if tree is None else list(tree))
    drafts = [resolve_draft(target, d) for d in drafts]  # names -> models (but "ngram")
    block_sizes = list(block_sizes) if block_sizes is not None else [4] * len(drafts)
    if len(block_sizes) != len(drafts):
        raise ValueError(f"{len(block_sizes)} block sizes for {len(drafts)} drafts")
    if tree is not None and isinstance(drafts[-1], str):
        raise ValueError("the n-gram drafter proposes chains: a tree needs a draft model at the top")
    if tree is not None and len(drafts) > 1 and isinstance(tree, TreeShape):
        raise ValueError("the top level of a stack takes a tree as per-depth widths, e.g. [3, 2, 1]")
    if tree is not None and len(drafts) == 1 and not isinstance(tree, TreeShape):
        tree = TreeShape.branching(list(tree))
    stack: Drafter | None = None
    below: LlamaModel | None = None  # the model whose ids the stack proposes in (None: n-gram only)
    for level, (draft, block) in enumerate(zip(drafts, block_sizes, strict=True)):
        if isinstance(draft, str):  # "ngram": resolve_draft turned every other name into a model
            if level:
                raise ValueError(
                    "the n-gram drafter has no distributions to verify with: it must be the bottom level"
                )
            stack = NgramDrafter(block)
            continue
        check_vocabulary(draft, target)
        top = level == len(drafts) - 1
        if stack is None:
            stack = ModelDrafter(draft, block, tree if top else None, tree_sampling)
        else:
            if below is not None and not same_vocabulary(below, draft):
                check_vocabulary(below, draft)
                stack = _retokenized(stack, below, draft)
            stack = HierarchyLevel(stack, draft, block, tree if top else None)
        below = draft
    if below is not None and not same_vocabulary(below, target):
        if tree is not None:
            raise ValueError("drafts re-tokenized for the target are chains: no tree with another tokenizer")
        stack = _retokenized(stack, below, target)
    return stack


def _retokenized(stack: Drafter, draft: LlamaModel, verifier: LlamaModel) -> CrossTokenizerDrafter:
    """``stack`` (proposing in ``draft``'s ids) re-tokenized for ``verifier``."""
    return CrossTokenizerDrafter(
        stack, draft.tokenizer, verifier.tokenizer, name=f"retokenize({draft.name}->{verifier.name})"
    )
