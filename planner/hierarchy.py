"""Expected time per token of a speculative hierarchy, and the latency-optimal hierarchy.

The procedure (papers.md §2, as pyspec runs it): level 0 drafts ``T_0`` tokens alone (a model: one
pass per token; the n-gram drafter: one lookup); a middle level i repeatedly takes a block from the
level below, verifies it with one pass of its model on ``T_below + 1`` new tokens, gains the accepted
tokens plus one, and stops once it holds at least ``T_i`` tokens, returning exactly ``T_i`` (the
surplus is discarded); the target verifies one block per step.

Assumptions (the model's, not the runtime's): acceptance is i.i.d. per position, with probability
``alpha[j][i]`` that a token of level j is accepted by level i (the tokens a level returns follow
its own model exactly, whatever is below it); a pass's cost depends only on its number of new tokens
(one curve per model, batch size and context bucket); a draft's first pass after a verification
(which also feeds the accepted tokens) costs as a one-token pass; sequences never hit their length
limit. Under these assumptions the expressions below are exact expectations (renewal-reward and
Wald's identity), which the Monte-Carlo simulation :func:`simulate` checks.

With a block of T drafts, a verification gains K tokens, ``P(K = k) = a^(k-1) (1 - a)`` for k <= T and
``P(K = T + 1) = a^T``; ``E[K] = (1 - a^(T+1)) / (1 - a)``. A level that needs T_i tokens runs N
verifications, ``E[N]`` from a recursion over the tokens held. Time per block:
``V_0 = T_0 c_0(1)`` (a model) or ``c_0`` (n-gram); ``V_i = E[N] (V_below + c_i(T_below + 1))``;
the target's time per token is ``(V_top + c_K(T_top + 1)) / E[K]``. Each V_i depends only on the
level below through ``(V_below, T_below)``, so a dynamic program over (model, block size) states in
model order finds the optimum in O(M^2 T^2) states-pairs (times the E[N] recursion).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from planner.latency import CostCurve


@dataclass(frozen=True)
class Candidate:
    """A model that may join a hierarchy: its name, cost curve, and whether it drafts without
    distributions (n-gram: bottom level only, one lookup per block)."""

    name: str
    cost: CostCurve
    lookup: bool = False


@dataclass(frozen=True)
class Hierarchy:
    """Levels bottom to top as ``(candidate index, block size)``; the target verifies the last one.
    Empty: no speculation."""

    levels: tuple[tuple[int, int], ...]
    seconds_per_token: float


def gain_distribution(alpha: float, block: int) -> np.ndarray:
    """``P(K = k)`` for k = 0..block+1 (index 0 is always 0): tokens gained by one verification.

    Example:
        >>> gain_distribution(0.5, 2).tolist()
        [0.0, 0.5, 0.25, 0.25]
    """
    p = np.zeros(block + 2)
    for k in range(1, block + 1):
        p[k] = alpha ** (k - 1) * (1 - alpha)
    p[block + 1] = alpha**block
    return p


def expected_gain(alpha: float, block: int) -> float:
    """``E[K] = (1 - alpha^(block+1)) / (1 - alpha)``, tokens per verification of ``block`` drafts."""
    return float(np.dot(np.arange(block + 2), gain_distribution(alpha, block)))


@lru_cache(maxsize=65536)
def _verification_counts(alpha: float, lower_block: int, max_block: int) -> np.ndarray:
    """``f[t]`` = E[N] to hold t tokens, t = 0..max_block: ``f[t] = 1 + sum_k P(K=k) f[t - k]``,
    ``f[t <= 0] = 0`` (needing t tokens after gaining k is needing t - k from scratch)."""
    p = gain_distribution(alpha, lower_block)[1:]  # P(K = 1..lower_block+1)
    f = np.zeros(max_block + 1)
    for t in range(1, max_block + 1):
        reach = min(t - 1, lower_block + 1)  # gains that leave something still to hold
        f[t] = 1 + float(np.dot(p[:reach], f[t - 1 : t - 1 - reach : -1] if reach else p[:0]))
    return f


def expected_verifications(alpha: float, lower_block: int, block: int) -> float:
    """``E[N]``: verifications of ``lower_block``-token blocks until ``block`` tokens are held.

    Example:
        >>> expected_verifications(0.0, 4, 3)  # nothing accepted: one token per verification
        3.0
        >>> round(expected_verifications(1.0 - 1e-12, 4, 3), 6)  # everything accepted: 5 tokens at once
        1.0
    """
    size = 16
    while size < block:
        size *= 2
    return float(_verification_counts(float(alpha), lower_block, size)[block])


def block_seconds(
    candidates: Sequence[Candidate], alpha: np.ndarray, levels: Sequence[tuple[int, int]]
) -> float:
    """Expected seconds for the top of ``levels`` to produce one block."""
    (m0, t0), v = levels[0], 0.0
    v = candidates[m0].cost(1) if candidates[m0].lookup else t0 * candidates[m0].cost(1)
    for (j, tj), (i, ti) in itertools.pairwise(levels):
        v = expected_verifications(float(alpha[j, i]), tj, ti) * (v + candidates[i].cost(tj + 1))
    return v


def seconds_per_token(
    candidates: Sequence[Candidate], alpha: np.ndarray, target: int, levels: Sequence[tuple[int, int]]
) -> float:
    """Expected seconds per emitted token of the hierarchy ``levels`` (bottom to top) below ``target``.

    Example:
        >>> draft, target = CostCurve.linear(0.01, 0.0), CostCurve.linear(0.1, 0.0)
        >>> cands = [Candidate("draft", draft), Candidate("target", target)]
        >>> alpha = np.array([[1.0, 0.8], [0.0, 1.0]])
        >>> round(seconds_per_token(cands, alpha, 1, [(0, 4)]), 4)  # (4 * 0.01 + 0.1) / E[K]
        0.0416
    """
    if not levels:
        return candidates[target].cost(1)
    j, tj = levels[-1]
    return (block_seconds(candidates, alpha, levels) + candidates[target].cost(tj + 1)) / expected_gain(
        float(alpha[j, target]), tj
    )


def _check(candidates: Sequence[Candidate], alpha: np.ndarray, target: int) -> np.ndarray:
    alpha = np.asarray(alpha, dtype=float)
    m = len(candidates)
    if alpha.shape != (m, m):
        raise ValueError(f"alpha must be [{m}, {m}] for {m} candidates, got {alpha.shape}")
    if ((alpha < 0) | (alpha > 1)).any():
        raise ValueError("acceptance rates must be in [0, 1]")
    if not 0 <= target < m:
        raise ValueError(f"target index {target} out of range")
    return np.minimum(alpha, 1 - 1e-12)  # alpha = 1 makes E[K] grow without bound only as 1 - alpha -> 0


def optimal_hierarchy(
    candidates: Sequence[Candidate], alpha: np.ndarray, target: int, max_block: int = 16
) -> Hierarchy:
    """The hierarchy minimising :func:`seconds_per_token`: which candidates (in index order, all
    below ``target``), with which block sizes (1..``max_block``), or none. Dynamic programming over
    ``(candidate, block size)`` states.

    Example:
        >>> cands = [Candidate("ngram", CostCurve.linear(0.0, 0.0), lookup=True),
        ...          Candidate("draft", CostCurve.linear(0.01, 0.001)),
        ...          Candidate("target", CostCurve.linear(0.1, 0.002))]
        >>> alpha = np.array([[1, .3, .25], [0, 1, .8], [0, 0, 1]])
        >>> optimal_hierarchy(cands, alpha, target=2).levels  # n-gram blocks of 1 under 6-token drafts
        ((0, 1), (1, 6))
    """
    alpha = _check(candidates, alpha, target)
    best: dict[tuple[int, int], tuple[float, tuple[tuple[int, int], ...]]] = {}
    for i in range(target):
        for t in range(1, max_block + 1):
            c = candidates[i]
            options = [(c.cost(1) if c.lookup else t * c.cost(1), ((i, t),))]
            if not c.lookup:
                for (j, tj), (v, levels) in list(best.items()):
                    if j < i:
                        n = expected_verifications(float(alpha[j, i]), tj, t)
                        options.append((n * (v + c.cost(tj + 1)), levels + ((i, t),)))
            best[(i, t)] = min(options, key=lambda o: o[0])
    result = Hierarchy((), candidates[target].cost(1))
    for (j, tj), (v, levels) in best.items():
        per_token = (v + candidates[target].cost(tj + 1)) / expected_gain(float(alpha[j, target]), tj)
        if per_token < result.seconds_per_token:
            result = Hierarchy(levels, per_token)
    return result


def brute_force(
    candidates: Sequence[Candidate], alpha: np.ndarray, target: int, max_block: int = 16
) -> Hierarchy:
    """:func:`optimal_hierarchy` by enumerating every subset and every block size (for tests)."""
    alpha = _check(candidates, alpha, target)
    result = Hierarchy((), candidates[target].cost(1))
    below = [i for i in range(target)]
    for size in range(1, len(below) + 1):
        for chosen in itertools.combinations(below, size):
            if any(candidates[i].lookup for i in chosen[1:]):
                continue
            for blocks in itertools.product(range(1, max_block + 1), repeat=size):
                levels = tuple(zip(chosen, blocks, strict=True))
                s = seconds_per_token(candidates, alpha, target, levels)
                if s < result.seconds_per_token:
                    result = Hierarchy(levels, s)
    return result


def simulate(
    candidates: Sequence[Candidate],
    alpha: np.ndarray,
    target: int,
    levels: Sequence[tuple[int, int]],
    tokens: int = 200_000,
    seed: int = 0,
) -> float:
    """Seconds per token of the procedure itself, simulated with i.i.d. acceptance (Monte Carlo)."""
    alpha = _check(candidates, alpha, target)
    rng = np.random.default_rng(seed)
    chain = list(levels) + [(target, None)]

    def produce(r: int) -> tuple[int, float]:
        """Level r delivers a block: (tokens, seconds)."""
        i, t = chain[r]
        if r == 0:
            return t, candidates[i].cost(1) if candidates[i].lookup else t * candidates[i].cost(1)
        j, tj = chain[r - 1]
        held, seconds = 0, 0.0
        while True:
            got, spent = produce(r - 1)
            seconds += spent + candidates[i].cost(got + 1)
            accepted = 0
            while accepted < got and rng.random() < alpha[j, i]:
                accepted += 1
            held += accepted + 1
            if t is None or held >= t:
                return (held if t is None else t), seconds

    emitted, seconds = 0, 0.0
    while emitted < tokens:
        got, spent = produce(len(chain) - 1) if levels else (1, candidates[target].cost(1))
        emitted, seconds = emitted + got, seconds + spent
    return seconds / emitted
