"""paged_kv_append against its reference: every sequence writes at its own length, nothing else moves."""

import pytest
import torch
from utils import DEVICES, make_batch

from pyspec import ops, reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("head_dim", [64, 59])
def test_append_matches_reference(device, dtype, page_size, head_dim):
    lens = [0, 1, 97, 1025, 15, 16, 33] + [i * 7 for i in range(10)]  # 17 sequences
    news = [3, 0, 5, 1, 1, 17, 2] + [i % 4 for i in range(10)]  # one sequence with no new tokens
    b = make_batch(lens, news, page_size=page_size, head_dim=head_dim, dtype=dtype, device=device)
    k_ref, v_ref = b.k_cache.clone(), b.v_cache.clone()
    ops.paged_kv_append(b.k_cache, b.v_cache, b.k, b.v, *b.args())
    reference.paged_kv_append(k_ref, v_ref, b.k, b.v, *b.args())
    assert torch.equal(b.k_cache, k_ref) and torch.equal(b.v_cache, v_ref)


def test_append_writes_only_new_slots():
    b = make_batch([5, 20], [3, 4], page_size=4)
    before = b.k_cache.clone()
    ops.paged_kv_append(b.k_cache, b.v_cache, b.k, b.v, *b.args())
    changed = (b.k_cache != before).any(dim=(2, 3))  # [num_pages, page_size]
    assert int(changed.sum()) == 7
    for seq, (L, n) in enumerate([(5, 3), (20, 4)]):
        for i in range(n):
            slot = L + i
            page = int(b.page_table[seq, slot // 4])
            t = int(b.qo_indptr[seq]) + i
            assert torch.equal(b.k_cache[page, slot % 4], b.k[t])
            assert torch.equal(b.v_cache[page, slot % 4], b.v[t])


def test_empty_batch_is_a_no_op():
    b = make_batch([4], [0])
    before = b.k_cache.clone()
    ops.paged_kv_append(b.k_cache, b.v_cache, b.k, b.v, *b.args())
    assert torch.equal(before, b.k_cache)
