"""Drafter building blocks without a model: n-gram lookup, tree shapes, level statistics."""

import pytest

from pyspec.drafters.base import Draft
from pyspec.drafters.model import TreeShape
from pyspec.drafters.ngram import NgramDrafter, lookup
from pyspec.sampling import SamplingParams
from pyspec.stats import LevelStats


def test_lookup_prefers_the_longest_and_latest_match():
    ctx = [1, 2, 3, 9, 9, 5, 2, 3, 7, 7, 1, 2, 3]
    assert lookup(ctx, 2) == [9, 9]  # the 3-gram "1 2 3" (at the start) beats the later 2-gram "2 3"
    assert lookup(ctx, 2, max_ngram=2) == [7, 7]  # with 2-grams only, the latest "2 3" wins
    assert lookup([4, 5, 6, 1, 5, 6, 2, 6], 3) == [2, 6]  # only "6" matches; latest occurrence wins
    assert lookup([1, 2, 3], 4) == []  # nothing repeats
    assert lookup([8], 4) == []  # a single token has no history
    assert lookup([5, 5, 5, 5], 8) == [5]  # the continuation stops at the context's end


def test_ngram_drafter_respects_budgets():
    d = NgramDrafter(block_size=4)
    ctx = [1, 2, 3, 4, 5, 6, 1, 2]
    drafts = d.propose([0, 1, 2], [ctx] * 3, [SamplingParams()] * 3, [None] * 3, [4, 2, 0])
    assert [x.tokens for x in drafts] == [[3, 4, 5, 6], [3, 4], []]
    assert drafts[0].parents == [-1, 0, 1, 2] and drafts[0].q is None
    with pytest.raises(ValueError):
        NgramDrafter(block_size=0)


def test_tree_shapes():
    shape = TreeShape.branching([2, 2])
    assert shape.parents == (-1, -1, 0, 0, 1, 1) and shape.ranks == (0, 1, 0, 1, 0, 1)
    assert shape.size_within(1) == 2 and shape.max_depth == 2
    assert TreeShape.from_parents([-1, 0, -1, 0]) == TreeShape.from_paths([(0,), (1,), (0, 0), (0, 1)])
    assert TreeShape.chain(3).parents == (-1, 0, 1)
    with pytest.raises(ValueError, match="breadth-first"):
        TreeShape(parents=(-1, 0, -1), ranks=(0, 0, 1))
    with pytest.raises(ValueError, match="lacks its parent"):
        TreeShape.from_paths([(0,), (1, 0)])
    with pytest.raises(ValueError, match="parents must come before"):
        TreeShape.from_parents([0])


def test_level_stats_summary():
    s = LevelStats("target")
    for drafted, accepted in [(4, 4), (4, 1), (4, 0), (4, 2)]:
        s.record(drafted, accepted)
    d = s.as_dict()
    assert d["accepted"] == 7 and d["mat"] == (7 + 4) / 4 and d["acceptance"] == 7 / 16
    # reached depth >= 1: 3 of 4 steps; >= 2: 2 of 3; >= 3: 1 of 2; >= 4: 1 of 1
    assert d["acceptance_per_depth"] == [3 / 4, 2 / 3, 1 / 2, 1.0]


def test_draft_chain():
    assert Draft.chain([]).parents == [] and len(Draft.chain([1, 2])) == 2
