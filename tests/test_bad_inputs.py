"""Every class of bad input is a clear RuntimeError naming the problem, and nothing is written."""

import pytest
import torch
from utils import make_batch

from pyspec import ops

I32 = torch.int32


def base():
    b = make_batch([5, 20], [3, 2], page_size=4, kv_heads=2, group=2, head_dim=8)
    ops.paged_kv_append(b.k_cache, b.v_cache, b.k, b.v, *b.args())
    return b


def call_append(b, **kw):
    a = dict(
        k_cache=b.k_cache,
        v_cache=b.v_cache,
        k=b.k,
        v=b.v,
        qo_indptr=b.qo_indptr,
        page_table=b.page_table,
        kv_lens=b.kv_lens,
    )
    a.update(kw)
    ops.paged_kv_append(**a)


def call_attention(b, **kw):
    a = dict(
        q=b.q,
        k_cache=b.k_cache,
        v_cache=b.v_cache,
        qo_indptr=b.qo_indptr,
        page_table=b.page_table,
        kv_lens=b.kv_lens,
        tree_mask=b.tree_mask,
    )
    a.update(kw)
    ops.tree_attention(**a)


def call_compact(b, **kw):
    a = dict(
        k_cache=b.k_cache,
        v_cache=b.v_cache,
        kv_lens=b.kv_lens,
        page_table=b.page_table,
        accept_indptr=torch.tensor([0, 2, 3], dtype=I32),
        accept_nodes=torch.tensor([0, 2, 1], dtype=I32),
    )
    a.update(kw)
    ops.kv_compact(**a)


def call_copy(b, **kw):
    a = dict(
        k_cache=b.k_cache,
        v_cache=b.v_cache,
        src_pages=torch.tensor([0], dtype=I32),
        dst_pages=torch.tensor([1], dtype=I32),
    )
    a.update(kw)
    ops.copy_pages(**a)


def call_rotary(b, **kw):
    a = dict(x=b.q, positions=torch.arange(b.q.shape[0]), inv_freq=ops.rope_inv_freq(8, 10000.0))
    a.update(kw)
    ops.rotary_embedding(**a)


CASES = {
    # wrong dtype
    "q dtype": (call_attention, lambda b: dict(q=b.q.double()), "q dtype"),
    "cache dtype": (
        call_append,
        lambda b: dict(k_cache=b.k_cache.int(), v_cache=b.v_cache.int()),
        "float32 or bfloat16",
    ),
    "fp16 on cpu": (
        call_attention,
        lambda b: dict(q=b.q.half(), k_cache=b.k_cache.half(), v_cache=b.v_cache.half()),
        "float16 on CUDA",
    ),
    "v dtype": (call_append, lambda b: dict(v_cache=b.v_cache.bfloat16()), "v_cache dtype"),
    "indptr int64": (call_attention, lambda b: dict(qo_indptr=b.qo_indptr.long()), "qo_indptr must be int32"),
    "mask not bool": (call_attention, lambda b: dict(tree_mask=b.tree_mask.int()), "tree_mask must be bool"),
    "positions int32": (
        call_rotary,
        lambda b: dict(positions=torch.arange(b.q.shape[0], dtype=I32)),
        "int64",
    ),
    # wrong device
    "device": (call_attention, lambda b: dict(q=b.q.to("meta")), "all arguments must be on one device"),
    "device append": (call_append, lambda b: dict(page_table=b.page_table.to("meta")), "one device"),
    # wrong rank
    "q rank": (call_attention, lambda b: dict(q=b.q.reshape(b.q.shape[0], -1)), "q must be"),
    "cache rank": (
        call_attention,
        lambda b: dict(k_cache=b.k_cache[0], v_cache=b.v_cache[0]),
        "k_cache must be",
    ),
    "table rank": (call_append, lambda b: dict(page_table=b.page_table.flatten()), "page_table must have 2"),
    # wrong size
    "k head dim": (call_append, lambda b: dict(k=b.k[..., :4].contiguous()), "k must be"),
    "k tokens": (call_append, lambda b: dict(k=b.k[:-1].contiguous(), v=b.v[:-1].contiguous()), "qo_indptr"),
    "gqa": (call_attention, lambda b: dict(q=b.q[:, :3].contiguous()), "multiple of KV heads"),
    "lens size": (call_attention, lambda b: dict(kv_lens=b.kv_lens[:1]), "batch_size"),
    "head dim > 256": (
        call_attention,
        lambda b: dict(
            q=torch.zeros(5, 2, 300), k_cache=torch.zeros(9, 4, 2, 300), v_cache=torch.zeros(9, 4, 2, 300)
        ),
        "head_dim must be <= 256",
    ),
    "odd rotary dim": (call_rotary, lambda b: dict(x=torch.zeros(5, 2, 7), inv_freq=torch.zeros(3)), "even"),
    "inv_freq size": (
        call_rotary,
        lambda b: dict(inv_freq=torch.zeros(3)),
        "inv_freq must be float32 \\[4\\]",
    ),
    "not contiguous": (
        call_attention,
        lambda b: dict(q=b.q.transpose(0, 1).contiguous().transpose(0, 1)),
        "q must be contiguous",
    ),
    # page index out of range
    "page too large": (
        call_append,
        lambda b: dict(page_table=b.page_table.masked_fill(b.page_table == 3, 99)),
        "out of range",
    ),
    "page negative": (
        call_attention,
        lambda b: dict(page_table=b.page_table.masked_fill(b.page_table >= 0, -3)),
        "out of range",
    ),
    "too few pages": (
        call_append,
        lambda b: dict(kv_lens=torch.tensor([5, 40], dtype=I32)),
        "needs 11 pages",
    ),
    "negative length": (
        call_attention,
        lambda b: dict(kv_lens=torch.tensor([-1, 20], dtype=I32)),
        "negative",
    ),
    "copy out of range": (
        call_copy,
        lambda b: dict(dst_pages=torch.tensor([500], dtype=I32)),
        "out of range",
    ),
    "copy duplicate": (
        call_copy,
        lambda b: dict(src_pages=torch.tensor([0, 2], dtype=I32), dst_pages=torch.tensor([1, 1], dtype=I32)),
        "duplicate",
    ),
    "copy overlap": (
        call_copy,
        lambda b: dict(src_pages=torch.tensor([0, 1], dtype=I32), dst_pages=torch.tensor([1, 2], dtype=I32)),
        "both a source",
    ),
    "compact beyond pages": (
        call_compact,
        lambda b: dict(accept_nodes=torch.tensor([0, 40, 1], dtype=I32)),
        "accepted nodes",
    ),
    # mask or indptr inconsistent with the tokens
    "mask size": (call_attention, lambda b: dict(tree_mask=b.tree_mask[:-1]), "sum\\(n_b\\^2\\)"),
    "indptr total": (
        call_attention,
        lambda b: dict(qo_indptr=torch.tensor([0, 3, 4], dtype=I32)),
        "qo_indptr\\[-1\\]",
    ),
    "indptr start": (
        call_append,
        lambda b: dict(qo_indptr=torch.tensor([1, 3, 5], dtype=I32)),
        "qo_indptr\\[0\\]",
    ),
    "indptr order": (
        call_attention,
        lambda b: dict(qo_indptr=torch.tensor([0, 6, 5], dtype=I32)),
        "non-decreasing",
    ),
    "compact order": (
        call_compact,
        lambda b: dict(accept_nodes=torch.tensor([2, 0, 1], dtype=I32)),
        "strictly increasing",
    ),
    "compact indptr": (
        call_compact,
        lambda b: dict(accept_indptr=torch.tensor([0, 2, 5], dtype=I32)),
        "accept_indptr must run",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_clear_error_and_writes_nothing(case):
    call, change, message = CASES[case]
    b = base()
    kwargs = change(b)
    snapshot = [t.clone() for t in (b.k_cache, b.v_cache, b.kv_lens)]
    with pytest.raises(RuntimeError, match=message):
        call(b, **kwargs)
    for before, after in zip(snapshot, (b.k_cache, b.v_cache, b.kv_lens), strict=True):
        assert torch.equal(before, after)


def test_good_inputs_pass():
    """The unmodified inputs of every case are accepted (so each case fails for its own reason)."""
    for call in (call_append, call_attention, call_compact, call_copy, call_rotary):
        call(base())
