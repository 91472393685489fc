"""Packed GGUF weights: every format decodes exactly as gguf-py's reference, linear over packed rows is
bitwise the fp32 linear over the dequantised weight (any M, parts, threads), bad input is a clear
error, and a packed model gives the dequantised model's logits and tokens bit for bit."""

import os
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch

import pyspec
from pyspec import ops, packed_ops
from pyspec.cpu_isa import CPU_ISAS
from pyspec.models.packed import PACKED_TYPES, PackedWeight

FORMATS = list(PACKED_TYPES)


def random_blocks(fmt: str, rows: int, k: int, seed: int = 0) -> np.ndarray:
    """Random bytes in ggml blocks of ``fmt`` (every bit pattern is a valid block) with finite float16
    scales; uint8 ``[rows, row_bytes]``. Random data covers every quant value and scale bit."""
    qtype = gguf.GGMLQuantizationType[fmt]
    values, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows, k // values, size), dtype=np.uint8)
    halves = {
        "Q4_0": [0],
        "Q5_0": [0],
        "Q8_0": [0],
        "Q4_1": [0, 2],
        "Q5_1": [0, 2],
        "Q4_K": [0, 2],
        "Q5_K": [0, 2],
    }
    for offset in halves.get(fmt, [208]):  # Q6_K keeps d last
        h = (rng.standard_normal((rows, k // values)) * 0.05).astype(np.float16)
        raw[:, :, offset : offset + 2] = h.view(np.uint8).reshape(rows, k // values, 2)
    return raw.reshape(rows, -1)


def reference(blocks: np.ndarray, fmt: str) -> torch.Tensor:
    qtype = gguf.GGMLQuantizationType[fmt]
    return torch.from_numpy(np.asarray(gguf.quants.dequantize(blocks, qtype), dtype=np.float32).copy())


def k_for(fmt: str) -> int:
    return 512 if fmt.endswith("_K") else 576  # 576: SmolLM2's hidden size, not a multiple of 256


@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantize_rows_matches_gguf(fmt):
    k = k_for(fmt)
    blocks = random_blocks(fmt, 21, k)
    ids = torch.tensor([20, 0, 7, 7, 3])
    got = packed_ops.dequantize_rows(torch.from_numpy(blocks), PACKED_TYPES[fmt], k, ids)
    assert torch.equal(got, reference(blocks, fmt).reshape(21, k)[ids])


@pytest.mark.parametrize("fmt", FORMATS)
def test_linear_packed_is_bitwise_fp32_linear(fmt):
    """The exact contract: same bits as the fp32 linear over the dequantised weight, for the one-row,
    few-row and many-row kernels, with a bias, split in parts, on one and two threads."""
    k, n = k_for(fmt), 37  # 37: full groups of 4 rows and a tail
    blocks = torch.from_numpy(random_blocks(fmt, n, k, seed=1))
    dense = reference(blocks.numpy(), fmt).reshape(n, k)
    bias = torch.randn(n)
    code = PACKED_TYPES[fmt]
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            for m in (1, 2, 3, 4, 9):
                x = torch.randn(m, k)
                y = packed_ops.linear_packed(x, [blocks], [code], bias)
                assert torch.equal(y, ops.linear(x, dense, bias)), (fmt, m, t)
                row = packed_ops.linear_packed(x[-1:], [blocks], [code], bias)
                assert torch.equal(row, y[-1:])  # row invariant
                parts = packed_ops.linear_packed(x, [blocks[:10], blocks[10:]], [code, code], bias)
                assert torch.equal(parts, y)
    finally:
        torch.set_num_threads(threads)


def test_linear_packed_mixed_formats_in_parts():
    """A fused projection whose rows are stored in two formats (Q4_K_M's v rows in Q6_K)."""
    a, b = random_blocks("Q4_K", 12, 512, seed=2), random_blocks("Q6_K", 6, 512, seed=3)
    dense = torch.cat([reference(a, "Q4_K").reshape(12, 512), reference(b, "Q6_K").reshape(6, 512)])
    w = PackedWeight.cat(
        [
            PackedWeight([torch.from_numpy(a)], [PACKED_TYPES["Q4_K"]], 512),
            PackedWeight([torch.from_numpy(b)], [PACKED_TYPES["Q6_K"]], 512),
        ]
    )
    assert w.formats == ["Q4_K", "Q6_K"] and w.shape == (18, 512)
    assert torch.equal(w.dequantize(), dense)
    x = torch.randn(5, 512)
    assert torch.equal(packed_ops.linear_packed(x, w.parts, w.qtypes), ops.linear(x, dense))
    rows = torch.tensor([1, 4, 13])
    assert torch.equal(w[rows].dequantize(), dense[rows])


def test_packed_bad_inputs_are_clear_errors():
    blocks = torch.from_numpy(random_blocks("Q8_0", 4, 64))
    x = torch.randn(2, 64)
    q8 = PACKED_TYPES["Q8_0"]
    with pytest.raises(RuntimeError, match="not a packed format"):
        packed_ops.linear_packed(x, [blocks], [1])
    with pytest.raises(RuntimeError, match=r"must be \[rows, 68\]"):
        packed_ops.linear_packed(x, [blocks[:, :60].contiguous()], [q8])
    with pytest.raises(RuntimeError, match="multiple of"):
        packed_ops.linear_packed(torch.randn(2, 48), [blocks], [q8])
    with pytest.raises(RuntimeError, match="uint8"):
        packed_ops.linear_packed(x, [blocks.float()], [q8])
    with pytest.raises(RuntimeError, match="float32"):
        packed_ops.linear_packed(x.bfloat16(), [blocks], [q8])
    with pytest.raises(RuntimeError, match="one ggml type per weight part"):
        packed_ops.linear_packed(x, [blocks, blocks], [q8])
    with pytest.raises(RuntimeError, match=r"bias must be \[N = 4\]"):
        packed_ops.linear_packed(x, [blocks], [q8], torch.zeros(3))
    with pytest.raises(RuntimeError, match="out of range"):
        packed_ops.dequantize_rows(blocks, q8, 64, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="not packed formats"):
        PackedWeight([blocks], [0], 64)


@pytest.fixture(scope="module")
def smollm2_pair():
    return (
        pyspec.load_model("smollm2-135m-instruct", progress=False),
        pyspec.load_model("smollm2-135m-instruct", packed=True, progress=False),
    )


def test_packed_model_logits_are_the_dense_models_bits(smollm2_pair):
    """Prefill and verification-sized passes: every logit equal, bit for bit."""
    from pyspec.batch import StepBatch

    dense, packed = smollm2_pair
    assert packed.packed and not dense.packed
    nbytes = sum(
        w.nbytes
        for w in [packed.embed_tokens]
        + [
            getattr(layer, n).weight
            for layer in packed.layers
            for n in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
        ]
    )
    assert nbytes < 0.2 * sum(p.numel() * 4 for p in dense.parameters())
    tokens = packed.tokenizer("def fibonacci(n):\n    return", add_special_tokens=False)["input_ids"]
    outs = []
    for model in (dense, packed):
        cache = model.new_cache(num_pages=8, page_size=16)
        seqs = [cache.add_sequence(), cache.add_sequence()]
        batch = StepBatch.build(cache, seqs, [tokens, tokens[:3]])
        rows = torch.arange(len(tokens) + 3)
        outs.append(model(batch, cache, logits_rows=rows).logits)
    assert torch.equal(outs[0], outs[1])


def test_packed_model_generates_the_dense_models_tokens(smollm2_pair):
    """Greedy AR and speculative decoding: packed tokens equal the dense model's."""
    dense, packed = smollm2_pair
    prompts = ["Write a haiku about the sea.", "def is_prime(n):"]
    want = [o.tokens for o in pyspec.generate(dense, prompts, max_new_tokens=24)]
    assert [o.tokens for o in pyspec.generate(packed, prompts, max_new_tokens=24)] == want
    spec = pyspec.generate(packed, prompts, max_new_tokens=24, drafts=["ngram"])
    assert [o.tokens for o in spec] == want


def test_load_packed_rejects_what_it_cannot_do(tmp_path):
    with pytest.raises(ValueError, match="float32"):
        pyspec.load_model("smollm2-135m-instruct", packed=True, dtype=torch.bfloat16, progress=False)
    with pytest.raises(FileNotFoundError, match="only GGUF weights load packed"):
        pyspec.load_model(tmp_path, packed=True, progress=False)


def test_qwen_real_tensors_are_exact():
    """Qwen2.5-Coder's own Q4_K and Q6_K tensors (when installed): packed linear equals the fp32 linear
    over gguf's dequantisation, bit for bit."""
    from pyspec.models.loading import ModelNotFoundError, gguf_file

    try:
        path = gguf_file("qwen2.5-coder-1.5b-instruct")
    except ModelNotFoundError:
        pytest.skip("Qwen2.5-Coder-1.5B is not installed (make qwen)")
    reader = gguf.GGUFReader(str(path))
    seen = set()
    for t in reader.tensors:
        fmt = t.tensor_type.name
        if fmt not in PACKED_TYPES or fmt in seen or t.name.startswith(("token_embd", "output")):
            continue
        seen.add(fmt)
        rows, k = (int(d) for d in reversed(t.shape.tolist()))
        blocks = torch.from_numpy(np.array(t.data, dtype=np.uint8).reshape(rows, -1)[:256].copy())
        dense = reference(blocks.numpy(), fmt).reshape(-1, k)
        for m in (1, 5):
            x = torch.randn(m, k)
            y = packed_ops.linear_packed(x, [blocks], [PACKED_TYPES[fmt]])
            assert torch.equal(y, ops.linear(x, dense)), fmt
    assert seen == {"Q4_K", "Q6_K"}


Q8_FORMATS = ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K"]


def q8_reference(x: torch.Tensor, dense: torch.Tensor, block: int) -> torch.Tensor:
    """fp64 product of x quantised per ``block`` values (d = max|x| / 127, round half to even) with the
    dequantised weight: what linear_q8 computes, up to float32 rounding."""
    xb = x.double().view(x.shape[0], -1, block)
    d = xb.abs().amax(-1, keepdim=True) / 127
    q = torch.where(d > 0, torch.round(xb / torch.where(d > 0, d, torch.ones_like(d))), torch.zeros_like(xb))
    return (q * d).view_as(x) @ dense.double().T


@pytest.mark.parametrize("fmt", Q8_FORMATS)
def test_linear_q8_numerics_and_row_invariance(fmt):
    """q8 compute: int8 activations per 32 (K-quants: per 256) values, exact integer sums; each row's
    output the same bits alone, in any block of rows and on any number of threads."""
    k, n = 512, 29
    blocks = torch.from_numpy(random_blocks(fmt, n, k, seed=4))
    dense = reference(blocks.numpy(), fmt).reshape(n, k)
    code = PACKED_TYPES[fmt]
    x = torch.randn(9, k, generator=torch.Generator().manual_seed(5))
    y = packed_ops.linear_q8(x, [blocks], [code])
    want = q8_reference(x, dense, 256 if fmt.endswith("_K") else 32)
    # float32 sums of K terms: within K * 2^-24 of the sum of the terms' magnitudes (Higham 3.1)
    bound = k * 2.0**-24 * (x.double().abs() @ dense.double().abs().T)
    assert ((y.double() - want).abs() <= bound).all()
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            for m in (1, 2, 5):
                assert torch.equal(packed_ops.linear_q8(x[:m], [blocks], [code]), y[:m])
            assert torch.equal(packed_ops.linear_q8(x[4:5], [blocks[:7], blocks[7:]], [code, code]), y[4:5])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("fmt", Q8_FORMATS)
def test_linear_q8_every_cpu_tier_gives_the_same_bits(fmt):
    """The AVX-512 VNNI kernels sum the same exact integers per lane as the AVX2 ones, then take the
    same float steps: every tier the machine runs gives the same bits, for M = 1 (the decoding
    kernel) and blocks of rows (the verification kernel), with a bias and with parts."""
    tiers = ops.available_cpu_isas()
    if len(tiers) < 2:
        pytest.skip(f"this CPU runs one kernel tier ({tiers[0]})")
    k, n = 1536, 37
    blocks = torch.from_numpy(random_blocks(fmt, n, k, seed=7))
    code = PACKED_TYPES[fmt]
    x = torch.randn(11, k, generator=torch.Generator().manual_seed(8)) * 3
    bias = torch.randn(n)
    results = {}
    for tier in tiers:
        with ops.use_cpu_isa(tier):
            results[tier] = [packed_ops.linear_q8(x[:m], [blocks], [code], bias) for m in (1, 3, 11)]
            results[tier].append(packed_ops.linear_q8(x[2:3], [blocks[:5], blocks[5:]], [code, code]))
    first = results[tiers[0]]
    for tier in tiers[1:]:
        for a, b in zip(first, results[tier], strict=True):
            assert torch.equal(a, b), tier


def test_cpu_isa_choice_is_checked():
    current = ops.cpu_isa()  # the detected tier, unless PYSPEC_CPU_ISA lowered it
    assert current in ops.available_cpu_isas()
    assert ops.available_cpu_isas()[-1] == torch.ops.pyspec.cpu_isa_detected()
    with pytest.raises(ValueError, match="unknown CPU kernel tier"):
        ops.set_cpu_isa("amx")
    for tier in set(CPU_ISAS) - set(ops.available_cpu_isas()):  # "generic" at least, on x86
        with pytest.raises(ValueError, match="run the kernel tiers"):
            ops.set_cpu_isa(tier)
        with pytest.raises(RuntimeError, match="run the kernel tiers"):  # the op checks alike
            torch.ops.pyspec.set_cpu_isa(tier)
    with ops.use_cpu_isa(ops.available_cpu_isas()[0]):
        assert ops.cpu_isa() == ops.available_cpu_isas()[0]
    assert ops.cpu_isa() == current
    env = {**os.environ, "PYSPEC_CPU_ISA": "avx9"}
    run = subprocess.run([sys.executable, "-c", "import pyspec"], env=env, capture_output=True, text=True)
    assert run.returncode != 0 and "PYSPEC_CPU_ISA=avx9: unknown CPU kernel tier" in run.stderr
    env["PYSPEC_CPU_ISA"] = "avx2"
    code = "import pyspec; print(pyspec.ops.cpu_isa())"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "avx2"


def test_linear_q8_rejects_formats_it_lacks():
    blocks = torch.from_numpy(random_blocks("Q5_K", 4, 256))
    with pytest.raises(RuntimeError, match="q8 compute takes"):
        packed_ops.linear_q8(torch.randn(1, 256), [blocks], [PACKED_TYPES["Q5_K"]])
    with pytest.raises(ValueError, match="needs packed=True"):
        pyspec.load_model("smollm2-135m-instruct", compute="q8", progress=False)


def test_q8_model_speculation_is_lossless_against_its_own_ar():
    """A q8 model is its own target: n-gram speculation gives its AR tokens exactly (row invariance)."""
    model = pyspec.load_model("smollm2-135m-instruct", packed=True, compute="q8", progress=False)
    assert model.layers[0].qkv_proj.weight.q8 and model.head_weight.q8
    prompts = ["List three prime numbers and explain why.", "def fibonacci(n):"]
    want = [o.tokens for o in pyspec.generate(model, prompts, max_new_tokens=32)]
    assert [o.tokens for o in pyspec.generate(model, prompts, max_new_tokens=32, drafts=["ngram"])] == want
    assert [pyspec.generate(model, p, max_new_tokens=32)[0].tokens for p in prompts] == want  # batch of 1


def test_packed_early_exit_draft_is_lossless(smollm2_pair):
    """An early-exit draft of a packed model shares its packed weights and drafts losslessly."""
    _, packed = smollm2_pair
    draft = packed.first_layers(8)
    assert draft.embed_tokens is packed.embed_tokens and draft.packed
    want = pyspec.generate(packed, "def add(a, b):", max_new_tokens=16)[0].tokens
    assert pyspec.generate(packed, "def add(a, b):", max_new_tokens=16, drafts=[draft])[0].tokens == want


@pytest.mark.parametrize("suffix", ["packed", "q8"])
def test_a_packed_or_q8_model_drafts_losslessly_for_an_fp32_target(smollm2_pair, suffix):
    """``name@packed`` / ``name@q8`` drafts load the model from its GGUF blocks; the fp32 target's
    tokens are unchanged (a q8 draft is another model: it only changes what is accepted)."""
    from pyspec.drafters.names import resolve_draft

    dense, _ = smollm2_pair
    draft = resolve_draft(dense, f"smollm2-135m-instruct@{suffix}")
    assert draft.packed and draft.weights_format == suffix and draft.name == f"smollm2-135m-instruct@{suffix}"
    prompt = "Write a haiku about the sea."
    want = pyspec.generate(dense, prompt, max_new_tokens=24)[0].tokens
    got = pyspec.generate(dense, prompt, max_new_tokens=24, drafts=[draft], block_sizes=[3])[0]
    assert got.tokens == want
