"""A differentiable forward of :class:`~pyspec.models.llama.DecoderLayer` weights in plain PyTorch, for
training: batches of padded-free, equal-length sequences, explicit attention masks, no KV cache.

The runtime path (:mod:`pyspec.models.llama`) runs pyspec's ops, which have no autograd; training
reads the same weights through these functions (tests check both agree).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyspec.models.llama import DecoderLayer
from pyspec.reference import rms_norm, rotary_embedding


def project(layer: DecoderLayer, x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor):
    """Queries, keys and values of ``x [B, T, D]`` at ``positions [T]`` (rotary applied):
    ``q [B, heads, T, hd]``, ``k, v [B, kv_heads, T, hd]``."""
    c = layer.config
    B, T, _ = x.shape
    proj = layer.projections()
    h = rms_norm(x, layer.input_layernorm, c.rms_norm_eps)
    q = F.linear(h, *proj["q_proj"]).view(B * T, c.num_heads, c.head_dim)
    k = F.linear(h, *proj["k_proj"]).view(B * T, c.num_kv_heads, c.head_dim)
    v = F.linear(h, *proj["v_proj"]).view(B, T, c.num_kv_heads, c.head_dim)
    pos = positions.repeat(B)
    q = rotary_embedding(q, pos, inv_freq).view(B, T, c.num_heads, c.head_dim)
    k = rotary_embedding(k, pos, inv_freq).view(B, T, c.num_kv_heads, c.head_dim)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention: ``q [B, H, Tq, hd]`` over ``k, v [B, KV, Tk, hd]``; ``mask [Tq, Tk]``
    (True: may attend) or None for causal. Returns ``[B, Tq, H * hd]``."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
    B, H, T, hd = out.shape
    return out.transpose(1, 2).reshape(B, T, H * hd)


def finish(layer: DecoderLayer, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """The rest of the block after attention: output projection, residual, SwiGLU, residual."""
    c = layer.config
    x = x + F.linear(attn, layer.o_proj.weight)
    h = rms_norm(x, layer.post_attention_layernorm, c.rms_norm_eps)
    gate, up = layer.projections()["gate_proj"][0], layer.projections()["up_proj"][0]
    return x + F.linear(F.silu(F.linear(h, gate)) * F.linear(h, up), layer.down_proj.weight)


def causal_layers(
    layers, x: torch.Tensor, inv_freq: torch.Tensor, keep: tuple[int, ...] = ()
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Runs ``x [B, T, D]`` (positions 0..T-1) through ``layers`` with causal attention; returns the
    output and the outputs after the layers whose indices are in ``keep``."""
    positions = torch.arange(x.shape[1], device=x.device)
    kept = {}
    for i, layer in enumerate(layers):
        q, k, v = project(layer, x, positions, inv_freq)
        x = finish(layer, x, attend(q, k, v, None))
        if i in keep:
            kept[i] = x
    return x, kept
