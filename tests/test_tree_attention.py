"""tree_attention: against the reference, causal along every root-to-node path, and block invariant."""

import math

import pytest
import torch
import torch.nn.functional as F
from utils import DEVICES, make_batch

from pyspec import ops, reference
from pyspec.reference import gather_kv
from pyspec.tree import ancestor_mask, pack_tree_masks


def run(b, mask=True, **kw):
    ops.paged_kv_append(b.k_cache, b.v_cache, b.k, b.v, *b.args())
    return ops.tree_attention(b.q, b.k_cache, b.v_cache, *b.args(), b.tree_mask if mask else None, **kw)


def assert_close_to_fp64(b, out, mask=True, scale=None):
    """FlashAttention's rule: the op's error against an fp64 reference is at most about twice that of
    the plain-PyTorch reference computed in the input's precision."""
    tm = b.tree_mask if mask else None
    args = (b.q, b.k_cache, b.v_cache, *b.args(), tm, scale)
    exact = reference.tree_attention(*args, compute_dtype=torch.float64)
    plain = reference.tree_attention(*args, compute_dtype=b.q.dtype)
    op_err = (out.double() - exact.double()).abs().max().item()
    plain_err = (plain.double() - exact.double()).abs().max().item()
    atol = 1e-6 if b.q.dtype == torch.float32 else 1e-2
    assert op_err <= 2 * plain_err + atol, (op_err, plain_err)


LENS = [0, 1, 97, 1025, 15, 16, 33, 2, 64, 0, 300, 5, 31, 32, 200, 7, 1]  # batch of 17
NEWS = [5, 1, 9, 4, 0, 17, 3, 1, 2, 1, 33, 6, 1, 8, 4, 2, 64]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 59, 111])
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("mask", [True, False], ids=["tree", "causal"])
def test_matches_reference(device, dtype, head_dim, page_size, mask):
    b = make_batch(LENS, NEWS, page_size=page_size, head_dim=head_dim, dtype=dtype, device=device, group=3)
    assert_close_to_fp64(b, run(b, mask), mask)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("group", [1, 4])
def test_gqa_groups_and_custom_scale(device, group):
    b = make_batch([40, 700], [6, 3], kv_heads=3, group=group, device=device)
    assert_close_to_fp64(b, run(b, scale=0.3), scale=0.3)


@pytest.mark.parametrize("device", DEVICES)
def test_chain_mask_equals_causal(device):
    b = make_batch([3, 130], [7, 40], chain=True, device=device)
    tree = run(b)
    causal = ops.tree_attention(b.q, b.k_cache, b.v_cache, *b.args(), None)
    assert torch.equal(tree, causal)


@pytest.mark.parametrize("device", DEVICES)
def test_equals_causal_attention_along_every_path(device):
    """Each node attends exactly like the last token of plain causal attention over prefix + path."""
    b = make_batch([77], [24], page_size=4, group=3, device=device, seed=3)
    out = run(b)
    L, parents = 77, b.parents[0]
    keys = gather_kv(b.k_cache, b.page_table[0], L + 24)
    values = gather_kv(b.v_cache, b.page_table[0], L + 24)
    group = b.q.shape[1] // keys.shape[1]
    for node in range(24):
        path = torch.nonzero(ancestor_mask(parents)[node]).flatten()  # root .. node, in order
        idx = torch.cat([torch.arange(L), L + path]).to(device)
        k = keys[idx].repeat_interleave(group, 1).transpose(0, 1)  # [heads, S, d]
        v = values[idx].repeat_interleave(group, 1).transpose(0, 1)
        q = b.q[node][:, None, :]  # [heads, 1, d]: the last position of a causal sequence sees all
        expected = F.scaled_dot_product_attention(q, k, v)[:, 0]
        torch.testing.assert_close(out[node], expected, atol=2e-6, rtol=1e-5)


def sequential_cache(b, seq, node):
    """A cache where node's ancestors were committed in path order and node is the one new token."""
    L = int(b.kv_lens[seq])
    path = torch.nonzero(ancestor_mask(b.parents[seq])[node]).flatten().tolist()
    t0 = int(b.qo_indptr[seq])
    keys = gather_kv(b.k_cache, b.page_table[seq], L)
    values = gather_kv(b.v_cache, b.page_table[seq], L)
    rows = [t0 + j for j in path]
    keys = torch.cat([keys, b.k[rows]])
    values = torch.cat([values, b.v[rows]])
    page_size = b.k_cache.shape[1]
    pages = -(-keys.shape[0] // page_size)
    pad = pages * page_size - keys.shape[0]
    kc = torch.cat([keys, keys.new_zeros(pad, *keys.shape[1:])]).view(pages, page_size, *keys.shape[1:])
    vc = torch.cat([values, values.new_zeros(pad, *keys.shape[1:])]).view(pages, page_size, *keys.shape[1:])
    table = torch.arange(pages, dtype=torch.int32, device=kc.device)[None]
    lens = torch.tensor([keys.shape[0] - 1], dtype=torch.int32, device=kc.device)
    indptr = torch.tensor([0, 1], dtype=torch.int32, device=kc.device)
    return b.q[t0 + node][None], kc.contiguous(), vc.contiguous(), indptr, table, lens


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("committed", [0, 30, 500, 1030])
def test_tree_node_bitwise_equals_decoding_it_alone(device, committed):
    """A verified tree node gets bit-for-bit what one-token decoding gives after its ancestors were
    committed: block verification cannot flip a near-tie that token-by-token decoding would not."""
    b = make_batch([committed, 11], [40, 5], page_size=16, group=3, device=device, seed=committed)
    out = run(b)
    for node in range(40):
        alone = ops.tree_attention(*sequential_cache(b, 0, node), None)
        assert torch.equal(out[node], alone[0]), f"node {node}"


@pytest.mark.parametrize("device", DEVICES)
def test_row_independent_of_batch_and_threads(device):
    b = make_batch(LENS, NEWS, group=3, device=device, seed=5)
    together = run(b)
    for seq in (2, 3, 16):
        t0, t1 = int(b.qo_indptr[seq]), int(b.qo_indptr[seq + 1])
        n = t1 - t0
        indptr = torch.tensor([0, n], dtype=torch.int32, device=device)
        mask = pack_tree_masks([ancestor_mask(b.parents[seq]).to(device)])
        alone = ops.tree_attention(
            b.q[t0:t1],
            b.k_cache,
            b.v_cache,
            indptr,
            b.page_table[seq : seq + 1],
            b.kv_lens[seq : seq + 1],
            mask,
        )
        assert torch.equal(together[t0:t1], alone)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = ops.tree_attention(b.q, b.k_cache, b.v_cache, *b.args(), b.tree_mask)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, together)


def test_default_scale_and_row_without_keys():
    b = make_batch([0], [2])
    b.tree_mask = torch.tensor([False, False, True, True])  # row 0 sees nothing
    out = run(b)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    explicit = ops.tree_attention(b.q, b.k_cache, b.v_cache, *b.args(), b.tree_mask, 1 / math.sqrt(64))
    assert torch.equal(out, explicit)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("committed", [0, 700])
def test_long_prefill_across_chunks(device, committed):
    """A prompt longer than a chunk (512 keys): rows reach different numbers of chunks."""
    b = make_batch([committed, 3], [1100, 2], group=3, device=device, seed=7)
    assert_close_to_fp64(b, run(b, mask=False), mask=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="float16 is a CUDA-only dtype")
@pytest.mark.parametrize("mask", [True, False], ids=["tree", "causal"])
def test_float16_on_cuda(mask):
    b = make_batch(LENS, NEWS, head_dim=111, dtype=torch.float16, device="cuda", group=3)
    assert_close_to_fp64(b, run(b, mask), mask)
