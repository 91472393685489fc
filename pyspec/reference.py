"""Plain-PyTorch reference of every op in :mod:`pyspec.ops`: the test oracle and the readable spec.

Same arguments and semantics as the compiled ops; written for clarity (a Python loop over sequences),
not speed. ``tree_attention`` computes in ``compute_dtype`` (float64 for error bounds in tests).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def slots_of(
    page_table_row: torch.Tensor, slots: torch.Tensor, page_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(page, row-in-page) of each logical slot of one sequence."""
    return page_table_row[slots // page_size].long(), slots % page_size


def gather_kv(cache: torch.Tensor, page_table_row: torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` slots of one sequence as a dense ``[length, kv_heads, head_dim]`` tensor."""
    pages, rows = slots_of(page_table_row, torch.arange(length, device=cache.device), cache.shape[1])
    return cache[pages, rows]


def paged_kv_append(k_cache, v_cache, k, v, qo_indptr, page_table, kv_lens) -> None:
    """Reference of :func:`pyspec.ops.paged_kv_append` (in place)."""
    for b in range(kv_lens.numel()):
        t0, t1 = int(qo_indptr[b]), int(qo_indptr[b + 1])
        slots = int(kv_lens[b]) + torch.arange(t1 - t0, device=k_cache.device)
        pages, rows = slots_of(page_table[b], slots, k_cache.shape[1])
        k_cache[pages, rows] = k[t0:t1]
        v_cache[pages, rows] = v[t0:t1]


def tree_attention(
    q,
    k_cache,
    v_cache,
    qo_indptr,
    page_table,
    kv_lens,
    tree_mask=None,
    scale=None,
    compute_dtype=torch.float32,
) -> torch.Tensor:
    """Reference of :func:`pyspec.ops.tree_attention`: gather the KV, dense mask, softmax."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    group = q.shape[1] // k_cache.shape[2]
    out = torch.zeros_like(q)
    mask_offset = 0
    for b in range(kv_lens.numel()):
        t0, t1 = int(qo_indptr[b]), int(qo_indptr[b + 1])
        n, committed = t1 - t0, int(kv_lens[b])
        if n == 0:
            continue
        if tree_mask is None:
            new_mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        else:
            new_mask = tree_mask[mask_offset : mask_offset + n * n].view(n, n)
            mask_offset += n * n
        visible = torch.cat([torch.ones(n, committed, dtype=torch.bool, device=q.device), new_mask], dim=1)
        k = gather_kv(k_cache, page_table[b], committed + n).to(compute_dtype).repeat_interleave(group, dim=1)
        v = gather_kv(v_cache, page_table[b], committed + n).to(compute_dtype).repeat_interleave(group, dim=1)
        qb = q[t0:t1].to(compute_dtype)
        scores = torch.einsum("ihd,jhd->hij", qb, k) * scale  # [heads, n, committed + n]
        scores = scores.masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row with no visible key outputs zeros
        out[t0:t1] = torch.einsum("hij,jhd->ihd", probs, v).to(q.dtype)
    return out


def kv_compact(k_cache, v_cache, kv_lens, page_table, accept_indptr, accept_nodes) -> None:
    """Reference of :func:`pyspec.ops.kv_compact` (in place, caches with or without a layer dim)."""
    kc = k_cache if k_cache.dim() == 5 else k_cache.unsqueeze(0)
    vc = v_cache if v_cache.dim() == 5 else v_cache.unsqueeze(0)
    page_size = kc.shape[2]
    for b in range(kv_lens.numel()):
        nodes = accept_nodes[int(accept_indptr[b]) : int(accept_indptr[b + 1])].long()
        base = int(kv_lens[b])
        src_pages, src_rows = slots_of(page_table[b], base + nodes, page_size)
        dst_slots = base + torch.arange(nodes.numel(), device=nodes.device)
        dst_pages, dst_rows = slots_of(page_table[b], dst_slots, page_size)
        kc[:, dst_pages, dst_rows] = kc[:, src_pages, src_rows].clone()
        vc[:, dst_pages, dst_rows] = vc[:, src_pages, src_rows].clone()
        kv_lens[b] += nodes.numel()


def copy_pages(k_cache, v_cache, src_pages, dst_pages) -> None:
    """Reference of :func:`pyspec.ops.copy_pages` (in place)."""
    page_dim = k_cache.dim() - 4
    k_cache.index_copy_(page_dim, dst_pages.long(), k_cache.index_select(page_dim, src_pages.long()))
    v_cache.index_copy_(page_dim, dst_pages.long(), v_cache.index_select(page_dim, src_pages.long()))


def rotary_embedding(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Reference of :func:`pyspec.ops.rotary_embedding`, as transformers' Llama/Qwen2 apply it."""
    freqs = positions.float()[:, None] * inv_freq.float()[None, :]  # [T, head_dim / 2]
    emb = torch.cat([freqs, freqs], dim=-1)[:, None, :]  # [T, 1, head_dim]
    xf = x.float()
    half = x.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * emb.cos() + rotated * emb.sin()).to(x.dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference of :func:`pyspec.ops.linear`: ``x @ weight.T + bias`` (its rows may differ in the last
    bits with M, which the op's do not)."""
    return F.linear(x, weight, bias)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Reference of :func:`pyspec.ops.rms_norm`: RMSNorm as transformers' Llama computes it (in fp32);
    differentiable, so training uses it too."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of :func:`pyspec.ops.add_rms_norm`: ``(rms_norm(x + residual), x + residual)``."""
    total = x + residual
    return rms_norm(total, weight, eps), total


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    """Reference of :func:`pyspec.ops.silu_mul`: ``silu(gate) * up`` of ``x = [gate | up]``."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def rope_kv_append(qkv, k_cache, v_cache, positions, inv_freq, qo_indptr, page_table, kv_lens, q_heads):
    """Reference of :func:`pyspec.ops.rope_kv_append` (with the plan's metadata spelled out): splits
    ``qkv`` into heads, rotates q and k, appends k and v; returns q ``[T, q_heads, head_dim]``."""
    kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    q, k, v = qkv.view(qkv.shape[0], q_heads + 2 * kv_heads, head_dim).split([q_heads, kv_heads, kv_heads], 1)
    paged_kv_append(
        k_cache, v_cache, rotary_embedding(k, positions, inv_freq), v, qo_indptr, page_table, kv_lens
    )
    return rotary_embedding(q, positions, inv_freq)
