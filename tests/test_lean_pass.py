"""The lean decoding pass: attention planned once per pass, the fused per-layer ops (rotary + KV
append, residual add + RMSNorm, silu * up) and the fused q/k/v and gate/up projections.

Each fused op is checked against the separate ops it replaces (bitwise where it claims bits) or a
float64 reference (where it has its own summation order), and for batch invariance: a row's result
must not depend on how many rows or threads share the call.
"""

import pytest
import torch
from utils import make_batch

from pyspec import ops, reference
from pyspec.batch import StepBatch
from pyspec.models.config import ModelConfig
from pyspec.models.llama import LlamaModel, fuse_projections


def plan_of(b, tree=True):
    q_heads = b.q.shape[1]
    return ops.plan_tree_attention(
        b.k_cache, b.v_cache, *b.args(), b.tree_mask if tree else None, q_heads=q_heads
    )


@pytest.mark.parametrize("tree", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_planned_attention_is_bitwise_the_one_call_op(tree, dtype):
    b = make_batch([5, 40, 0, 600], [3, 1, 4, 7], page_size=8, dtype=dtype, chain=not tree)
    ops.paged_kv_append(b.k_cache, b.v_cache, b.k, b.v, *b.args())
    plan = plan_of(b, tree)
    one_call = ops.tree_attention(b.q, b.k_cache, b.v_cache, *b.args(), b.tree_mask if tree else None)
    for _ in range(2):  # a plan serves many runs (every layer of a pass)
        assert torch.equal(ops.run_tree_attention(b.q, b.k_cache, b.v_cache, plan), one_call)


def test_plan_keeps_its_own_copy_of_the_metadata():
    b = make_batch([20, 3], [2, 2], page_size=4, chain=True)
    ops.paged_kv_append(b.k_cache, b.v_cache, b.k, b.v, *b.args())
    plan = plan_of(b, tree=False)
    before = ops.run_tree_attention(b.q, b.k_cache, b.v_cache, plan)
    b.page_table.fill_(10**6)  # would be out of range if the plan re-read it
    b.kv_lens.fill_(10**6)
    assert torch.equal(ops.run_tree_attention(b.q, b.k_cache, b.v_cache, plan), before)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b.page_table.__setitem__((0, 0), 10**5), "out of range"),
        (lambda b: b.kv_lens.__setitem__(1, 10**4), "pages for"),
        (lambda b: setattr(b, "tree_mask", b.tree_mask[:-1].contiguous()), "tree_mask has"),
        (lambda b: b.qo_indptr.__setitem__(1, 7), "non-decreasing"),
    ],
)
def test_bad_metadata_is_refused_when_planning(mutate, message):
    b = make_batch([5, 9], [3, 2], page_size=4, spare_pages=0)
    mutate(b)
    with pytest.raises(RuntimeError, match=message):
        plan_of(b)


def test_runs_check_their_tensors_fit_the_plan():
    b = make_batch([5, 9], [3, 2], page_size=4)
    plan = plan_of(b)
    other = torch.zeros(b.k_cache.shape[0] + 1, *b.k_cache.shape[1:])
    with pytest.raises(RuntimeError, match="not the pool the plan was made for"):
        ops.run_tree_attention(b.q, other, other, plan)
    with pytest.raises(RuntimeError, match="tokens but the plan has"):
        ops.run_tree_attention(b.q[:-1].contiguous(), b.k_cache, b.v_cache, plan)
    with pytest.raises(RuntimeError, match="q must be"):
        ops.run_tree_attention(b.q[:, :1].contiguous(), b.k_cache, b.v_cache, plan)
    with pytest.raises(RuntimeError, match="plan was made for Float"):
        ops.run_tree_attention(b.q.bfloat16(), b.k_cache.bfloat16(), b.v_cache.bfloat16(), plan)
    handle = plan.handle
    del plan
    with pytest.raises(RuntimeError, match="unknown or was released"):
        torch.ops.pyspec.tree_attention_run(b.q, b.k_cache, b.v_cache, handle, 0.125)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_kv_append_is_bitwise_rotary_then_append(dtype):
    b = make_batch([5, 40, 0], [3, 1, 4], page_size=8, dtype=dtype, kv_heads=2, group=3)
    T, q_heads, d = b.q.shape
    qkv = torch.cat([b.q.view(T, -1), b.k.view(T, -1), b.v.view(T, -1)], dim=1)
    positions = torch.randint(0, 5000, (T,))
    inv_freq = ops.rope_inv_freq(d, 10000.0)
    kc, vc = b.k_cache.clone(), b.v_cache.clone()
    q = ops.rope_kv_append(qkv, kc, vc, positions, inv_freq, plan_of(b))
    k_ref, v_ref = b.k_cache.clone(), b.v_cache.clone()
    ops.paged_kv_append(k_ref, v_ref, ops.rotary_embedding(b.k, positions, inv_freq), b.v, *b.args())
    assert torch.equal(q, ops.rotary_embedding(b.q, positions, inv_freq))
    assert torch.equal(kc, k_ref) and torch.equal(vc, v_ref)
    with pytest.raises(RuntimeError, match="qkv must be"):
        ops.rope_kv_append(qkv[:, :-1].contiguous(), kc, vc, positions, inv_freq, plan_of(b))


def norm_bound(x64, weight64, D):
    """Error bound of an fp32 RMSNorm: the sum of D squares, a division, a square root and two products."""
    eps32 = 2.0**-24
    return (D + 8) * eps32 * (x64.abs() * weight64.abs() / x64.pow(2).mean(-1, keepdim=True).sqrt())


@pytest.mark.parametrize("D", [576, 1536, 37])
def test_rms_norm_matches_float64_and_is_batch_invariant(D):
    gen = torch.Generator().manual_seed(D)
    x, r = torch.randn(9, D, generator=gen) * 3, torch.randn(9, D, generator=gen)
    w = torch.randn(D, generator=gen) * 0.5
    exact = reference.rms_norm((x + r).double(), w.double(), 1e-5)
    normed, total = ops.add_rms_norm(x, r, w, 1e-5)
    assert torch.equal(total, x + r)
    assert ((normed.double() - exact).abs() <= norm_bound((x + r).double(), w.double(), D)).all()
    assert torch.equal(ops.rms_norm(x + r, w, 1e-5), normed)
    for i in (0, 4, 8):
        assert torch.equal(ops.add_rms_norm(x[i : i + 1], r[i : i + 1], w, 1e-5)[0], normed[i : i + 1])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(ops.add_rms_norm(x, r, w, 1e-5)[0], normed)
    finally:
        torch.set_num_threads(threads)


def test_rms_norm_bfloat16_rounds_as_transformers():
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(4, 576, generator=gen).bfloat16(), torch.randn(576, generator=gen).bfloat16()
    ours, theirs = ops.rms_norm(x, w, 1e-5), reference.rms_norm(x, w, 1e-5)
    assert ours.dtype == torch.bfloat16
    # Only the sum of squares' order differs: at most one bfloat16 step apart.
    assert ((ours.float() - theirs.float()).abs() <= theirs.float().abs() * 2**-7 + 1e-30).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_matches_torch_and_is_batch_invariant(dtype):
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(7, 2 * 1539, generator=gen) * 6).to(dtype)
    x[0, :6] = torch.tensor([100.0, -100.0, 89.0, -89.0, 0.0, -0.0])
    ours = ops.silu_mul(x)
    exact = reference.silu_mul(x.double())
    ulp = 2.0**-23 if dtype == torch.float32 else 2.0**-7
    # e^89 overflows float32 (as in torch): silu(-89) is -0 rather than -6e-37
    assert ((ours.double() - exact).abs() <= 4 * ulp * exact.abs() + 1e-30).all()
    assert torch.isfinite(ours).all()
    for i in (0, 3, 6):
        assert torch.equal(ops.silu_mul(x[i : i + 1]), ours[i : i + 1])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ops.rms_norm(torch.randn(2, 8), torch.ones(7), 1e-5), "weight must be"),
        (lambda: ops.rms_norm(torch.randn(2, 8), torch.ones(8), float("nan")), "eps must be finite"),
        (
            lambda: ops.rms_norm(torch.randn(2, 8).double(), torch.ones(8).double(), 1e-5),
            "float32 or bfloat16",
        ),
        (lambda: ops.add_rms_norm(torch.randn(2, 8), torch.randn(3, 8), torch.ones(8), 1e-5), "residual"),
        (lambda: ops.silu_mul(torch.randn(2, 7)), "odd width"),
        (lambda: ops.silu_mul(torch.randn(2, 8).t()), "contiguous"),
        (lambda: ops.rms_norm(torch.randn(2, 8), torch.ones(8, device="meta"), 1e-5), "one device"),
    ],
)
def test_elementwise_ops_refuse_bad_input(call, message):
    with pytest.raises(RuntimeError, match=message):
        call()


def tiny_model(bias: bool) -> LlamaModel:
    """Random weights (shapes only) with Qwen2-style q/k/v biases or without."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=64,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=48,
        attention_bias=bias,
    )
    model = LlamaModel(cfg)
    for p in model.parameters():
        p.copy_(torch.randn_like(p) * 0.2)
    return model


@pytest.mark.parametrize("bias", [True, False])
def test_fused_projections_give_the_separate_projections_bits(bias):
    """The model's fused q/k/v and gate/up matmuls against one matmul per projection, in a pass that
    otherwise runs the same ops (the reference composition of the layer)."""
    model = tiny_model(bias)
    cache = model.new_cache(num_pages=8, page_size=4)
    seq = cache.add_sequence()
    batch = StepBatch.build(cache, [seq], [[3, 1, 4, 1, 5, 9, 2]])
    with torch.inference_mode():
        fused = model(batch, cache, logits_rows=torch.arange(7)).logits
        c, x = model.config, torch.nn.functional.embedding(batch.tokens, model.embed_tokens)
        ref_cache = model.new_cache(num_pages=8, page_size=4)
        ref_seq = ref_cache.add_sequence()
        ref_batch = StepBatch.build(ref_cache, [ref_seq], [[3, 1, 4, 1, 5, 9, 2]])
        for i, layer in enumerate(model.layers):
            p = layer.projections()
            h = ops.rms_norm(x, layer.input_layernorm, c.rms_norm_eps)
            q, k, v = (ops.linear(h, *p[n]).view(7, -1, c.head_dim) for n in ("q_proj", "k_proj", "v_proj"))
            q = ops.rotary_embedding(q.contiguous(), ref_batch.positions, model.inv_freq)
            k = ops.rotary_embedding(k.contiguous(), ref_batch.positions, model.inv_freq)
            kc, vc = ref_cache.layers()[i]
            ops.paged_kv_append(
                kc, vc, k, v.contiguous(), ref_batch.qo_indptr, ref_batch.page_table, ref_batch.kv_lens
            )
            attn = ops.tree_attention(q, kc, vc, ref_batch.qo_indptr, ref_batch.page_table, ref_batch.kv_lens)
            x = x + ops.linear(attn.view(7, -1), *p["o_proj"])
            h = ops.rms_norm(x, layer.post_attention_layernorm, c.rms_norm_eps)
            gate, up = ops.linear(h, p["gate_proj"][0]), ops.linear(h, p["up_proj"][0])
            x = x + ops.linear(ops.silu_mul(torch.cat([gate, up], dim=1)), p["down_proj"][0])
        separate = ops.linear(ops.rms_norm(x, model.norm, c.rms_norm_eps), model.head_weight)
    assert torch.equal(fused, separate)


def test_fuse_projections_maps_separate_weights_and_refuses_a_missing_part():
    model = tiny_model(bias=True)
    state = {
        f"layers.0.{n}.{kind}": t
        for n, (w, b) in model.layers[0].projections().items()
        for kind, t in (("weight", w), ("bias", b))
        if t is not None
    }
    fused = fuse_projections(state)
    assert torch.equal(fused["layers.0.qkv_proj.weight"], model.layers[0].qkv_proj.weight)
    assert torch.equal(fused["layers.0.qkv_proj.bias"], model.layers[0].qkv_proj.bias)
    assert torch.equal(fused["layers.0.gate_up_proj.weight"], model.layers[0].gate_up_proj.weight)
    del state["layers.0.up_proj.weight"]
    with pytest.raises(ValueError, match="up_proj.weight"):
        fuse_projections(state)
