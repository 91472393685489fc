"""Expected time per token of a speculative hierarchy, and the latency-optimal hierarchy.

The procedure (docs/papers.md §2, as pyspec runs it): level 0 drafts ``T_0`` tokens alone (a model: one
pass per token; the n-gram drafter: one lookup); a middle level i repeatedly takes a block from the
level below, verifies it with one pass of its model on ``T_below + 1`` new tokens, gains the accepted
tokens plus one, and stops once it holds at least ``T_i`` tokens, returning exactly ``T_i`` (the
surplus is discarded); the target verifies one block per step.

Assumptions (the model's, not the runtime's): the gains of successive verifications are
independent, each drawn from a distribution per pair of levels and block size: from an i.i.d. rate
``alpha[j][i]`` (a token of level j accepted by level i) or from a measured gain table (the profile
replays steps along real texts, which captures bursty acceptance such as prompt lookup's); the
tokens a level returns follow its own model exactly, whatever is below it, so a table is a property
of the pair. A pass's cost depends only on its number of new tokens (one curve per model, batch size
and context bucket); a draft's first pass after a verification (which also feeds the accepted
tokens) costs as a one-token pass; sequences never hit their length limit. Under these assumptions
the expressions below are exact expectations (renewal-reward and Wald's identity), which the
Monte-Carlo simulation :func:`simulate` checks.

With a block of T drafts, a verification gains K tokens; i.i.d., ``P(K = k) = a^(k-1) (1 - a)`` for
k <= T and ``P(K = T + 1) = a^T``, ``E[K] = (1 - a^(T+1)) / (1 - a)``. A level that needs T_i tokens
runs N verifications, ``E[N]`` from a recursion over the tokens held. Time per block:
``V_0 = T_0 c_0(1)`` (a model) or ``c_0`` (n-gram); ``V_i = E[N] (V_below + E[c_i(L_below + 1)])``
(L: the block's length, T_below but for a lookup's short proposals); the target's time per token is
``(V_top + E[c_K(L_top + 1)]) / E[K]``. Each V_i depends only on the level below through
``(V_below, T_below)``, so a dynamic program over (model, block size) states in model order finds the
optimum in O(M^2 T^2) state pairs (times the E[N] recursion).
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
    distributions (n-gram: bottom level only, one lookup per block). ``lengths``: for a lookup, the
    measured distribution of its proposal length, ``lengths[T][l] = P(proposes l tokens | asked for
    T)`` (None: always a full block), so that verifying its short proposals costs what they cost."""

    name: str
    cost: CostCurve
    lookup: bool = False
    lengths: tuple[tuple[float, ...], ...] | None = None


@dataclass(frozen=True)
class Hierarchy:
    """Levels bottom to top as ``(candidate index, block size)``; the target verifies the last one.
    Empty: no speculation."""

    levels: tuple[tuple[int, int], ...]
    seconds_per_token: float


def gain_distribution(acceptance: float | np.ndarray, block: int) -> np.ndarray:
    """``P(K = k)`` for k = 0..block+1 (index 0 is always 0): tokens gained by one verification of
    ``block`` drafts. ``acceptance``: an i.i.d. rate alpha (``P(K = k) = alpha^(k-1) (1 - alpha)``,
    ``P(K = block + 1) = alpha^block``) or a measured table whose row T is ``P(K = k)`` for blocks
    of T (see :func:`gain_table`).

    Example:
        >>> gain_distribution(0.5, 2).tolist()
        [0.0, 0.5, 0.25, 0.25]
    """
    a = np.asarray(acceptance, dtype=float)
    if a.ndim == 2:
        if block >= a.shape[0]:
            raise ValueError(f"gains were measured for blocks up to {a.shape[0] - 1}, not {block}")
        return a[block, : block + 2]
    alpha, p = float(a), np.zeros(block + 2)
    p[1 : block + 1] = alpha ** np.arange(block) * (1 - alpha)
    p[block + 1] = alpha**block
    return p


def gain_table(survival: float | Sequence[float], max_block: int) -> np.ndarray:
    """``[max_block + 1, max_block + 2]``: row T is ``P(K = k)`` for a block of T drafts when a run
    of at least k accepted tokens has probability ``survival[k]`` (a rate alpha: ``alpha^k``).

    Example:
        >>> gain_table([1.0, 0.6, 0.3], 2)[2].tolist()  # K = 1, 2, 3 with 0.4, 0.3, 0.3
        [0.0, 0.4, 0.3, 0.3]
    """
    if np.ndim(survival) == 0:
        s = float(survival) ** np.arange(max_block + 1)
    else:
        s = np.asarray(survival, dtype=float)[: max_block + 1]
        if len(s) <= max_block or abs(s[0] - 1) > 1e-9 or (np.diff(s) > 1e-12).any() or s[-1] < 0:
            raise ValueError(f"a run survival starts at 1, never rises, and covers 0..{max_block}")
    table = np.zeros((max_block + 1, max_block + 2))
    table[0, 1] = 1.0
    for t in range(1, max_block + 1):
        table[t, 1 : t + 1] = s[:t] - s[1 : t + 1]
        table[t, t + 1] = s[t]
    return table


def expected_gain(acceptance: float | np.ndarray, block: int) -> float:
    """``E[K]``, tokens per verification of ``block`` drafts (i.i.d.:
    ``(1 - alpha^(block+1)) / (1 - alpha)``)."""
    return float(np.dot(np.arange(block + 2), gain_distribution(acceptance, block)))


@lru_cache(maxsize=65536)
def _verification_counts(gains: tuple[float, ...], max_block: int) -> np.ndarray:
    """``f[t]`` = E[N] to hold t tokens, t = 0..max_block, with ``gains[k] = P(K = k)``:
    ``f[t] = 1 + sum_k P(K=k) f[t - k]``, ``f[t <= 0] = 0`` (needing t tokens after gaining k is
    needing t - k from scratch)."""
    p = np.asarray(gains[1:])  # P(K = 1..lower_block+1)
    f = np.zeros(max_block + 1)
    for t in range(1, max_block + 1):
        reach = min(t - 1, len(p))  # gains that leave something still to hold
        f[t] = 1 + float(np.dot(p[:reach], f[t - 1 : t - 1 - reach : -1] if reach else p[:0]))
    return f


def expected_verifications(acceptance: float | np.ndarray, lower_block: int, block: int) -> float:
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
    gains = tuple(gain_distribution(acceptance, lower_block).tolist())
    return float(_verification_counts(gains, size)[block])


def verify_seconds(lower: Candidate, block: int, cost: CostCurve) -> float:
    """Expected seconds of one verification pass over a block from ``lower`` (``block`` drafts plus
    the verifier's own next token); a lookup's shorter proposals cost what they cost."""
    if lower.lengths is None:
        return cost(block + 1)
    if block >= len(lower.lengths):
        raise ValueError(f"proposal lengths were measured for blocks up to {len(lower.lengths) - 1}")
    weights = lower.lengths[block][: block + 1]  # P(l tokens), l = 0..block: l + 1 new tokens
    return float(sum(w * cost(n + 1) for n, w in enumerate(weights) if w > 0))


def block_seconds(
    candidates: Sequence[Candidate], alpha: np.ndarray, levels: Sequence[tuple[int, int]]
) -> float:
    """Expected seconds for the top of ``levels`` to produce one block (``alpha``: [m, m] rates or
    [m, m, T, T + 1] gain tables)."""
    (m0, t0), v = levels[0], 0.0
    v = candidates[m0].cost(1) if candidates[m0].lookup else t0 * candidates[m0].cost(1)
    for (j, tj), (i, ti) in itertools.pairwise(levels):
        n = expected_verifications(alpha[j, i], tj, ti)
        v = n * (v + verify_seconds(candidates[j], tj, candidates[i].cost))
    return v


def seconds_per_token(
    candidates: Sequence[Candidate], alpha: np.ndarray, target: int, levels: Sequence[tuple[int, int]]
) -> float:
    """Expected seconds per emitted token of the hierarchy ``levels`` (bottom to top) below ``target``.
    ``alpha[j, i]``: the rate at which level i accepts tokens of level j, or the measured distribution
    of its gains per block size (``alpha`` then [m, m, k]).

    Example:
        >>> draft, target = CostCurve.linear(0.01, 0.0), CostCurve.linear(0.1, 0.0)
        >>> cands = [Candidate("draft", draft), Candidate("target", target)]
        >>> alpha = np.array([[1.0, 0.8], [0.0, 1.0]])
        >>> round(seconds_per_token(cands, alpha, 1, [(0, 4)]), 4)  # (4 * 0.01 + 0.1) / E[K]
        0.0416
    """
    alpha = np.asarray(alpha, dtype=float)
    if not levels:
        return candidates[target].cost(1)
    j, tj = levels[-1]
    seconds = block_seconds(candidates, alpha, levels) + verify_seconds(
        candidates[j], tj, candidates[target].cost
    )
    return seconds / expected_gain(alpha[j, target], tj)


def _check(candidates: Sequence[Candidate], alpha: np.ndarray, target: int) -> np.ndarray:
    alpha = np.asarray(alpha, dtype=float)
    m = len(candidates)
    if alpha.shape[:2] != (m, m) or alpha.ndim not in (2, 4):
        raise ValueError(
            f"alpha must be [{m}, {m}] (rates) or [{m}, {m}, T, T + 1] (gain tables), got {alpha.shape}"
        )
    if ((alpha < 0) | (alpha > 1)).any():
        raise ValueError("acceptance rates must be in [0, 1]")
    if not 0 <= target < m:
        raise ValueError(f"target index {target} out of range")
    if alpha.ndim == 4:
        sums = alpha[:, :, 1:].sum(-1)
        upper = np.triu(np.ones((m, m), dtype=bool), 1)
        if (abs(sums[upper] - 1) > 1e-6).any():
            raise ValueError("each row of a gain table must be a distribution (sum to 1)")
    return alpha


def optimal_hierarchy(
    candidates: Sequence[Candidate],
    alpha: np.ndarray,
    target: int,
    max_block: int = 16,
    plain_seconds: float | None = None,
) -> Hierarchy:
    """The hierarchy minimising :func:`seconds_per_token`: which candidates (in index order, all
    below ``target``), with which block sizes (1..``max_block``), or none (costing
    ``plain_seconds`` per token, default one target pass). Dynamic programming over
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
    size = max(16, max_block)
    counts = {}  # (j, i, T_j) -> E[N] for every block of level i

    def verifications(j: int, i: int, tj: int, t: int) -> float:
        if (j, i, tj) not in counts:
            gains = tuple(gain_distribution(alpha[j, i], tj).tolist())
            counts[(j, i, tj)] = _verification_counts(gains, size)
        return float(counts[(j, i, tj)][t])

    best: dict[tuple[int, int], tuple[float, tuple[tuple[int, int], ...]]] = {}
    for i in range(target):
        c = candidates[i]
        verify = {(j, tj): verify_seconds(candidates[j], tj, c.cost) for (j, tj) in best}
        for t in range(1, max_block + 1):
            options = [(c.cost(1) if c.lookup else t * c.cost(1), ((i, t),))]
            if not c.lookup:
                for (j, tj), (v, levels) in list(best.items()):
                    if j < i:
                        options.append(
                            (verifications(j, i, tj, t) * (v + verify[(j, tj)]), levels + ((i, t),))
                        )
            best[(i, t)] = min(options, key=lambda o: o[0])
    result = Hierarchy((), candidates[target].cost(1) if plain_seconds is None else plain_seconds)
    for (j, tj), (v, levels) in best.items():
        seconds = v + verify_seconds(candidates[j], tj, candidates[target].cost)
        per_token = seconds / expected_gain(alpha[j, target], tj)
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
    """Seconds per token of the procedure itself, simulated (Monte Carlo): each verification's gain
    drawn from ``alpha`` (rates or gain tables), a lookup's proposal length from its ``lengths``."""
    alpha = _check(candidates, alpha, target)
    rng = np.random.default_rng(seed)
    chain = list(levels) + [(target, None)]

    def cumulative(p) -> np.ndarray:
        c = np.cumsum(p)
        return c / c[-1]

    pairs = list(itertools.pairwise(chain))
    gains = {(j, i): cumulative(gain_distribution(alpha[j, i], tj)) for (j, tj), (i, _) in pairs}
    c0 = candidates[chain[0][0]]
    short = None if c0.lengths is None else cumulative(c0.lengths[chain[0][1]][: chain[0][1] + 1])

    def draw(c: np.ndarray) -> int:
        return int(np.searchsorted(c, rng.random(), side="right"))

    def produce(r: int) -> tuple[int, float]:
        """Level r delivers a block: (tokens proposed, seconds)."""
        i, t = chain[r]
        if r == 0:
            c = candidates[i]
            if not c.lookup:
                return t, t * c.cost(1)
            return (t if short is None else draw(short)), c.cost(1)
        j, tj = chain[r - 1]
        held, seconds = 0, 0.0
        while True:
            got, spent = produce(r - 1)
            seconds += spent + candidates[i].cost(got + 1)
            held += draw(gains[(j, i)])
            if t is None or held >= t:
                return (held if t is None else t), seconds

    emitted, seconds = 0, 0.0
    while emitted < tokens:
        got, spent = produce(len(chain) - 1) if levels else (1, candidates[target].cost(1))
        emitted, seconds = emitted + got, seconds + spent
    return seconds / emitted
