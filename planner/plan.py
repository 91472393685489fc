"""A decoding plan: per batch size, which drafts to stack with which block sizes (or none), from
profiled costs and acceptance; frozen and JSON-serialisable, tied to the hardware it was made on.

A profile (what ``pyspec profile`` measures) is a dict::

    {"hardware": {...}, "dtype": "float32", "target": "smollm2-135m-instruct",
     "candidates": ["ngram", "early:8", ...],            # drafts, cheapest first
     "latency": {"<batch>": {"<name>": {"sizes": [...], "seconds": [...]}}},   # target included
     "alpha": [[...]]}                                     # [drafts + target]^2, alpha[j][i]

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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from planner.hierarchy import Candidate, optimal_hierarchy
from planner.latency import CostCurve


@dataclass(frozen=True)
class Choice:
    """What to run at one batch size: draft levels bottom to top as ``(name, block size)``; empty
    means plain decoding. ``seconds_per_token`` is the prediction for one sequence's token."""

    levels: tuple[tuple[str, int], ...]
    seconds_per_token: float
    no_speculation_seconds: float


@dataclass(frozen=True)
class Plan:
    """Per batch size, the fastest choice predicted from a profile made on ``hardware``."""

    target: str
    hardware: Mapping = field(default_factory=dict)
    dtype: str = "float32"
    choices: Mapping[str, Choice] = field(default_factory=dict)

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
            )
            for b, c in d["choices"].items()
        }
        return cls(d["target"], d.get("hardware", {}), d.get("dtype", "float32"), choices)

    def hardware_mismatch(self, hardware: Mapping) -> list[str]:
        """Keys whose value differs between the plan's hardware and ``hardware`` (empty: same)."""
        return sorted(
            k for k in set(self.hardware) | set(hardware) if self.hardware.get(k) != hardware.get(k)
        )


def make_plan(profile: Mapping, max_block: int = 16) -> Plan:
    """The optimal hierarchy per profiled batch size (see :func:`planner.hierarchy.optimal_hierarchy`)."""
    names = list(profile["candidates"]) + [profile["target"]]
    alpha = np.asarray(profile["alpha"], dtype=float)
    if alpha.shape != (len(names), len(names)):
        raise ValueError(f"alpha is {alpha.shape} for {len(names)} models")
    choices = {}
    for batch, curves in profile["latency"].items():
        missing = [n for n in names if n not in curves]
        if missing:
            raise ValueError(f"batch {batch}: no latency profile for {missing}")
        candidates = [Candidate(n, CostCurve.from_dict(curves[n]), lookup=(n == "ngram")) for n in names]
        best = optimal_hierarchy(candidates, alpha, len(names) - 1, max_block)
        choices[str(batch)] = Choice(
            tuple((names[i], t) for i, t in best.levels), best.seconds_per_token, candidates[-1].cost(1)
        )
    return Plan(
        profile["target"], dict(profile.get("hardware", {})), profile.get("dtype", "float32"), choices
    )
