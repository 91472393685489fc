"""A draft model (same vocabulary as its verifier) proposing a chain or a static token tree.

Chains are drafted autoregressively, one pass per token. A tree of depth D is expanded in D passes:
pass 1 feeds the new context tokens and scores the root; pass d feeds the tree's nodes of depth
< d at once (tree attention, uncommitted) and scores the nodes of depth d - 1 whose children come
next. Children are the top-ranked tokens of their parent's distribution (deterministic candidates)
or, with ``tree_sampling="sample"``, independent draws from it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from pyspec.drafters.base import Draft, Drafter
from pyspec.kv_cache import PAGE_SIZE
from pyspec.model_runner import ModelRunner, pages_needed
from pyspec.models.llama import LlamaModel
from pyspec.sampling import SamplingParams, probabilities


@dataclass(frozen=True)
class TreeShape:
    """A static draft tree in breadth-first order: ``parents[i]`` (-1 below the context) and
    ``ranks[i]``, which of its parent's candidates node i takes (0 = the most likely).

    Example:
        >>> shape = TreeShape.from_paths([(0,), (1,), (0, 0), (0, 1), (0, 0, 0)])
        >>> shape.parents, shape.ranks, shape.depths
        ((-1, -1, 0, 0, 2), (0, 1, 0, 1, 0), (1, 1, 2, 2, 3))
    """

    parents: tuple[int, ...]
    ranks: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.parents) != len(self.ranks) or not self.parents:
            raise ValueError("a tree shape needs at least one node, and one rank per node")
        depth = -1
        for i, p in enumerate(self.parents):
            if not -1 <= p < i:
                raise ValueError(f"node {i} has parent {p}; parents must come before their children")
            d = self.depths[i]
            if d < depth:
                raise ValueError("nodes must be in breadth-first order (depths never decrease)")
            depth = d

    @property
    def depths(self) -> tuple[int, ...]:
        """Depth of every node; nodes right below the context have depth 1."""
        out: list[int] = []
        for p in self.parents:
            out.append(1 if p < 0 else out[p] + 1)
        return tuple(out)

    @property
    def max_depth(self) -> int:
        return max(self.depths)

    @classmethod
    def from_paths(cls, paths: Sequence[Sequence[int]]) -> TreeShape:
        """From rank paths (Medusa's format): ``(0, 1)`` is the second candidate after the first."""
        paths = sorted({tuple(p) for p in paths}, key=lambda p: (len(p), p))
        index = {p: i for i, p in enumerate(paths)}
        for p in paths:
            if not p or (len(p) > 1 and p[:-1] not in index) or min(p) < 0:
                raise ValueError(f"path {p} is empty, negative or lacks its parent path {p[:-1]}")
        return cls(tuple(index[p[:-1]] if len(p) > 1 else -1 for p in paths), tuple(p[-1] for p in paths))

    @classmethod
    def from_parents(cls, parents: Sequence[int]) -> TreeShape:
        """From a parent array; a node's rank is its order among its siblings."""
        paths: list[tuple[int, ...]] = []
        for i, p in enumerate(parents):
            if not -1 <= p < i:
                raise ValueError(f"node {i} has parent {p}; parents must come before their children")
            rank = sum(1 for j in range(i) if parents[j] == p)
            paths.append((paths[p] if p >= 0 else ()) + (rank,))
        return cls.from_paths(paths)

    @classmethod
    def branching(cls, widths: Sequence[int]) -> TreeShape:
        """Every node at depth d has ``widths[d]`` children (``[1] * n`` is a chain of n).

        Example:
            >>> len(TreeShape.branching([3, 2, 1]).parents)  # 3 + 6 + 6
            15
        """
        paths, level = [], [()]
        for w in widths:
            level = [p + (r,) for p in level for r in range(w)]
            paths += level
        return cls.from_paths(paths)

    @classmethod
    def chain(cls, n: int) -> TreeShape:
        return cls.branching([1] * n)

    def size_within(self, depth: int) -> int:
        """Number of nodes of depth <= ``depth`` (a prefix, by breadth-first order)."""
        return sum(1 for d in self.depths if d <= depth)


class ModelDrafter(Drafter):
    """Drafts with a model that shares its verifier's vocabulary: a chain of ``block_size`` tokens,
    or the tree ``tree`` (a :class:`TreeShape`).

    Example:
        >>> draft = load_model("smollm2-135m-instruct").first_layers(8)  # doctest: +SKIP
        >>> ModelDrafter(draft, block_size=4)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: LlamaModel,
        block_size: int = 4,
        tree: TreeShape | None = None,
        tree_sampling: str = "topk",
        name: str | None = None,
    ) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if tree_sampling not in ("topk", "sample"):
            raise ValueError(f"tree_sampling must be 'topk' or 'sample', got {tree_sampling!r}")
        label = name or model.name
        super().__init__(
            f"{label}({'tree' if tree else 'block'}={len(tree.parents) if tree else block_size})"
        )
        self.model, self.block_size, self.tree, self.tree_sampling = model, block_size, tree, tree_sampling
        self.vocab_size = model.config.vocab_size
        self.max_draft = len(tree.parents) if tree else block_size
        self.runner: ModelRunner | None = None

    def begin(self, max_lengths: Sequence[int]) -> None:
        super().begin(max_lengths)
        tree_room = self.max_draft  # uncommitted tree nodes past the context
        pages = pages_needed([n + tree_room for n in max_lengths], PAGE_SIZE)
        self.runner = ModelRunner(self.model, pages, PAGE_SIZE)

    def add(self, key: Hashable) -> None:
        self.runner.add(key)

    def release(self, key: Hashable) -> None:
        self.runner.release(key)

    def end(self) -> None:
        self.runner = None

    def propose(
        self,
        keys: Sequence[Hashable],
        contexts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator],
        budgets: Sequence[int],
    ) -> list[Draft]:
        passes, seconds = self.runner.passes, self.runner.seconds
        if self.tree is None:
            drafts = self._chain(keys, contexts, params, generators, budgets)
        else:
            drafts = self._tree(keys, contexts, params, generators, budgets)
        self.stats.passes += self.runner.passes - passes
        self.stats.seconds += self.runner.seconds - seconds
        return drafts

    def _chain(self, keys, contexts, params, generators, budgets) -> list[Draft]:
        tokens: list[list[int]] = [[] for _ in keys]
        qs: list[list[torch.Tensor]] = [[] for _ in keys]
        lengths = [min(self.block_size, b) for b in budgets]
        for _ in range(max(lengths, default=0)):
            act = [b for b in range(len(keys)) if len(tokens[b]) < lengths[b]]
            feeds = [self.runner.sync(keys[b], list(contexts[b]) + tokens[b]) for b in act]
            logits = self.runner.run(
                [keys[b] for b in act], feeds, [None] * len(act), [[len(f) - 1] for f in feeds]
            )
            self.runner.keep([keys[b] for b in act], [range(len(f)) for f in feeds])
            for b, row in zip(act, logits, strict=True):
                if params[b].greedy:
                    tokens[b].append(int(row[0].argmax()))
                else:
                    q = probabilities(row[0], params[b])
                    tokens[b].append(int(torch.multinomial(q, 1, generator=generators[b])))
                    qs[b].append(q)
        return [Draft.chain(t, torch.stack(q) if q else None) for t, q in zip(tokens, qs, strict=True)]

    def _tree(self, keys, contexts, params, generators, budgets) -> list[Draft]:
        shape = self.tree
        sizes = [shape.size_within(b) for b in budgets]
        tokens = [[0] * n for n in sizes]
        qs = [[None] * n for n in sizes]
        sampled = [self.tree_sampling == "sample" and not p.greedy for p in params]
        children = [[i for i, p in enumerate(shape.parents) if p == v] for v in range(-1, len(shape.parents))]
        for depth in range(1, shape.max_depth + 1):
            act = [b for b in range(len(keys)) if sizes[b] >= shape.size_within(depth - 1) + 1]
            if not act:
                break
            if depth == 1:
                feeds = [self.runner.sync(keys[b], contexts[b]) for b in act]
                parents = [None] * len(act)
                scored = [[-1] for _ in act]  # the context
                rows = [[len(f) - 1] for f in feeds]
            else:
                n = shape.size_within(depth - 1)
                feeds = [tokens[b][:n] for b in act]
                parents = [torch.tensor(shape.parents[:n]) for _ in act]
                scored = [
                    [v for v in range(n) if shape.depths[v] == depth - 1 and children[v + 1]] for _ in act
                ]
                rows = scored
            logits = self.runner.run([keys[b] for b in act], feeds, parents, rows)
            self.runner.keep([keys[b] for b in act], [range(len(f)) if depth == 1 else [] for f in feeds])
            for b, nodes, row_logits in zip(act, scored, logits, strict=True):
                for v, logit in zip(nodes, row_logits, strict=True):
                    kids = [c for c in children[v + 1] if c < sizes[b]]
                    if not kids:
                        continue
                    if params[b].greedy or not sampled[b]:
                        score = logit if params[b].greedy else probabilities(logit, params[b])
                        ranked = score.topk(max(shape.ranks[c] for c in kids) + 1).indices.tolist()
                        for c in kids:
                            tokens[b][c] = ranked[shape.ranks[c]]
                    else:
                        q = probabilities(logit, params[b])
                        draws = torch.multinomial(q, len(kids), replacement=True, generator=generators[b])
                        for c, t in zip(kids, draws.tolist(), strict=True):
                            tokens[b][c], qs[b][c] = t, q
        drafts = []
        for b, n in enumerate(sizes):
            q = torch.stack(qs[b]) if sampled[b] and n else None
            drafts.append(Draft(tokens[b], list(shape.parents[:n]), q))
        return drafts
