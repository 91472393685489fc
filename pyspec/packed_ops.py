"""Ops over GGUF-packed weight rows: exact linear, q8 linear, row dequantisation; their wrappers and
fake kernels (beside :mod:`pyspec.ops`, whose device check they share; ``import pyspec`` loads both)."""

from __future__ import annotations

import torch

from pyspec import _C  # noqa: F401  (registers torch.ops.pyspec.*)
from pyspec.ops import _one_device, linear  # noqa: F401  (linear: used by the doctests)

__all__ = ["linear_packed", "linear_q8", "dequantize_rows"]


def linear_packed(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    qtypes: list[int],
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`linear` over GGUF-packed weight rows, bitwise equal to :func:`linear` over the weight that
    ``gguf.quants.dequantize`` gives (CPU, float32).

    ``x``: ``[M, K]`` float32. ``weights``: parts of the weight's rows in output order, each a uint8
    tensor ``[rows_i, K / block_values * block_bytes]`` of ggml blocks of type ``qtypes[i]`` (codes of
    ``gguf.GGMLQuantizationType``: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K). Several parts let a
    fused projection keep rows stored in different formats. Returns ``[M, sum rows_i]``. Each value is
    widened exactly and every output runs :func:`linear`'s fixed order, so the result does not depend
    on M, the parts or the threads.

    Example:
        >>> import gguf, numpy as np
        >>> w = torch.randn(8, 64)
        >>> packed = torch.from_numpy(gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q8_0))
        >>> x = torch.randn(3, 64)
        >>> y = linear_packed(x, [packed], [gguf.GGMLQuantizationType.Q8_0])
        >>> w8 = torch.from_numpy(gguf.quants.dequantize(packed.numpy(), gguf.GGMLQuantizationType.Q8_0))
        >>> torch.equal(y, linear(x, w8))
        True
    """
    return torch.ops.pyspec.linear_packed(x, weights, [int(q) for q in qtypes], bias)


def linear_q8(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    qtypes: list[int],
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`linear_packed` with llama.cpp-style numerics: each row of ``x`` quantised to int8 per 32
    values (``d = max|x| / 127``), exact integer dot products per weight sub-block, combined in float
    in a fixed order. Faster than the exact kernels and row invariant (a row's output does not depend
    on M, the other rows or the threads: lossless speculation holds), but not fp32: its tokens are a
    different target's. Formats: Q4_0, Q4_1, Q8_0, Q4_K, Q6_K (others: a clear error). CPU: AVX2, and
    AVX-512 VNNI kernels where the CPU has them (the same bits; see :mod:`pyspec.cpu_isa`).

    Example:
        >>> import gguf
        >>> q = gguf.GGMLQuantizationType.Q8_0
        >>> packed = torch.from_numpy(gguf.quants.quantize(torch.randn(8, 64).numpy(), q))
        >>> x = torch.randn(3, 64)
        >>> y = linear_q8(x, [packed], [q])
        >>> torch.equal(linear_q8(x[1:2], [packed], [q]), y[1:2])
        True
    """
    return torch.ops.pyspec.linear_q8(x, weights, [int(q) for q in qtypes], bias)


def dequantize_rows(weight: torch.Tensor, qtype: int, k: int, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` (int64 ``[n]``) of a GGUF-packed uint8 tensor of ggml type ``qtype`` holding rows of
    ``k`` values, widened to float32 ``[n, k]`` exactly as ``gguf.quants.dequantize`` does (an
    embedding lookup over packed weights). Out-of-range ids are an error.

    Example:
        >>> import gguf
        >>> w = torch.randn(4, 32)
        >>> q = gguf.GGMLQuantizationType.Q8_0
        >>> packed = torch.from_numpy(gguf.quants.quantize(w.numpy(), q))
        >>> rows = dequantize_rows(packed, q, 32, torch.tensor([3, 0]))
        >>> torch.equal(rows, torch.from_numpy(gguf.quants.dequantize(packed.numpy(), q))[[3, 0]])
        True
    """
    return torch.ops.pyspec.dequantize_rows(weight, int(qtype), k, ids)


@torch.library.register_fake("pyspec::linear_packed")
def _(x, weights, qtypes, bias):
    _one_device(x, *weights, bias)
    torch._check(x.dim() == 2, lambda: "pyspec: linear_packed needs x [M, K]")
    return x.new_empty(x.shape[0], sum(w.shape[0] for w in weights))


@torch.library.register_fake("pyspec::linear_q8")
def _(x, weights, qtypes, bias):
    _one_device(x, *weights, bias)
    torch._check(x.dim() == 2, lambda: "pyspec: linear_q8 needs x [M, K]")
    return x.new_empty(x.shape[0], sum(w.shape[0] for w in weights))


@torch.library.register_fake("pyspec::dequantize_rows")
def _(weight, qtype, k, ids):
    _one_device(weight, ids)
    return weight.new_empty(ids.shape[0], k, dtype=torch.float32)
