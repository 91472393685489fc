"""torch.library.opcheck on sample inputs: schemas (mutation declared), fake kernels, dispatch."""

import pytest
import torch
from utils import DEVICES, make_batch

from pyspec import ops


def samples(device):
    b = make_batch([5, 40, 0], [3, 1, 4], page_size=8, device=device)
    ops.paged_kv_append(b.k_cache, b.v_cache, b.k, b.v, *b.args())
    nodes_indptr = torch.tensor([0, 2, 3, 3], dtype=torch.int32, device=device)
    nodes = torch.tensor([0, 2, 0], dtype=torch.int32, device=device)
    x = torch.randn(4, 3, 16, device=device)
    return {
        "paged_kv_append": (b.k_cache.clone(), b.v_cache.clone(), b.k, b.v, *b.args()),
        "tree_attention": (b.q, b.k_cache, b.v_cache, *b.args(), b.tree_mask, 0.125),
        "tree_attention_causal": (b.q, b.k_cache, b.v_cache, *b.args(), None, 0.125),
        "kv_compact": (
            b.k_cache.clone(),
            b.v_cache.clone(),
            b.kv_lens.clone(),
            b.page_table,
            nodes_indptr,
            nodes,
        ),
        "copy_pages": (
            b.k_cache.clone(),
            b.v_cache.clone(),
            torch.tensor([0], dtype=torch.int32, device=device),
            torch.tensor([b.k_cache.shape[0] - 1], dtype=torch.int32, device=device),
        ),
        "rotary_embedding": (x, torch.arange(4, device=device), ops.rope_inv_freq(16, 10000.0, device)),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "name",
    [
        "paged_kv_append",
        "tree_attention",
        "tree_attention_causal",
        "kv_compact",
        "copy_pages",
        "rotary_embedding",
    ],
)
def test_opcheck(device, name):
    op = getattr(torch.ops.pyspec, name.removesuffix("_causal"))
    torch.library.opcheck(op, samples(device)[name])


def test_compiles_with_fake_kernels():
    """torch.compile traces through the ops (fullgraph: no graph break) and gives the eager result."""
    b = make_batch([9, 2], [2, 3], page_size=4)
    ops.paged_kv_append(b.k_cache, b.v_cache, b.k, b.v, *b.args())

    def attend(q, kc, vc, indptr, table, lens, mask):
        return ops.tree_attention(q * 2, kc, vc, indptr, table, lens, mask)

    args = (b.q, b.k_cache, b.v_cache, *b.args(), b.tree_mask)
    compiled = torch.compile(attend, fullgraph=True, backend="eager")
    assert torch.equal(compiled(*args), attend(*args))
