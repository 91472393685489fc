"""Token-tree helpers: ancestor masks, depths, packing."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pyspec.tree import ancestor_mask, check_parents, depths, pack_tree_masks


def test_small_tree_by_hand():
    parents = torch.tensor([-1, 0, 0, 1, 3])
    expected = torch.tensor(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [1, 1, 0, 1, 0], [1, 1, 0, 1, 1]]
    )
    assert torch.equal(ancestor_mask(parents).int(), expected.int())
    assert depths(parents).tolist() == [0, 1, 1, 2, 3]


def test_chain_is_causal():
    assert torch.equal(ancestor_mask(torch.arange(-1, 6)), torch.ones(7, 7, dtype=torch.bool).tril())


@given(st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=40))
def test_masks_of_random_trees(draws):
    parents = torch.tensor([-1] + [d % i for i, d in zip(range(1, len(draws)), draws[1:], strict=True)])
    mask = ancestor_mask(parents)
    assert bool(mask.diagonal().all()) and bool((mask.triu(1) == 0).all())
    for i in range(1, parents.numel()):  # a node sees exactly its parent's ancestors and itself
        expected = mask[parents[i]].clone()
        expected[i] = True
        assert torch.equal(mask[i], expected)


@pytest.mark.parametrize("bad", [[0], [-1, 1], [-1, -2], [-1, 0, 5]])
def test_bad_parents(bad):
    with pytest.raises(ValueError, match="parents"):
        check_parents(torch.tensor(bad))


def test_pack():
    a, b = ancestor_mask(torch.tensor([-1, 0])), ancestor_mask(torch.tensor([-1]))
    assert pack_tree_masks([a, b]).tolist() == [True, False, True, True, True]
    with pytest.raises(ValueError):
        pack_tree_masks([torch.ones(2, 3, dtype=torch.bool)])
