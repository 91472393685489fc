"""pyspec's compiled ops: thin wrappers over ``torch.ops.pyspec.*`` and their fake (meta) kernels.

Vocabulary (see docs/design.md):

- KV pools ``k_cache``, ``v_cache``: ``[num_pages, page_size, kv_heads, head_dim]`` for one layer
  (``kv_compact`` and ``copy_pages`` also take ``[num_layers, num_pages, ...]`` to act on all layers).
- Ragged batch: the new tokens of B sequences concatenated; ``qo_indptr`` int32 ``[B + 1]``: sequence b
  owns rows ``qo_indptr[b]:qo_indptr[b + 1]``.
- ``page_table`` int32 ``[B, max_pages]``: slot s of sequence b is row ``s % page_size`` of page
  ``page_table[b, s // page_size]``. ``kv_lens`` int32 ``[B]``: committed length of each sequence.
- New token i of sequence b has its K/V at slot ``kv_lens[b] + i`` (written by :func:`paged_kv_append`).

Every op checks its arguments and raises ``RuntimeError`` with the argument's name on bad input.
The plain-PyTorch specification of each op is the function of the same name in :mod:`pyspec.reference`.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import torch

_BUILD_INFO = Path(__file__).with_name("_C_build.json")


def _check_cpu(build_info: Path = _BUILD_INFO, cpuinfo: str = "/proc/cpuinfo") -> None:
    """Raises ImportError, instead of the SIGILL of the first kernel, where this x86_64 CPU lacks a
    feature pyspec._C was compiled for (``cpu_flags`` in ``_C_build.json``, written by setup.py:
    avx2, fma, f16c for the default x86-64-v3 build; none for PYSPEC_NATIVE=1). Cheap: one small file
    and the first ``flags`` line of /proc/cpuinfo (elsewhere torch's CPU capability stands in)."""
    try:
        info = json.loads(build_info.read_text())
    except (OSError, ValueError):
        return  # built without setup.py (CMake) or by an older one: nothing recorded
    needed = info.get("cpu_flags") or []
    if not needed or platform.machine().lower() not in ("x86_64", "amd64"):
        return
    try:
        with open(cpuinfo) as f:
            have = next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), None)
    except OSError:
        have = None
    if have is None:  # no /proc/cpuinfo: torch's AVX2 capability means AVX2 and FMA
        capability = torch.backends.cpu.get_cpu_capability()
        have = set(needed) if capability in ("AVX2", "AVX512") else set()
    missing = [flag for flag in needed if flag not in have]
    if missing:
        raise ImportError(
            f"pyspec._C was compiled with -march={info.get('march')}, which needs the CPU features "
            f"{', '.join(needed)}; this CPU lacks {', '.join(missing)}. Rebuild pyspec from source for "
            "this machine: PYSPEC_NATIVE=1 pip install --no-build-isolation . (in a pyspec checkout)"
        )


_check_cpu()

from pyspec import _C  # noqa: E402, F401  (registers torch.ops.pyspec.*)

__all__ = [
    "paged_kv_append",
    "tree_attention",
    "kv_compact",
    "copy_pages",
    "rotary_embedding",
    "rope_inv_freq",
    "linear",
]


def _check_devices(**tensors: torch.Tensor | None) -> None:
    """All tensor arguments of an op must be on one device (the kernels never move data)."""
    named = [(name, t.device) for name, t in tensors.items() if t is not None]
    for name, device in named[1:]:
        if device != named[0][1]:
            raise RuntimeError(
                f"pyspec: {name} is on {device} but {named[0][0]} is on {named[0][1]}; "
                "all arguments must be on one device"
            )


def paged_kv_append(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    qo_indptr: torch.Tensor,
    page_table: torch.Tensor,
    kv_lens: torch.Tensor,
) -> None:
    """Writes the K/V of a ragged batch of new tokens into each sequence's pages at its own length.

    ``k``, ``v``: ``[T, kv_heads, head_dim]``. Token i of sequence b goes to slot ``kv_lens[b] + i``;
    no padding, no alignment across sequences. ``kv_lens`` is not changed (the caller commits).

    Example:
        >>> kc = torch.zeros(4, 16, 2, 64); vc = torch.zeros_like(kc)
        >>> k = torch.randn(3, 2, 64); indptr = torch.tensor([0, 1, 3], dtype=torch.int32)
        >>> table = torch.tensor([[0], [2]], dtype=torch.int32)
        >>> lens = torch.tensor([5, 0], dtype=torch.int32)
        >>> paged_kv_append(kc, vc, k, k, indptr, table, lens)
        >>> bool((kc[0, 5] == k[0]).all() and (kc[2, 1] == k[2]).all())
        True
    """
    _check_devices(
        k_cache=k_cache,
        v_cache=v_cache,
        k=k,
        v=v,
        qo_indptr=qo_indptr,
        page_table=page_table,
        kv_lens=kv_lens,
    )
    torch.ops.pyspec.paged_kv_append(k_cache, v_cache, k, v, qo_indptr, page_table, kv_lens)


def tree_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    qo_indptr: torch.Tensor,
    page_table: torch.Tensor,
    kv_lens: torch.Tensor,
    tree_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of a ragged batch of new tokens over a paged KV cache, with a tree mask.

    ``q``: ``[T, q_heads, head_dim]`` (q_heads a multiple of kv_heads: grouped-query attention).
    New token i of sequence b sees the committed slots ``[0, kv_lens[b])`` and the new tokens j of
    its sequence with ``mask_b[i, j]``; ``tree_mask`` is every sequence's ``[n_b, n_b]`` bool mask
    flattened and concatenated (see :func:`pyspec.tree.pack_tree_masks`); ``None`` means causal (a
    chain). The new tokens' K/V must already be in the cache (:func:`paged_kv_append`).
    ``scale`` defaults to ``1 / sqrt(head_dim)``. Returns ``[T, q_heads, head_dim]``.

    A row's result is bitwise the same whatever else is in the batch, and a tree node's equals the
    result of decoding it alone once its ancestors are committed.

    Example:
        >>> kc = torch.randn(2, 16, 1, 64); vc = torch.randn_like(kc)
        >>> q = torch.randn(2, 3, 64); indptr = torch.tensor([0, 2], dtype=torch.int32)
        >>> table = torch.tensor([[1, 0]], dtype=torch.int32); lens = torch.tensor([20], dtype=torch.int32)
        >>> tree_attention(q, kc, vc, indptr, table, lens).shape
        torch.Size([2, 3, 64])
    """
    _check_devices(
        k_cache=k_cache,
        v_cache=v_cache,
        q=q,
        qo_indptr=qo_indptr,
        page_table=page_table,
        kv_lens=kv_lens,
        tree_mask=tree_mask,
    )
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    return torch.ops.pyspec.tree_attention(
        q, k_cache, v_cache, qo_indptr, page_table, kv_lens, tree_mask, scale
    )


def kv_compact(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_lens: torch.Tensor,
    page_table: torch.Tensor,
    accept_indptr: torch.Tensor,
    accept_nodes: torch.Tensor,
) -> None:
    """Keeps only the accepted path of each sequence's verified tree, in place, for all sequences.

    Node j of sequence b sits at slot ``kv_lens[b] + j``. The accepted nodes
    ``accept_nodes[accept_indptr[b]:accept_indptr[b + 1]]`` (strictly increasing) move to the slots
    right after the committed prefix, and ``kv_lens[b]`` grows by their number. Caches may carry a
    leading layer dimension to compact every layer in one call.

    Example:
        >>> kc = torch.randn(1, 8, 1, 4); vc = kc.clone(); lens = torch.tensor([2], dtype=torch.int32)
        >>> node3 = kc[0, 2 + 3].clone()
        >>> kv_compact(kc, vc, lens, torch.tensor([[0]], dtype=torch.int32),
        ...            torch.tensor([0, 2], dtype=torch.int32), torch.tensor([0, 3], dtype=torch.int32))
        >>> bool((kc[0, 3] == node3).all()), int(lens[0])
        (True, 4)
    """
    _check_devices(
        k_cache=k_cache,
        v_cache=v_cache,
        kv_lens=kv_lens,
        page_table=page_table,
        accept_indptr=accept_indptr,
        accept_nodes=accept_nodes,
    )
    torch.ops.pyspec.kv_compact(k_cache, v_cache, kv_lens, page_table, accept_indptr, accept_nodes)


def copy_pages(
    k_cache: torch.Tensor, v_cache: torch.Tensor, src_pages: torch.Tensor, dst_pages: torch.Tensor
) -> None:
    """Copies whole pages ``src_pages[i] -> dst_pages[i]`` (all layers when the cache has a layer dim).

    Used for copy-on-write of a shared, partly filled page. Destinations must be distinct and not
    sources.

    Example:
        >>> kc = torch.randn(3, 4, 1, 8); vc = torch.randn_like(kc)
        >>> copy_pages(kc, vc, torch.tensor([0], dtype=torch.int32), torch.tensor([2], dtype=torch.int32))
        >>> bool((kc[2] == kc[0]).all())
        True
    """
    _check_devices(k_cache=k_cache, v_cache=v_cache, src_pages=src_pages, dst_pages=dst_pages)
    torch.ops.pyspec.copy_pages(k_cache, v_cache, src_pages, dst_pages)


def rotary_embedding(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding at explicit positions, Llama/Qwen2 ("rotate half") convention.

    ``x``: ``[T, heads, head_dim]``; ``positions``: int64 ``[T]`` (a tree node's position is the
    committed length plus its depth); ``inv_freq``: float32 ``[head_dim / 2]`` (:func:`rope_inv_freq`).

    Example:
        >>> x = torch.randn(3, 2, 8)
        >>> out = rotary_embedding(x, torch.tensor([0, 1, 2]), rope_inv_freq(8, 10000.0))
        >>> torch.equal(out[0], x[0])  # position 0 is the identity
        True
    """
    _check_devices(x=x, positions=positions, inv_freq=inv_freq)
    return torch.ops.pyspec.rotary_embedding(x, positions, inv_freq)


def rope_inv_freq(head_dim: int, base: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Inverse frequencies ``base ** (-2i / head_dim)`` in float32, computed as transformers does.

    Example:
        >>> rope_inv_freq(4, 10000.0)
        tensor([1.0000, 0.0100])
    """
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (base**exponent)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` with each output row bitwise independent of the other rows.

    ``x``: ``[M, K]``; ``weight``: ``[N, K]`` (``nn.Linear`` layout); ``bias``: ``[N]`` or ``None``; all
    contiguous, one dtype: float32 or bfloat16 (accumulated in float32), also float16 on CUDA. Returns
    ``[M, N]``. Every output is computed in one fixed order that depends only on K, so a token's logits
    are the same bits alone or inside a block of verified tokens, on any number of threads. On the CPU
    the weight is streamed once for all M rows: a few rows cost little more than one.

    Example:
        >>> x = torch.randn(5, 64); w = torch.randn(3, 64); b = torch.randn(3)
        >>> y = linear(x, w, b)
        >>> y.shape, torch.equal(linear(x[2:3], w, b), y[2:3])
        (torch.Size([5, 3]), True)
    """
    _check_devices(x=x, weight=weight, bias=bias)
    return torch.ops.pyspec.linear(x, weight, bias)


# Fake kernels: shapes only, so torch.compile and FakeTensor tracing go through the ops.


@torch.library.register_fake("pyspec::paged_kv_append")
def _(k_cache, v_cache, k, v, qo_indptr, page_table, kv_lens):
    torch._check(k.shape == v.shape, lambda: "pyspec: k and v must have the same shape")
    torch._check(
        k.shape[1:] == k_cache.shape[2:], lambda: "pyspec: k must be [T, kv_heads, head_dim] of the cache"
    )
    return None


@torch.library.register_fake("pyspec::tree_attention")
def _(q, k_cache, v_cache, qo_indptr, page_table, kv_lens, tree_mask, scale):
    torch._check(
        q.dim() == 3 and q.shape[2] == k_cache.shape[3], lambda: "pyspec: q must be [T, heads, head_dim]"
    )
    torch._check(q.shape[1] % k_cache.shape[2] == 0, lambda: "pyspec: q heads must be a multiple of kv heads")
    return torch.empty_like(q)


@torch.library.register_fake("pyspec::kv_compact")
def _(k_cache, v_cache, kv_lens, page_table, accept_indptr, accept_nodes):
    torch._check(
        accept_indptr.shape[0] == kv_lens.shape[0] + 1, lambda: "pyspec: accept_indptr must be [B + 1]"
    )
    return None


@torch.library.register_fake("pyspec::copy_pages")
def _(k_cache, v_cache, src_pages, dst_pages):
    torch._check(src_pages.shape == dst_pages.shape, lambda: "pyspec: src_pages and dst_pages must match")
    return None


@torch.library.register_fake("pyspec::rotary_embedding")
def _(x, positions, inv_freq):
    torch._check(
        x.dim() == 3 and positions.shape[0] == x.shape[0], lambda: "pyspec: x must be [T, heads, dim]"
    )
    return torch.empty_like(x)


@torch.library.register_fake("pyspec::linear")
def _(x, weight, bias):
    torch._check(
        x.dim() == 2 and weight.dim() == 2 and x.shape[1] == weight.shape[1],
        lambda: "pyspec: linear needs x [M, K] and weight [N, K]",
    )
    torch._check(
        bias is None or (bias.dim() == 1 and bias.shape[0] == weight.shape[0]),
        lambda: "pyspec: bias must be [N]",
    )
    return x.new_empty(x.shape[0], weight.shape[0])
