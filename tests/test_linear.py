"""linear: against an fp64 reference, row invariant (bitwise, whatever M and the threads), bad inputs."""

import pytest
import torch
from utils import DEVICES

from pyspec import ops, reference


def make(m, n, k, dtype=torch.float32, device="cpu", bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).to(dtype).to(device)
    w = (torch.randn(n, k, generator=gen) / k**0.5).to(dtype).to(device)
    b = torch.randn(n, generator=gen).to(dtype).to(device) if bias else None
    return x, w, b


def assert_close_to_fp64(y, x, w, b):
    """Every output is within the rounding bound of a float32 dot product, which holds for any
    summation order and so on any CPU: |fl(x.w + b) - (x.w + b)| <= gamma_{k+1} (|x|.|w| + |b|),
    gamma_n = n u / (1 - n u) (Higham, Accuracy and Stability of Numerical Algorithms, 3.1), plus
    the output's rounding to its dtype. Or, FlashAttention's rule, the op's error against fp64 is at
    most twice that of the plain-PyTorch reference (F.linear, this machine's BLAS) in the input's
    precision: that one only widens the check."""
    assert y.shape == (x.shape[0], w.shape[0]) and y.dtype == x.dtype and y.device == x.device
    if y.numel() == 0:
        return
    double = (x.double(), w.double(), None if b is None else b.double())
    exact = reference.linear(*double)
    magnitude = reference.linear(*(None if t is None else t.abs() for t in double))
    n = x.shape[1] + 1
    gamma = n * 2.0**-24 / (1 - n * 2.0**-24)  # float32 accumulation
    bound = gamma * magnitude + torch.finfo(y.dtype).eps / 2 * exact.abs() * (1 + gamma)
    err = (y.double() - exact).abs()
    plain_err = (reference.linear(x, w, b).double() - exact).abs().max().item()
    assert (err <= bound).all() or err.max().item() <= 2 * plain_err, (err.max().item(), plain_err)


DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


@pytest.mark.parametrize("device", DEVICES)
@DTYPES
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("n", [1, 3, 1000])
@pytest.mark.parametrize("k", [1, 7, 59, 576, 1111])
def test_matches_fp64_reference(device, dtype, bias, n, k):
    for m in (0, 1, 5, 17, 300):
        x, w, b = make(m, n, k, dtype, device, bias, seed=m)
        assert_close_to_fp64(ops.linear(x, w, b), x, w, b)


@pytest.mark.parametrize("device", [d for d in DEVICES if d != "cpu"])
def test_fp16_on_cuda(device):
    x, w, b = make(9, 70, 131, torch.float16, device)
    assert_close_to_fp64(ops.linear(x, w, b), x, w, b)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_k_gives_the_bias(device):
    x, w, b = make(3, 5, 0, device=device)
    assert torch.equal(ops.linear(x, w, b), b.expand(3, 5))
    assert torch.equal(ops.linear(x, w), torch.zeros(3, 5, device=device))


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("device", DEVICES)
@DTYPES
@pytest.mark.parametrize("n, k", [(7, 59), (1000, 576), (130, 1111)])
def test_rows_bitwise_independent_of_m_and_threads(device, dtype, n, k, restore_threads):
    """A row's output is the same bits computed alone (M = 1) or at any place in a block of M = 1..40
    rows, on 1 or 2 threads: verifying a block can never flip a near-tie that decoding would not."""
    x, w, b = make(80, n, k, dtype, device)
    torch.set_num_threads(2)
    alone = torch.cat([ops.linear(x[i : i + 1], w, b) for i in range(80)])
    for m in range(1, 41):
        start = (7 * m) % (80 - m)  # the rows sit at different places of the block for each m
        assert torch.equal(ops.linear(x[start : start + m], w, b), alone[start : start + m]), m
    torch.set_num_threads(1)
    for m in (1, 8, 40):
        assert torch.equal(ops.linear(x[:m], w, b), alone[:m]), m


@pytest.mark.parametrize("device", DEVICES)
def test_columns_bitwise_independent_of_n(device):
    """Outputs in full groups of four weight rows and in the last, partial group use the same sums."""
    x, w, b = make(7, 11, 83, device=device)
    y = ops.linear(x, w, b)
    for n in (1, 2, 3, 5, 9):
        assert torch.equal(ops.linear(x, w[:n], b[:n]), y[:, :n]), n
        assert torch.equal(ops.linear(x, w[-n:].contiguous(), b[-n:].contiguous()), y[:, -n:]), n


def test_large_block_matches_reference_with_threads(restore_threads):
    """Enough weight rows and x rows that both threads and every micro-kernel shape take part."""
    torch.set_num_threads(2)
    x, w, b = make(64, 4099, 576)
    y = ops.linear(x, w, b)
    assert_close_to_fp64(y, x, w, b)
    torch.set_num_threads(1)
    assert torch.equal(ops.linear(x, w, b), y)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_opcheck(device, bias):
    x, w, b = make(5, 12, 40, device=device, bias=bias)
    torch.library.opcheck(torch.ops.pyspec.linear, (x, w, b))


def call(**kw):
    x, w, b = make(4, 6, 10)
    args = dict(x=x, weight=w, bias=b)
    args.update(kw)
    ops.linear(**args)


F64, I32 = torch.float64, torch.int32
BAD = {
    "x dtype": (lambda: call(x=torch.zeros(4, 10, dtype=F64)), "x dtype"),
    "weight dtype": (
        lambda: call(x=torch.zeros(4, 10, dtype=F64), weight=torch.zeros(6, 10, dtype=F64), bias=None),
        "weight must be float32 or bfloat16",
    ),
    "int weight": (
        lambda: call(x=torch.zeros(4, 10, dtype=I32), weight=torch.zeros(6, 10, dtype=I32), bias=None),
        "weight must be float32 or bfloat16",
    ),
    "fp16 on cpu": (
        lambda: call(
            x=torch.zeros(4, 10).half(), weight=torch.zeros(6, 10).half(), bias=torch.zeros(6).half()
        ),
        "float16 on CUDA",
    ),
    "mixed dtypes": (lambda: call(weight=torch.zeros(6, 10).bfloat16(), bias=None), "x dtype"),
    "bias dtype": (lambda: call(bias=torch.zeros(6).bfloat16()), "bias dtype"),
    "x rank 1": (lambda: call(x=torch.zeros(10)), "x must be 2-D"),
    "x rank 3": (lambda: call(x=torch.zeros(2, 2, 10)), "x must be 2-D"),
    "weight rank": (lambda: call(weight=torch.zeros(60)), "weight must be 2-D"),
    "mismatched k": (lambda: call(weight=torch.zeros(6, 11)), r"weight must be \[N, 10\]"),
    "bias size": (lambda: call(bias=torch.zeros(5)), r"bias must be \[N = 6\]"),
    "bias rank": (lambda: call(bias=torch.zeros(6, 1)), r"bias must be \[N = 6\]"),
    "x not contiguous": (lambda: call(x=torch.zeros(10, 4).t()), "x must be contiguous"),
    "weight not contiguous": (lambda: call(weight=torch.zeros(10, 6).t()), "weight must be contiguous"),
    "bias not contiguous": (lambda: call(bias=torch.zeros(12)[::2]), "bias must be contiguous"),
    "device": (lambda: call(weight=torch.zeros(6, 10, device="meta")), "all arguments must be on one device"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_a_clear_error(case):
    fn, message = BAD[case]
    with pytest.raises(RuntimeError, match=message):
        fn()
