"""The draft-tree shape that minimises time per token (Sequoia-style dynamic programming).

Positional acceptance: ``acceptance[d][r]`` is the probability that the candidate of rank r (0 = the
draft's most likely token) below a node at depth d (the context is depth 0) is the one the target
accepts, given that node was reached; ranks of one node are exclusive, so each row sums to <= 1.
A static tree's expected number of accepted nodes is ``sum_v prod_{u on root..v} acceptance[depth(u)
- 1][rank(u)]`` (docs/papers.md §0), and a step emits that plus one token.

For every node budget n and depth limit D, ``f_D(n)`` is the largest expected number of accepted
nodes of a tree with at most n nodes and depth at most D: a knapsack over the children's ranks,
``G_r(n) = max(G_{r+1}(n), max_s a_r (1 + f(s - 1)) + G_{r+1}(n - s))``, where child r's subtree
holds s nodes and hangs one level deeper. The time per token of a shape with n nodes and depth D is
``(draft_seconds(shape) + target_cost(n + 1)) / (1 + f_D(n))``, priced on the shape the DP builds for
(D, n) (a drafter's cost depends on the nodes per level, which the DP does not track).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from planner.latency import CostCurve


@dataclass(frozen=True)
class TreePlan:
    """A tree shape in breadth-first order (``parents``, ``ranks`` as pyspec's ``TreeShape``), its
    expected accepted nodes per step and predicted seconds per token."""

    parents: tuple[int, ...]
    ranks: tuple[int, ...]
    expected_accepted: float
    seconds_per_token: float


def _acceptance_rows(acceptance: Sequence[Sequence[float]] | Sequence[float], depth: int) -> np.ndarray:
    a = np.asarray(acceptance, dtype=float)
    if a.ndim == 1:
        a = np.tile(a, (depth, 1))
    if a.ndim != 2 or a.shape[0] < depth:
        raise ValueError(f"acceptance must be [ranks] or [depths >= {depth}, ranks], got {a.shape}")
    if (a < 0).any() or (a.sum(1) > 1 + 1e-9).any():
        raise ValueError("acceptance probabilities must be >= 0 and sum to <= 1 over a node's ranks")
    return a[:depth]


def best_forests(acceptance, budget: int, depth: int) -> tuple[np.ndarray, dict]:
    """``f[d, n]``: the best expected accepted nodes below a reached node at depth ``depth - d`` with
    at most n nodes and d more levels (d = 0..depth, n = 0..budget), and the choices to rebuild it.

    Example:
        >>> f, _ = best_forests([0.6, 0.2], budget=3, depth=2)
        >>> [round(float(x), 3) for x in f[2]]  # 1 node: 0.6; 2: a chain, 0.6 + 0.36; 3: + rank 1, 0.2
        [0.0, 0.6, 0.96, 1.16]
    """
    a = _acceptance_rows(acceptance, depth)
    W = a.shape[1]
    f = np.zeros((depth + 1, budget + 1))
    choice = {}  # (d, r, n) -> s nodes for rank r's subtree (0: no child of rank r)
    for d in range(1, depth + 1):
        row = a[depth - d]  # children of a node at depth (depth - d) sit at depth - d + 1
        g = np.zeros(budget + 1)  # G_W = 0
        for r in range(W - 1, -1, -1):
            new = g.copy()
            picks = np.zeros(budget + 1, dtype=int)
            for n in range(1, budget + 1):
                s = np.arange(1, n + 1)
                values = row[r] * (1 + f[d - 1, s - 1]) + g[n - s]
                k = int(np.argmax(values))
                if values[k] > new[n] + 1e-15:
                    new[n], picks[n] = values[k], s[k]
            for n in range(budget + 1):
                choice[(d, r, n)] = int(picks[n])
            g = new
        f[d] = np.maximum.accumulate(g)  # "at most n nodes"
    return f, choice


def _build(choice: dict, W: int, d: int, n: int, parent: int, nodes: list[tuple[int, int, int]]) -> None:
    """Appends (parent, rank, depth-level d) for the best forest of <= n nodes with d levels."""
    for r in range(W):
        s = choice.get((d, r, n), 0)
        if s:
            index = len(nodes)
            nodes.append((parent, r, d))
            _build(choice, W, d - 1, s - 1, index, nodes)
            n -= s


def _breadth_first(nodes: list[tuple[int, int, int]]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    depth = _depths([parent for parent, _, _ in nodes])
    order = sorted(range(len(nodes)), key=lambda i: (depth[i], _path(nodes, i)))
    new = {old: k for k, old in enumerate(order)}
    parents = tuple(-1 if nodes[i][0] < 0 else new[nodes[i][0]] for i in order)
    return parents, tuple(nodes[i][1] for i in order)


def _path(nodes, i) -> tuple[int, ...]:
    out = []
    while i >= 0:
        out.append(nodes[i][1])
        i = nodes[i][0]
    return tuple(reversed(out))


def optimal_tree(
    acceptance,
    target_cost: CostCurve,
    budget: int,
    max_depth: int = 8,
    draft_seconds: Callable[[Sequence[int]], float] = lambda level_sizes: 0.0,
) -> TreePlan:
    """The tree shape (at most ``budget`` nodes, depth at most ``max_depth``) minimising seconds per
    token. ``draft_seconds(level_sizes)`` is the cost of drafting a shape with ``level_sizes[d]``
    nodes at depth d + 1 (pyspec's draft model: one pass per level, pass d feeding the nodes above
    depth d). For each depth limit and node count the DP's most accepting shape is priced; the
    cheapest per token wins.

    Example:
        >>> plan = optimal_tree([0.6, 0.2, 0.1], CostCurve.linear(0.05, 0.002), budget=8)
        >>> len(plan.parents) <= 8, round(plan.expected_accepted, 3)
        (True, 1.846)
    """
    if budget < 0 or max_depth < 1:
        raise ValueError("budget must be >= 0 and max_depth >= 1")
    best = TreePlan((), (), 0.0, target_cost(1))
    W = np.asarray(acceptance, dtype=float).shape[-1]
    for depth in range(1, max_depth + 1):
        f, choice = best_forests(acceptance, budget, depth)
        for n in range(1, budget + 1):
            nodes: list[tuple[int, int, int]] = []
            _build(choice, W, depth, int(np.argmax(f[depth, : n + 1] >= f[depth, n] - 1e-12)), -1, nodes)
            parents, ranks = _breadth_first(nodes)
            if not parents:
                continue
            level_sizes = np.bincount(_depths(parents))[1:].tolist()
            seconds = (draft_seconds(level_sizes) + target_cost(len(parents) + 1)) / (1 + f[depth, n])
            if seconds < best.seconds_per_token - 1e-15:
                best = TreePlan(parents, ranks, float(f[depth, n]), float(seconds))
    return best


def _depths(parents: Sequence[int]) -> list[int]:
    depth: list[int] = []
    for p in parents:
        depth.append(1 if p < 0 else depth[p] + 1)
    return depth


def expected_accepted(parents: Sequence[int], ranks: Sequence[int], acceptance) -> float:
    """Expected accepted nodes of a given tree: ``sum_v prod_{u on root..v} a[depth(u) - 1][rank(u)]``.

    Example:
        >>> expected_accepted([-1, 0], [0, 0], [0.5])  # a chain of two: 0.5 + 0.25
        0.75
    """
    depth, reach = _depths(parents), []
    a = _acceptance_rows(acceptance, max(depth, default=0))
    for i, p in enumerate(parents):
        reach.append((1.0 if p < 0 else reach[p]) * a[depth[i] - 1][ranks[i]])
    return float(sum(reach))
