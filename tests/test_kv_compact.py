"""kv_compact and copy_pages against their references, one layer and many."""

import pytest
import torch
from utils import DEVICES, make_batch

from pyspec import ops, reference
from pyspec.reference import gather_kv
from pyspec.tree import ancestor_mask


def accepted_paths(b, gen):
    """A random root-to-node path of each sequence's tree (empty for a sequence without new tokens)."""
    nodes, indptr = [], [0]
    for parents in b.parents:
        if parents.numel():
            node = int(torch.randint(0, parents.numel(), (1,), generator=gen))
            nodes += torch.nonzero(ancestor_mask(parents)[node]).flatten().tolist()
        indptr.append(len(nodes))
    dev = b.k_cache.device
    return torch.tensor(indptr, dtype=torch.int32, device=dev), torch.tensor(
        nodes, dtype=torch.int32, device=dev
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("layers", [None, 3])
def test_compact_matches_reference(device, dtype, page_size, layers):
    lens = [0, 1, 97, 1025, 15, 16, 33] + [i * 5 for i in range(10)]
    news = [6, 0, 9, 1, 20, 17, 2] + [i % 5 for i in range(10)]
    b = make_batch(lens, news, page_size=page_size, dtype=dtype, device=device)
    ops.paged_kv_append(b.k_cache, b.v_cache, b.k, b.v, *b.args())
    if layers:  # same cache content in every layer, plus noise so layers differ
        b.k_cache = torch.stack([b.k_cache + i for i in range(layers)])
        b.v_cache = torch.stack([b.v_cache - i for i in range(layers)])
    indptr, nodes = accepted_paths(b, torch.Generator().manual_seed(1))
    k_ref, v_ref, lens_ref = b.k_cache.clone(), b.v_cache.clone(), b.kv_lens.clone()
    ops.kv_compact(b.k_cache, b.v_cache, b.kv_lens, b.page_table, indptr, nodes)
    reference.kv_compact(k_ref, v_ref, lens_ref, b.page_table, indptr, nodes)
    assert torch.equal(b.kv_lens, lens_ref)
    assert torch.equal(b.k_cache, k_ref) and torch.equal(b.v_cache, v_ref)


def test_compacted_cache_is_the_sequential_cache():
    """After compaction, the committed slots hold prefix + accepted path, exactly in order."""
    b = make_batch([50], [12], page_size=4, seed=2)
    ops.paged_kv_append(b.k_cache, b.v_cache, b.k, b.v, *b.args())
    prefix = gather_kv(b.k_cache, b.page_table[0], 50)
    path = torch.nonzero(ancestor_mask(b.parents[0])[11]).flatten()
    ops.kv_compact(
        b.k_cache,
        b.v_cache,
        b.kv_lens,
        b.page_table,
        torch.tensor([0, path.numel()], dtype=torch.int32),
        path.int(),
    )
    assert int(b.kv_lens[0]) == 50 + path.numel()
    assert torch.equal(
        gather_kv(b.k_cache, b.page_table[0], int(b.kv_lens[0])), torch.cat([prefix, b.k[path]])
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layers", [None, 2])
def test_copy_pages_matches_reference(device, layers):
    shape = (layers, 9, 4, 2, 8) if layers else (9, 4, 2, 8)
    k, v = torch.randn(shape, device=device), torch.randn(shape, device=device)
    src = torch.tensor([0, 3, 5], dtype=torch.int32, device=device)
    dst = torch.tensor([8, 1, 2], dtype=torch.int32, device=device)
    k_ref, v_ref = k.clone(), v.clone()
    ops.copy_pages(k, v, src, dst)
    reference.copy_pages(k_ref, v_ref, src, dst)
    assert torch.equal(k, k_ref) and torch.equal(v, v_ref)
