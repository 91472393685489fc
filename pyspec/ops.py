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
A forward pass validates its batch's metadata once (:func:`plan_tree_attention`); the per-layer ops
that take the plan (:func:`run_tree_attention`, :func:`rope_kv_append`) check only that their
tensors fit it.
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
    "plan_tree_attention",
    "run_tree_attention",
    "rope_kv_append",
    "rms_norm",
    "add_rms_norm",
    "silu_mul",
    "kv_compact",
    "copy_pages",
    "rotary_embedding",
    "rope_inv_freq",
    "linear",
    "cpu_isa",
    "set_cpu_isa",
    "available_cpu_isas",
    "use_cpu_isa",
]


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
    return torch.ops.pyspec.linear(x, weight, bias)


class AttentionPlan:
    """A batch's validated attention plan (from :func:`plan_tree_attention`), held by its handle in
    the extension; released when this object is garbage collected. ``handle`` is what the per-layer
    ops take; ``num_tokens`` and ``q_heads`` are the sizes it was made for."""

    __slots__ = ("handle",)

    def __init__(self, handle: int) -> None:
        self.handle = handle

    @property
    def num_tokens(self) -> int:
        return torch.ops.pyspec.tree_attention_plan_shape(self.handle)[0]

    @property
    def q_heads(self) -> int:
        return torch.ops.pyspec.tree_attention_plan_shape(self.handle)[1]

    def metadata(self):
        """Copies of the validated ``(qo_indptr, page_table, kv_lens, tree_mask)``."""
        return torch.ops.pyspec.tree_attention_plan_metadata(self.handle)

    def __del__(self) -> None:
        torch.ops.pyspec.tree_attention_release(self.handle)

    def __repr__(self) -> str:
        return f"AttentionPlan(num_tokens={self.num_tokens}, q_heads={self.q_heads})"


def plan_tree_attention(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    qo_indptr: torch.Tensor,
    page_table: torch.Tensor,
    kv_lens: torch.Tensor,
    tree_mask: torch.Tensor | None,
    q_heads: int,
) -> AttentionPlan:
    """Validates a ragged batch's attention metadata once and plans the work of every layer's
    attention (FlashInfer's plan/run split): the checks of :func:`tree_attention` (page indices in
    range, pages covering every sequence's committed + new slots, the mask's size) run here, and the
    plan keeps its own copies, so the per-layer ops only check that their tensors fit it.

    ``k_cache``, ``v_cache``: one layer's pools or all layers' ``[num_layers, num_pages, ...]``; the
    other arguments as in :func:`tree_attention`; ``q_heads``: query heads (a multiple of kv heads).

    Example:
        >>> kc = torch.randn(2, 16, 1, 64); vc = torch.randn_like(kc)
        >>> plan = plan_tree_attention(kc, vc, torch.tensor([0, 2], dtype=torch.int32),
        ...                            torch.tensor([[1, 0]], dtype=torch.int32),
        ...                            torch.tensor([20], dtype=torch.int32), None, q_heads=3)
        >>> plan.num_tokens
        2
    """
    return AttentionPlan(
        torch.ops.pyspec.tree_attention_plan(
            k_cache, v_cache, qo_indptr, page_table, kv_lens, tree_mask, q_heads
        )
    )


def run_tree_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    plan: AttentionPlan,
    scale: float | None = None,
) -> torch.Tensor:
    """:func:`tree_attention` of one layer on a plan from :func:`plan_tree_attention`: the same bits,
    without re-validating the metadata. ``q``: ``[plan.num_tokens, q_heads, head_dim]``; the pools
    must have the plan's geometry, dtype and device.

    Example:
        >>> kc = torch.randn(2, 16, 1, 64); vc = torch.randn_like(kc); q = torch.randn(2, 3, 64)
        >>> args = (torch.tensor([0, 2], dtype=torch.int32), torch.tensor([[1, 0]], dtype=torch.int32),
        ...         torch.tensor([20], dtype=torch.int32))
        >>> plan = plan_tree_attention(kc, vc, *args, None, q_heads=3)
        >>> torch.equal(run_tree_attention(q, kc, vc, plan), tree_attention(q, kc, vc, *args))
        True
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    return torch.ops.pyspec.tree_attention_run(q, k_cache, v_cache, plan.handle, scale)


def rope_kv_append(
    qkv: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    plan: AttentionPlan,
) -> torch.Tensor:
    """The step after a fused q/k/v projection, in one call: ``qkv [T, (q_heads + 2 kv_heads) *
    head_dim]`` (each token's q heads, then k heads, then v heads) is split, q and k are rotated
    (:func:`rotary_embedding`), and k and v are written at each token's KV slot (as
    :func:`paged_kv_append` on the plan's metadata). Returns the rotated q ``[T, q_heads, head_dim]``.
    Bitwise the same as the separate ops.

    Example:
        >>> kc = torch.zeros(2, 16, 1, 8); vc = torch.zeros_like(kc)
        >>> meta = (torch.tensor([0, 1], dtype=torch.int32), torch.tensor([[0]], dtype=torch.int32),
        ...         torch.tensor([3], dtype=torch.int32))
        >>> plan = plan_tree_attention(kc, vc, *meta, None, q_heads=2)
        >>> qkv = torch.randn(1, (2 + 2) * 8); pos = torch.tensor([3]); inv = rope_inv_freq(8, 10000.0)
        >>> q = rope_kv_append(qkv, kc, vc, pos, inv, plan)
        >>> q.shape, torch.equal(vc[0, 3, 0], qkv[0, 24:])
        (torch.Size([1, 2, 8]), True)
    """
    return torch.ops.pyspec.rope_kv_append(qkv, k_cache, v_cache, positions, inv_freq, plan.handle)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of each row of ``x [T, D]`` (float32 or bfloat16) times ``weight [D]``, rounded as
    transformers' Llama rounds it. Each row's sum of squares runs in one fixed order that depends only
    on D, so a row's result is the same bits alone or in a batch, on any number of threads.

    Example:
        >>> x = torch.randn(3, 64); w = torch.ones(64)
        >>> torch.equal(rms_norm(x[1:2], w, 1e-5), rms_norm(x, w, 1e-5)[1:2])
        True
    """
    return torch.ops.pyspec.rms_norm(x, weight, eps)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x + residual), x + residual)`` in one pass over the rows: the residual add of a
    decoder layer fused with the next norm. Shapes and numerics as :func:`rms_norm`.

    Example:
        >>> x, r, w = torch.randn(2, 64), torch.randn(2, 64), torch.ones(64)
        >>> normed, total = add_rms_norm(x, r, w, 1e-5)
        >>> torch.equal(total, x + r), torch.equal(normed, rms_norm(x + r, w, 1e-5))
        (True, True)
    """
    return torch.ops.pyspec.add_rms_norm(x, residual, weight, eps)


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU's activation of a fused gate/up projection: ``x [T, 2I] = [gate | up]`` gives
    ``silu(gate) * up [T, I]``, each element on its own (batch invariant).

    Example:
        >>> x = torch.randn(2, 8)
        >>> torch.allclose(silu_mul(x), torch.nn.functional.silu(x[:, :4]) * x[:, 4:])
        True
    """
    return torch.ops.pyspec.silu_mul(x)


# Fake kernels: shapes only, so torch.compile and FakeTensor tracing go through the ops.


def _one_device(*tensors: torch.Tensor | None) -> None:
    """The fake kernels' device check: under meta or fake tensors, arguments that the real kernels would
    refuse for sitting on different devices are refused here too."""
    devices = {t.device for t in tensors if t is not None}
    torch._check(
        len(devices) <= 1,
        lambda: f"pyspec: arguments are on {sorted(map(str, devices))}; all arguments must be on one device",
    )


@torch.library.register_fake("pyspec::paged_kv_append")
def _(k_cache, v_cache, k, v, qo_indptr, page_table, kv_lens):
    _one_device(k_cache, v_cache, k, v, qo_indptr, page_table, kv_lens)
    torch._check(k.shape == v.shape, lambda: "pyspec: k and v must have the same shape")
    torch._check(
        k.shape[1:] == k_cache.shape[2:], lambda: "pyspec: k must be [T, kv_heads, head_dim] of the cache"
    )
    return None


@torch.library.register_fake("pyspec::tree_attention")
def _(q, k_cache, v_cache, qo_indptr, page_table, kv_lens, tree_mask, scale):
    _one_device(q, k_cache, v_cache, qo_indptr, page_table, kv_lens, tree_mask)
    torch._check(
        q.dim() == 3 and q.shape[2] == k_cache.shape[3], lambda: "pyspec: q must be [T, heads, head_dim]"
    )
    torch._check(q.shape[1] % k_cache.shape[2] == 0, lambda: "pyspec: q heads must be a multiple of kv heads")
    return torch.empty_like(q)


@torch.library.register_fake("pyspec::kv_compact")
def _(k_cache, v_cache, kv_lens, page_table, accept_indptr, accept_nodes):
    _one_device(k_cache, v_cache, kv_lens, page_table, accept_indptr, accept_nodes)
    torch._check(
        accept_indptr.shape[0] == kv_lens.shape[0] + 1, lambda: "pyspec: accept_indptr must be [B + 1]"
    )
    return None


@torch.library.register_fake("pyspec::copy_pages")
def _(k_cache, v_cache, src_pages, dst_pages):
    _one_device(k_cache, v_cache, src_pages, dst_pages)
    torch._check(src_pages.shape == dst_pages.shape, lambda: "pyspec: src_pages and dst_pages must match")
    return None


@torch.library.register_fake("pyspec::rotary_embedding")
def _(x, positions, inv_freq):
    _one_device(x, positions, inv_freq)
    torch._check(
        x.dim() == 3 and positions.shape[0] == x.shape[0], lambda: "pyspec: x must be [T, heads, dim]"
    )
    return torch.empty_like(x)


@torch.library.register_fake("pyspec::linear")
def _(x, weight, bias):
    _one_device(x, weight, bias)
    torch._check(
        x.dim() == 2 and weight.dim() == 2 and x.shape[1] == weight.shape[1],
        lambda: "pyspec: linear needs x [M, K] and weight [N, K]",
    )
    torch._check(
        bias is None or (bias.dim() == 1 and bias.shape[0] == weight.shape[0]),
        lambda: "pyspec: bias must be [N]",
    )
    return x.new_empty(x.shape[0], weight.shape[0])


@torch.library.register_fake("pyspec::tree_attention_run")
def _(q, k_cache, v_cache, plan, scale):
    _one_device(q, k_cache, v_cache)
    return torch.empty_like(q)


@torch.library.register_fake("pyspec::rope_kv_append")
def _(qkv, k_cache, v_cache, positions, inv_freq, plan):
    _one_device(qkv, k_cache, v_cache, positions, inv_freq)
    kv_heads, head_dim = k_cache.shape[-2], k_cache.shape[-1]
    return qkv.new_empty(qkv.shape[0], qkv.shape[1] // head_dim - 2 * kv_heads, head_dim)


@torch.library.register_fake("pyspec::rms_norm")
def _(x, weight, eps):
    _one_device(x, weight)
    torch._check(
        x.dim() == 2 and weight.shape == x.shape[1:], lambda: "pyspec: rms_norm needs x [T, D], weight [D]"
    )
    return torch.empty_like(x)


@torch.library.register_fake("pyspec::add_rms_norm")
def _(x, residual, weight, eps):
    _one_device(x, residual, weight)
    torch._check(residual.shape == x.shape, lambda: "pyspec: residual must have the shape of x")
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.register_fake("pyspec::silu_mul")
def _(x):
    torch._check(x.dim() == 2 and x.shape[1] % 2 == 0, lambda: "pyspec: silu_mul needs x [T, 2I]")
    return x.new_empty(x.shape[0], x.shape[1] // 2)


# CUDA: the per-layer ops on a plan run as compositions of the CUDA ops (validated per call; the
# plan-once CUDA kernels are future work), and the elementwise ops as their PyTorch references.


@torch.library.impl("pyspec::tree_attention_run", "CUDA")
def _(q, k_cache, v_cache, plan, scale):
    return torch.ops.pyspec.tree_attention(
        q, k_cache, v_cache, *torch.ops.pyspec.tree_attention_plan_metadata(plan), scale
    )


@torch.library.impl("pyspec::rope_kv_append", "CUDA")
def _(qkv, k_cache, v_cache, positions, inv_freq, plan):
    kv_heads, head_dim = k_cache.shape[-2], k_cache.shape[-1]
    heads = qkv.view(qkv.shape[0], -1, head_dim)
    qo_indptr, page_table, kv_lens, _ = torch.ops.pyspec.tree_attention_plan_metadata(plan)
    q_heads = heads.shape[1] - 2 * kv_heads
    q, k, v = heads.split([q_heads, kv_heads, kv_heads], dim=1)
    k = torch.ops.pyspec.rotary_embedding(k.contiguous(), positions, inv_freq)
    torch.ops.pyspec.paged_kv_append(k_cache, v_cache, k, v.contiguous(), qo_indptr, page_table, kv_lens)
    return torch.ops.pyspec.rotary_embedding(q.contiguous(), positions, inv_freq)


@torch.library.impl("pyspec::rms_norm", "CUDA")
def _(x, weight, eps):
    from pyspec import reference

    return reference.rms_norm(x, weight, eps)


@torch.library.impl("pyspec::add_rms_norm", "CUDA")
def _(x, residual, weight, eps):
    from pyspec import reference

    return reference.add_rms_norm(x, residual, weight, eps)


@torch.library.impl("pyspec::silu_mul", "CUDA")
def _(x):
    from pyspec import reference

    return reference.silu_mul(x)


from pyspec.cpu_isa import available_cpu_isas, cpu_isa, set_cpu_isa, use_cpu_isa  # noqa: E402  (re-exported)
