"""The planner's cost model and optimisers (pure Python, random instances; no model needed)."""

import dataclasses
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.hierarchy import (
    Candidate,
    brute_force,
    expected_gain,
    gain_table,
    optimal_hierarchy,
    seconds_per_token,
    simulate,
)
from planner.latency import CostCurve
from planner.tree import expected_accepted, optimal_tree


def random_instance(rng: np.random.Generator, m: int, max_size: int = 40):
    """m candidates of rising cost with uneven cost curves (and sometimes an n-gram at the bottom),
    and acceptance rates that fall with the distance between models."""
    candidates = []
    for i in range(m):
        lookup = i == 0 and rng.random() < 0.4
        base = 2e-4 if lookup else 1e-3 * 3**i * rng.uniform(0.5, 1.5)
        growth = rng.uniform(0.0, 0.3)
        table = {n: base * (1 + growth * (n - 1) ** rng.uniform(0.5, 1.2)) for n in range(1, max_size + 1)}
        candidates.append(Candidate(f"m{i}", CostCurve.from_measurements(table), lookup=lookup))
    alpha = np.eye(m)
    for i in range(m):
        for j in range(i + 1, m):
            alpha[i, j] = rng.uniform(0.2, 0.95) ** (j - i)
    return candidates, alpha


def test_dynamic_program_equals_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(200):
        m = int(rng.integers(2, 6))
        candidates, alpha = random_instance(rng, m)
        block = 4 if m == 5 else 6
        dp = optimal_hierarchy(candidates, alpha, m - 1, max_block=block)
        bf = brute_force(candidates, alpha, m - 1, max_block=block)
        assert dp.levels == bf.levels, trial
        assert dp.seconds_per_token == pytest.approx(bf.seconds_per_token, rel=1e-12)


def test_ten_models_with_blocks_up_to_32_plan_in_seconds():
    candidates, alpha = random_instance(np.random.default_rng(1), 10)
    start = time.perf_counter()
    plan = optimal_hierarchy(candidates, alpha, 9, max_block=32)
    assert time.perf_counter() - start < 5.0  # ~0.2 s on a 2-core EPYC: a margin for busier machines
    assert plan.seconds_per_token <= candidates[9].cost(1)


def test_expected_latency_agrees_with_monte_carlo():
    """The closed form against a simulation of the procedure itself, within 2%."""
    rng = np.random.default_rng(2)
    for trial in range(10):
        m = int(rng.integers(2, 5))
        candidates, alpha = random_instance(rng, m)
        chosen = sorted(rng.choice(m - 1, size=int(rng.integers(1, m)), replace=False).tolist())
        chosen = [c for c in chosen if c == chosen[0] or not candidates[c].lookup]
        levels = [(c, int(rng.integers(1, 7))) for c in chosen]
        formula = seconds_per_token(candidates, alpha, m - 1, levels)
        simulated = simulate(candidates, alpha, m - 1, levels, tokens=30_000, seed=trial)
        assert simulated == pytest.approx(formula, rel=0.02), (trial, levels)


def correlated_instance(rng: np.random.Generator, m: int, max_block: int = 8):
    """As :func:`random_instance`, with measured-style gain tables (acceptance that rises along a
    run, as prompt lookup's does) and a lookup that often proposes fewer tokens than asked."""
    candidates, alpha = random_instance(rng, m)
    tables = np.zeros((m, m, max_block + 1, max_block + 2))
    for j in range(m):
        for i in range(j + 1, m):
            rates = np.minimum(alpha[j, i] * np.linspace(1.0, rng.uniform(1.0, 1.6), max_block), 0.98)
            tables[j, i] = gain_table(np.concatenate([[1.0], np.cumprod(rates)]), max_block)
    if candidates[0].lookup:
        lengths = []
        for t in range(max_block + 1):
            p = rng.dirichlet(np.ones(t + 1))
            lengths.append(tuple(p.tolist()))
        candidates[0] = dataclasses.replace(candidates[0], lengths=tuple(lengths))
    return candidates, tables


def test_gain_tables_and_short_lookups_agree_with_monte_carlo_and_brute_force():
    rng = np.random.default_rng(3)
    for trial in range(60):
        m = int(rng.integers(2, 5))
        candidates, runs = correlated_instance(rng, m)
        dp = optimal_hierarchy(candidates, runs, m - 1, max_block=5)
        bf = brute_force(candidates, runs, m - 1, max_block=5)
        assert dp.levels == bf.levels and dp.seconds_per_token == pytest.approx(bf.seconds_per_token)
        if trial < 8 and dp.levels:
            simulated = simulate(candidates, runs, m - 1, dp.levels, tokens=30_000, seed=trial)
            assert simulated == pytest.approx(dp.seconds_per_token, rel=0.02), (trial, dp.levels)


def test_a_lookup_that_proposes_little_is_charged_little():
    target = CostCurve.linear(0.05, 0.01)
    always = Candidate("ngram", CostCurve.linear(1e-4, 0.0), lookup=True)
    rarely = dataclasses.replace(
        always, lengths=tuple((0.75,) + (0.0,) * (t - 1) + (0.25,) for t in range(1, 6))
    )
    rarely = dataclasses.replace(rarely, lengths=((1.0,),) + rarely.lengths)  # asked for 4: 0 or 4 tokens
    alpha = np.array([[1.0, 0.5], [0.0, 1.0]])
    full = seconds_per_token([always, Candidate("t", target)], alpha, 1, [(0, 4)])
    short = seconds_per_token([rarely, Candidate("t", target)], alpha, 1, [(0, 4)])
    assert full == pytest.approx((1e-4 + target(5)) / expected_gain(0.5, 4))
    assert short < full


def test_no_speculation_when_drafts_do_not_pay():
    slow = CostCurve.linear(0.2, 0.0)
    candidates = [Candidate("draft", slow), Candidate("target", CostCurve.linear(0.1, 0.01))]
    plan = optimal_hierarchy(candidates, np.array([[1.0, 0.5], [0.0, 1.0]]), 1)
    assert plan.levels == () and plan.seconds_per_token == pytest.approx(0.11)


def test_measured_cheap_sizes_are_used():
    """Qwen2.5-Coder-1.5B on 2 cores: 3 new tokens cost barely more than 1, 4 cost twice as much."""
    target = CostCurve.from_measurements({1: 0.251, 2: 0.27, 3: 0.289, 4: 0.499, 8: 0.55, 16: 0.633})
    candidates = [Candidate("ngram", CostCurve.linear(0.0005, 0.0), lookup=True), Candidate("qwen", target)]
    plan = optimal_hierarchy(candidates, np.array([[1.0, 0.6], [0.0, 1.0]]), 1, max_block=16)
    assert plan.levels == ((0, 2),)  # verify 3 tokens (2 drafts + 1), not 4


def test_bad_inputs():
    c = [Candidate("a", CostCurve.linear(0.01, 0.0)), Candidate("b", CostCurve.linear(0.1, 0.0))]
    with pytest.raises(ValueError, match="alpha must be"):
        optimal_hierarchy(c, np.eye(3), 1)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        optimal_hierarchy(c, np.array([[1, 1.5], [0, 1]]), 1)
    with pytest.raises(ValueError, match="increasing"):
        CostCurve((2, 1), (0.1, 0.2))
    with pytest.raises(ValueError, match="at least one new token"):
        c[0].cost(0)


acceptance_rows = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4).map(
    lambda xs: [x / max(1.0, sum(xs)) for x in xs]
)


@settings(max_examples=40, deadline=None)
@given(acceptance_rows, st.integers(1, 24), st.integers(1, 5))
def test_tree_plans_respect_the_budget_and_more_budget_never_hurts(acceptance, budget, depth):
    cost = CostCurve.linear(0.05, 0.001)
    small = optimal_tree(acceptance, cost, budget, max_depth=depth)
    large = optimal_tree(acceptance, cost, budget + 3, max_depth=depth)
    assert len(small.parents) <= budget and len(large.parents) <= budget + 3
    free = CostCurve.linear(0.05, 0.0)  # with a flat target cost, only acceptance counts
    assert optimal_tree(acceptance, free, budget + 3, depth).expected_accepted >= (
        optimal_tree(acceptance, free, budget, depth).expected_accepted - 1e-12
    )
    if small.parents:
        assert expected_accepted(small.parents, small.ranks, acceptance) == pytest.approx(
            small.expected_accepted
        )
        depths = []
        for p in small.parents:
            depths.append(1 if p < 0 else depths[p] + 1)
        assert max(depths) <= depth and depths == sorted(depths)
