"""Llama-family decoder (Llama, SmolLM2, Qwen2) running on pyspec's ops over a ragged batch.

RMSNorm, rotary embeddings at explicit positions, grouped-query attention through the paged KV cache
(tree masks for speculative verification), SwiGLU, tied or separate head, Qwen2's q/k/v bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from pyspec import ops
from pyspec.batch import StepBatch
from pyspec.kv_cache import PagedKVCache
from pyspec.models.config import ModelConfig


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The matmul every projection uses: pyspec's row-invariant kernel, so a token's logits are bitwise
    the same whether it is decoded alone or verified inside a block (BLAS changes kernels with M)."""
    return ops.linear(x, weight, bias)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as transformers' Llama computes it (in fp32)."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@dataclass
class ForwardOutput:
    """Logits of the rows asked for, and hidden states after chosen layers."""

    logits: torch.Tensor  # [R, vocab] for the requested rows
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [T, hidden]; -1 = final norm


class DecoderLayer(nn.Module):
    """One pre-norm block: attention through the paged cache, then SwiGLU."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, h, kv, hd = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        self.config = config
        self.input_layernorm = nn.Parameter(torch.ones(d), requires_grad=False)
        self.post_attention_layernorm = nn.Parameter(torch.ones(d), requires_grad=False)
        self.q_proj = nn.Linear(d, h * hd, bias=config.attention_bias)
        self.k_proj = nn.Linear(d, kv * hd, bias=config.attention_bias)
        self.v_proj = nn.Linear(d, kv * hd, bias=config.attention_bias)
        self.o_proj = nn.Linear(h * hd, d, bias=False)
        self.gate_proj = nn.Linear(d, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(d, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, d, bias=False)

    def forward(self, x, batch: StepBatch, k_cache, v_cache, inv_freq) -> torch.Tensor:
        c = self.config
        T = x.shape[0]
        h = rms_norm(x, self.input_layernorm, c.rms_norm_eps)
        q = linear(h, self.q_proj.weight, self.q_proj.bias).view(T, c.num_heads, c.head_dim)
        k = linear(h, self.k_proj.weight, self.k_proj.bias).view(T, c.num_kv_heads, c.head_dim)
        v = linear(h, self.v_proj.weight, self.v_proj.bias).view(T, c.num_kv_heads, c.head_dim)
        q = ops.rotary_embedding(q, batch.positions, inv_freq)
        k = ops.rotary_embedding(k, batch.positions, inv_freq)
        ops.paged_kv_append(
            k_cache, v_cache, k, v.contiguous(), batch.qo_indptr, batch.page_table, batch.kv_lens
        )
        attn = ops.tree_attention(
            q, k_cache, v_cache, batch.qo_indptr, batch.page_table, batch.kv_lens, batch.tree_mask
        )  # [T, heads, head_dim]
        x = x + linear(attn.view(T, -1), self.o_proj.weight)
        h = rms_norm(x, self.post_attention_layernorm, c.rms_norm_eps)
        gate = linear(h, self.gate_proj.weight)
        up = linear(h, self.up_proj.weight)
        return x + linear(F.silu(gate) * up, self.down_proj.weight)


class LlamaModel(nn.Module):
    """A Llama-family causal LM whose forward takes a :class:`StepBatch` and a :class:`PagedKVCache`.

    Example (random weights, for shapes only):
        >>> cfg = ModelConfig(vocab_size=32, hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=2,
        ...                   intermediate_size=32)
        >>> model = LlamaModel(cfg)
        >>> cache = model.new_cache(num_pages=8, page_size=4)
        >>> seq = cache.add_sequence()
        >>> batch = StepBatch.build(cache, [seq], [[1, 2, 3]])
        >>> model(batch, cache).logits.shape
        torch.Size([1, 32])
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Parameter(
            torch.zeros(config.vocab_size, config.hidden_size), requires_grad=False
        )
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = nn.Parameter(torch.ones(config.hidden_size), requires_grad=False)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Parameter(torch.zeros(config.vocab_size, config.hidden_size), requires_grad=False)
        )
        self.register_buffer(
            "inv_freq", ops.rope_inv_freq(config.head_dim, config.rope_theta), persistent=False
        )
        self.shortlist: torch.Tensor | None = None  # [V'] token ids the head scores; None: all
        self.requires_grad_(False)

    @property
    def head_weight(self) -> torch.Tensor:
        return self.embed_tokens if self.lm_head is None else self.lm_head

    def set_shortlist(self, token_ids: torch.Tensor | None) -> None:
        """Scores only ``token_ids`` (a draft's frequency-ranked vocabulary); the other logits are -inf.
        The head's cost shrinks in proportion. ``None`` restores the full head."""
        self.shortlist = None if token_ids is None else token_ids.long()
        self._shortlist_weight = None if token_ids is None else self.head_weight[self.shortlist].contiguous()

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[R, vocab]`` of final normalised states ``x [R, hidden]``."""
        if self.shortlist is None:
            return linear(x, self.head_weight)
        out = x.new_full((x.shape[0], self.config.vocab_size), float("-inf"))
        out[:, self.shortlist] = linear(x, self._shortlist_weight)
        return out

    def first_layers(self, num_layers: int) -> LlamaModel:
        """An early-exit draft: this model's first ``num_layers`` layers, final norm and head (weights
        shared, not copied). A same-vocabulary draft built from the target, for tests and until
        trained drafts exist.

        Example:
            >>> cfg = ModelConfig(vocab_size=32, hidden_size=16, num_layers=4, num_heads=4, num_kv_heads=2,
            ...                   intermediate_size=32)
            >>> LlamaModel(cfg).first_layers(1).config.num_layers
            1
        """
        if not 1 <= num_layers <= self.config.num_layers:
            raise ValueError(f"num_layers must be in [1, {self.config.num_layers}], got {num_layers}")
        with torch.device("meta"):
            draft = LlamaModel(replace(self.config, num_layers=0))
        draft.config = replace(self.config, num_layers=num_layers)
        draft.embed_tokens, draft.norm, draft.lm_head = self.embed_tokens, self.norm, self.lm_head
        draft.layers = nn.ModuleList(self.layers[:num_layers])
        draft.inv_freq = self.inv_freq
        draft.tokenizer = getattr(self, "tokenizer", None)
        draft.name = f"{getattr(self, 'name', 'model')}[:{num_layers}]"
        return draft.eval()

    def new_cache(self, num_pages: int, page_size: int = 16) -> PagedKVCache:
        """An empty paged KV cache shaped for this model (same dtype and device)."""
        c = self.config
        return PagedKVCache(
            c.num_layers,
            num_pages,
            page_size,
            c.num_kv_heads,
            c.head_dim,
            dtype=self.embed_tokens.dtype,
            device=self.embed_tokens.device,
        )

    def forward(
        self,
        batch: StepBatch,
        cache: PagedKVCache,
        logits_rows: torch.Tensor | None = None,
        hidden_layers: tuple[int, ...] = (),
    ) -> ForwardOutput:
        """Runs the new tokens of every sequence, writing their K/V into ``cache`` (not committed).

        ``logits_rows``: rows of the batch to score (default: each sequence's last new token).
        ``hidden_layers``: layer indices whose output hidden states to return ([T, hidden]); -1 is
        the final normalised hidden state (the head's input).
        """
        x = F.embedding(batch.tokens, self.embed_tokens)  # [T, hidden]
        hidden = {}
        for i, layer in enumerate(self.layers):
            x = layer(x, batch, cache.k[i], cache.v[i], self.inv_freq)
            if i in hidden_layers:
                hidden[i] = x
        x = rms_norm(x, self.norm, self.config.rms_norm_eps)
        if -1 in hidden_layers:
            hidden[-1] = x
        rows = batch.last_rows() if logits_rows is None else logits_rows
        return ForwardOutput(logits=self.head(x[rows]), hidden=hidden)

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Loads weights named as in transformers' LlamaForCausalLM / Qwen2ForCausalLM."""
        ours = {}
        for name, tensor in state.items():
            key = name.removeprefix("model.")
            key = key.replace("self_attn.", "").replace("mlp.", "")
            key = key.replace("layernorm.weight", "layernorm").replace("embed_tokens.weight", "embed_tokens")
            key = {"norm.weight": "norm", "lm_head.weight": "lm_head"}.get(key, key)
            ours[key] = tensor
        if self.lm_head is None:
            ours.pop("lm_head", None)
        missing, unexpected = self.load_state_dict(ours, strict=False, assign=True)
        if missing or unexpected:
            raise ValueError(
                f"weights do not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
