"""A decoding plan: per batch size, which drafts to stack with which block sizes (or none), from
profiled costs and acceptance; frozen and JSON-serialisable, tied to the hardware it was made on.

A profile (what ``pyspec profile`` measures) is a dict::

    {"hardware": {...}, "dtype": "float32", "target": "smollm2-135m-instruct",
     "candidates": ["ngram", "early:8", ...],            # drafts, cheapest first
     "latency": {"<batch>": {"<name>": {"sizes": [...], "seconds": [...]}}},   # target included
     "alpha": [[...]],                                     # [drafts + target]^2, alpha[j][i]
     "gains": [[[[...]]]], "lookup_lengths": [[...]],      # optional: P(gain k | block T), n-gram lengths
     "tree": {"<draft>": [[...]]}}                         # optional: positional acceptance [depth][rank]

The target's latency is the cost of a whole decoding step (pass, verification, bookkeeping); the
drafts', of a forward pass.

Example:
    >>> profile = {"hardware": {"cpu": "x"}, "dtype": "float32", "target": "t", "candidates": ["ngram"],
    ...            "latency": {"1": {"ngram": {"sizes": [1], "seconds": [0.0001]},
    ...                              "t": {"sizes": [1, 4], "seconds": [0.05, 0.06]}}},
    ...            "alpha": [[1.0, 0.5], [0.0, 1.0]]}
    >>> make_plan(profile, max_block=8).choices["1"].levels
    (('ngram', 8),)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from planner.hierarchy import Candidate, optimal_hierarchy, seconds_per_token
from planner.latency import CostCurve
from planner.tree import expected_accepted, optimal_tree


@dataclass(frozen=True)
class Choice:
    """What to run at one batch size: draft levels bottom to top as ``(name, block size)``; empty
    means plain decoding. ``tree``: the top draft's tree as ``(parents, ranks)`` (breadth-first, as
    pyspec's ``TreeShape``; its block size is then the node count), or None for a chain.
    ``seconds_per_token`` is the prediction for one sequence's token."""

    levels: tuple[tuple[str, int], ...]
    seconds_per_token: float
    no_speculation_seconds: float
    tree: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    @property
    def label(self) -> str:
        """e.g. ``"ngram:3 > early:8:4"``, ``"early:8 tree(6)"`` or ``"autoregressive"``."""
        if not self.levels:
            return "autoregressive"
        if self.tree is not None:
            return f"{self.levels[-1][0]} tree({len(self.tree[0])})"
        return " > ".join(f"{n}:{t}" for n, t in self.levels)


@dataclass(frozen=True)
class Plan:
    """Per batch size, the fastest choice predicted from a profile made on ``hardware``."""

    target: str
    hardware: Mapping = field(default_factory=dict)
    dtype: str = "float32"
    choices: Mapping[str, Choice] = field(default_factory=dict)
    weights: str = (
        "float32"  # the target's exact weight format the costs were measured in ("packed": GGUF blocks)
    )

    def for_batch(self, batch_size: int) -> Choice:
        """The choice for ``batch_size``: the profiled batch size nearest to it (ties: the larger)."""
        sizes = sorted(int(b) for b in self.choices)
        nearest = min(sizes, key=lambda b: (abs(b - batch_size), -b))
        return self.choices[str(nearest)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        d = json.loads(text)
        choices = {
            b: Choice(
                tuple((n, int(t)) for n, t in c["levels"]),
                c["seconds_per_token"],
                c["no_speculation_seconds"],
                None if c.get("tree") is None else (tuple(c["tree"][0]), tuple(c["tree"][1])),
            )
            for b, c in d["choices"].items()
        }
        return cls(
            d["target"],
            d.get("hardware", {}),
            d.get("dtype", "float32"),
            choices,
            d.get("weights", d.get("dtype", "float32")),
        )

    def hardware_mismatch(self, hardware: Mapping) -> list[str]:
        """Keys whose value differs between the plan's hardware and ``hardware`` (empty: same)."""
        return sorted(
            k for k in set(self.hardware) | set(hardware) if self.hardware.get(k) != hardware.get(k)
        )


def _candidates(profile: Mapping, batch: str) -> tuple[list[Candidate], np.ndarray]:
    """The profile's models at one batch size (drafts, then the target) and their acceptance: gain
    tables [m, m, T, T + 1] where measured, else rates [m, m]."""
    names = list(profile["candidates"]) + [profile["target"]]
    m = len(names)
    if "gains" in profile:
        rows = profile["gains"]
        horizon = max(len(rows[j][i]) for j in range(m) for i in range(m)) - 1
        acceptance = np.zeros((m, m, horizon + 1, horizon + 2))
        for j in range(m):
            for i in range(m):
                for t, row in enumerate(rows[j][i]):
                    acceptance[j, i, t, : len(row)] = row
    else:
        acceptance = np.asarray(profile["alpha"], dtype=float)
    if acceptance.shape[:2] != (m, m):
        raise ValueError(f"acceptance is {acceptance.shape} for {m} models")
    curves = profile["latency"][batch]
    missing = [n for n in names if n not in curves]
    if missing:
        raise ValueError(f"batch {batch}: no latency profile for {missing}")
    lengths = profile.get("lookup_lengths")
    candidates = [
        Candidate(
            n,
            CostCurve.from_dict(curves[n]),
            lookup=(n == "ngram"),
            lengths=tuple(tuple(row) for row in lengths) if n == "ngram" and lengths else None,
        )
        for n in names
    ]
    return candidates, acceptance


def _plain_seconds(profile: Mapping, batch: str) -> float:
    """Seconds per token of plain decoding: one target step with one new token."""
    return CostCurve.from_dict(profile["latency"][batch][profile["target"]])(1)


def tree_draft_seconds(cost: CostCurve, level_sizes: Sequence[int]) -> float:
    """Seconds for pyspec's draft model to expand a tree with ``level_sizes[d]`` nodes at depth d + 1:
    one pass over the new context tokens (costed as one token), then pass d feeding the nodes of
    depth <= d at once.

    Example:
        >>> cost = CostCurve.linear(0.01, 0.001)  # c(n) = 0.01 + 0.001 n
        >>> round(tree_draft_seconds(cost, [2, 2]), 6)  # c(1) + c(2)
        0.023
    """
    return cost(1) + sum(cost(int(n)) for n in np.cumsum(level_sizes)[:-1])


def at_context(profile: Mapping, context: int | None) -> Mapping:
    """``profile`` with the latency curves measured after the context length nearest to ``context``
    (None: the profile's default bucket).

    Example:
        >>> p = {"latency": "a", "latency_by_context": {"256": "a", "1024": "b"}}
        >>> at_context(p, 900)["latency"], at_context(p, None)["latency"]
        ('b', 'a')
    """
    buckets = profile.get("latency_by_context")
    if context is None or not buckets:
        return profile
    nearest = min(buckets, key=lambda c: abs(int(c) - context))
    return {**profile, "latency": buckets[nearest]}


def predict(
    profile: Mapping,
    batch_size: int,
    levels: Sequence[tuple[str, int]],
    tree=None,
    context: int | None = None,
) -> float:
    """Predicted seconds per token of one configuration at a profiled batch size: draft levels bottom
    to top as ``(name, block)`` (empty: plain decoding), or a single draft model's ``tree`` as
    ``(parents, ranks)``; ``context``: the committed context length to cost passes at.

    Example:
        >>> profile = {"target": "t", "candidates": ["ngram"], "alpha": [[1.0, 0.5], [0.0, 1.0]],
        ...            "latency": {"1": {"ngram": {"sizes": [1], "seconds": [0.0]},
        ...                              "t": {"sizes": [1, 8], "seconds": [0.05, 0.05]}}}}
        >>> round(predict(profile, 1, [("ngram", 1)]), 4), predict(profile, 1, [])  # 0.05 / 1.5
        (0.0333, 0.05)
    """
    profile = at_context(profile, context)
    if not levels:
        return _plain_seconds(profile, str(batch_size))
    candidates, acceptance = _candidates(profile, str(batch_size))
    index = {c.name: i for i, c in enumerate(candidates)}
    target = len(candidates) - 1
    if tree is not None:
        (name, _), parents, ranks = levels[-1], tree[0], tree[1]
        rows = profile["tree"][name]
        depths = [0] * len(parents)
        for v, p in enumerate(parents):
            depths[v] = 1 if p < 0 else depths[p] + 1
        sizes = np.bincount(depths)[1:].tolist()
        draft = tree_draft_seconds(candidates[index[name]].cost, sizes)
        return (draft + candidates[target].cost(len(parents) + 1)) / (
            1 + expected_accepted(parents, ranks, rows)
        )
    return seconds_per_token(candidates, acceptance, target, [(index[n], t) for n, t in levels])


def make_plan(
    profile: Mapping, max_block: int = 16, tree_budget: int = 32, context: int | None = None
) -> Plan:
    """Per profiled batch size, the fastest of: plain decoding, the optimal chain hierarchy (see
    :func:`planner.hierarchy.optimal_hierarchy`), and for each draft model with positional acceptance
    in the profile, its optimal tree of at most ``tree_budget`` nodes (:func:`planner.tree.optimal_tree`),
    with passes costed at the profiled context length nearest to ``context`` (default: the profile's
    first)."""
    profile = at_context(profile, context)
    choices = {}
    for batch in profile["latency"]:
        candidates, acceptance = _candidates(profile, batch)
        names, target = [c.name for c in candidates], candidates[-1]
        plain = _plain_seconds(profile, batch)
        best = optimal_hierarchy(candidates, acceptance, len(candidates) - 1, max_block, plain)
        choice = Choice(tuple((names[i], t) for i, t in best.levels), best.seconds_per_token, plain)
        for name, rows in profile.get("tree", {}).items():
            draft = candidates[names.index(name)].cost
            tree = optimal_tree(
                rows, target.cost, tree_budget, len(rows), lambda sizes, c=draft: tree_draft_seconds(c, sizes)
            )
            if tree.parents and tree.seconds_per_token < choice.seconds_per_token:
                choice = Choice(
                    ((name, len(tree.parents)),), tree.seconds_per_token, plain, (tree.parents, tree.ranks)
                )
        choices[str(batch)] = choice
    return Plan(
        profile["target"],
        dict(profile.get("hardware", {})),
        profile.get("dtype", "float32"),
        choices,
        profile.get("weights", profile.get("dtype", "float32")),
    )
