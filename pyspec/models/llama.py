"""Llama-family decoder (Llama, SmolLM2, Qwen2) running on pyspec's ops over a ragged batch.

RMSNorm, rotary embeddings at explicit positions, grouped-query attention through the paged KV cache
(tree masks for speculative verification), SwiGLU, tied or separate head, Qwen2's q/k/v bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pyspec import ops
from pyspec.batch import StepBatch
from pyspec.kv_cache import PAGE_SIZE, PagedKVCache
from pyspec.models.config import ModelConfig
from pyspec.models.packed import PackedLinear, PackedWeight

# The ops of the per-layer path, bound once: no Python wrapper, no overload lookup per call. Every
# projection is pyspec's row-invariant linear, so a token's logits are bitwise the same whether it is
# decoded alone or verified inside a block (BLAS changes kernels with M).
_linear = torch.ops.pyspec.linear.default
_rms_norm = torch.ops.pyspec.rms_norm.default
_add_rms_norm = torch.ops.pyspec.add_rms_norm.default
_silu_mul = torch.ops.pyspec.silu_mul.default
_rope_kv_append = torch.ops.pyspec.rope_kv_append.default
_attention = torch.ops.pyspec.tree_attention_run.default
_linear_packed = torch.ops.pyspec.linear_packed.default
_linear_q8 = torch.ops.pyspec.linear_q8.default


def _project(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` for an fp32/bf16 weight or a :class:`PackedWeight` (exact: the bits of its
    dequantised tensor; or q8 compute, see :func:`pyspec.packed_ops.linear_q8`)."""
    if type(weight) is PackedWeight:
        return (_linear_q8 if weight.q8 else _linear_packed)(x, weight.parts, weight.qtypes, bias)
    return _linear(x, weight, bias)


def _set_weight(module: nn.Module, name: str, value) -> None:
    """``module.name = value``; a :class:`PackedWeight` takes a registered parameter's place as a plain
    attribute."""
    if isinstance(value, PackedWeight) and name in module._parameters:
        del module._parameters[name]
    setattr(module, name, value)


# Projections stored side by side in one weight (one matmul each): name -> (fused name, parts in order).
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def fuse_projections(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps separate ``q_proj``/``k_proj``/``v_proj`` and ``gate_proj``/``up_proj`` weights (and biases)
    of a state dict in pyspec's names to the fused ``qkv_proj`` and ``gate_up_proj`` the layers store
    (concatenated along the output dimension); other keys pass through.

    Example:
        >>> gate, up = torch.zeros(2, 3), torch.ones(2, 3)
        >>> s = fuse_projections({"0.gate_proj.weight": gate, "0.up_proj.weight": up})
        >>> list(s), s["0.gate_up_proj.weight"].shape
        (['0.gate_up_proj.weight'], torch.Size([4, 3]))
    """
    out = dict(state)
    for fused, parts in FUSED.items():
        for key in [k for k in state if k.endswith(f"{parts[0]}.weight") or k.endswith(f"{parts[0]}.bias")]:
            prefix, kind = key.removesuffix(f"{parts[0]}.weight"), "weight"
            if key.endswith(".bias"):
                prefix, kind = key.removesuffix(f"{parts[0]}.bias"), "bias"
            names = [f"{prefix}{part}.{kind}" for part in parts]
            missing = [n for n in names if n not in state]
            if missing:
                raise ValueError(f"cannot fuse {fused}: {missing} missing beside {key}")
            tensors = [out.pop(n) for n in names]
            packed = any(isinstance(t, PackedWeight) for t in tensors)
            if packed and not all(isinstance(t, PackedWeight) for t in tensors):
                raise ValueError(f"cannot fuse {fused}: {names} mix packed and unpacked weights")
            out[f"{prefix}{fused}.{kind}"] = PackedWeight.cat(tensors) if packed else torch.cat(tensors)
    return out


@dataclass
class ForwardOutput:
    """Logits of the rows asked for, and hidden states after chosen layers."""

    logits: torch.Tensor  # [R, vocab] for the requested rows
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [T, hidden]; -1 = final norm


class DecoderLayer(nn.Module):
    """One pre-norm block: attention through the paged cache, then SwiGLU.

    The q, k and v projections are one weight ``qkv_proj`` ``[(heads + 2 kv_heads) * head_dim, hidden]``
    and gate and up are one ``gate_up_proj`` ``[2 intermediate, hidden]``: decoding runs one matmul for
    each. Each output element of :func:`pyspec.ops.linear` depends only on its own weight row, so the
    fused projections give the bits of the separate ones. :meth:`projections` returns the parts as views.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, h, kv, hd = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        self.config = config
        self.input_layernorm = nn.Parameter(torch.ones(d), requires_grad=False)
        self.post_attention_layernorm = nn.Parameter(torch.ones(d), requires_grad=False)
        self.qkv_proj = nn.Linear(d, (h + 2 * kv) * hd, bias=config.attention_bias)
        self.o_proj = nn.Linear(h * hd, d, bias=False)
        self.gate_up_proj = nn.Linear(d, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, d, bias=False)

    def projections(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """``{name: (weight, bias)}`` of the seven projections under transformers' names (q_proj, k_proj,
        v_proj, o_proj, gate_proj, up_proj, down_proj); the fused ones as views (shared, not copied).
        Packed weights are given dequantised (fp32 copies)."""
        c = self.config
        q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        out = {}
        for fused, sizes in (("qkv_proj", (q, kv, kv)), ("gate_up_proj", (c.intermediate_size,) * 2)):
            module = getattr(self, fused)
            weights = module.weight.split(sizes)
            biases = module.bias.split(sizes) if module.bias is not None else (None,) * len(sizes)
            out.update(zip(FUSED[fused], zip(weights, biases, strict=True), strict=True))
        dense = lambda w: w.dequantize() if isinstance(w, PackedWeight) else w  # noqa: E731
        out["o_proj"] = (dense(self.o_proj.weight), None)
        out["down_proj"] = (dense(self.down_proj.weight), None)
        return out

    def forward(self, x, residual, batch: StepBatch, plan, k_cache, v_cache, inv_freq, scale: float):
        """``x [T, hidden]``: the previous layer's output before its residual add (the embeddings, with
        ``residual`` None, at the first layer). Returns ``(out, residual)``; the layer's output hidden
        state is their sum, which the next layer's fused add + norm computes."""
        eps = self.config.rms_norm_eps
        if residual is None:
            h, residual = _rms_norm(x, self.input_layernorm, eps), x
        else:
            h, residual = _add_rms_norm(x, residual, self.input_layernorm, eps)
        qkv = _project(h, self.qkv_proj.weight, self.qkv_proj.bias)  # [T, (heads + 2 kv_heads) * head_dim]
        q = _rope_kv_append(
            qkv, k_cache, v_cache, batch.positions, inv_freq, plan.handle
        )  # [T, heads, head_dim]
        attn = _attention(q, k_cache, v_cache, plan.handle, scale)  # [T, heads, head_dim]
        o = _project(attn.view(attn.shape[0], -1), self.o_proj.weight, None)
        h, residual = _add_rms_norm(o, residual, self.post_attention_layernorm, eps)
        gate_up = _project(h, self.gate_up_proj.weight, None)  # [T, 2 intermediate]
        return _project(_silu_mul(gate_up), self.down_proj.weight, None), residual


class LlamaModel(nn.Module):
    """A Llama-family causal LM whose forward takes a :class:`StepBatch` and a :class:`PagedKVCache`.

    Besides its weights, a model says what it is (:func:`pyspec.models.loading.load_model` sets these):

    - ``name``: how plans, profiles, stats and trained drafts (``pyspec/weights/<name>/``) know it: the
      registry name or path it was loaded from (``"@q8"`` appended for q8 compute, another target),
      ``"<target>[:N]"`` for an early exit; ``"model"`` when built by hand;
    - ``tokenizer``: its transformers tokenizer with the chat template (None: ids only);
    - ``folder``: the Hugging Face-style folder its config, tokenizer and (unpacked) weights came from;
    - ``source``: the name or path it was loaded from (a packed model's GGUF is found through it);
    - ``control_tokens``: APAR's ``(fork_id, child_id)`` (:func:`pyspec.models.adapters.load_apar_model`),
      else None;
    - ``random_weights``: True for a registry architecture with random weights, for timing only
      (:func:`pyspec.models.shapes.random_model`);
    - its numerics: :attr:`weights_format` (fp32, bf16, GGUF blocks kept packed, or q8 compute), read
      from the weights themselves.

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

    def __init__(
        self,
        config: ModelConfig,
        *,
        name: str = "model",
        tokenizer=None,
        folder: Path | None = None,
        source: str | None = None,
        control_tokens: tuple[int, int] | None = None,
        random_weights: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.name = name
        self.tokenizer = tokenizer
        self.folder = folder
        self.source = source
        self.control_tokens = control_tokens
        self.random_weights = random_weights
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
    def head_weight(self) -> torch.Tensor | PackedWeight:
        return self.embed_tokens if self.lm_head is None else self.lm_head

    @property
    def packed(self) -> bool:
        """Whether the weights are kept in GGUF blocks (:mod:`pyspec.models.packed`)."""
        return isinstance(self.embed_tokens, PackedWeight) or isinstance(
            self.layers[0].qkv_proj, PackedLinear
        )

    @property
    def weights_format(self) -> str:
        """How the weights are held: ``"packed"`` (GGUF blocks, exact), ``"q8"`` (GGUF blocks, int8
        activations: another target) or the dtype (``"float32"``, ``"bfloat16"``)."""
        head = self.head_weight
        if isinstance(head, PackedWeight):
            return "q8" if head.q8 else "packed"
        if self.packed:
            return "packed"
        return str(self.embed_tokens.dtype).removeprefix("torch.")

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The embeddings ``[T, hidden]`` of ``tokens [T]``."""
        if isinstance(self.embed_tokens, PackedWeight):
            return self.embed_tokens.embed(tokens)
        return F.embedding(tokens, self.embed_tokens)

    def set_shortlist(self, token_ids: torch.Tensor | None) -> None:
        """Scores only ``token_ids`` (a draft's frequency-ranked vocabulary); the other logits are -inf.
        The head's cost shrinks in proportion. ``None`` restores the full head."""
        self.shortlist = None if token_ids is None else token_ids.long()
        self._shortlist_weight = None if token_ids is None else self.head_weight[self.shortlist].contiguous()

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[R, vocab]`` of final normalised states ``x [R, hidden]``."""
        if self.shortlist is None:
            return _project(x, self.head_weight, None)
        out = x.new_full((x.shape[0], self.config.vocab_size), float("-inf"))
        out[:, self.shortlist] = _project(x, self._shortlist_weight, None)
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
            draft = LlamaModel(
                replace(self.config, num_layers=0),
                name=f"{self.name}[:{num_layers}]",
                tokenizer=self.tokenizer,
            )
        draft.config = replace(self.config, num_layers=num_layers)
        for name in ("embed_tokens", "norm", "lm_head"):
            _set_weight(draft, name, getattr(self, name))
        draft.layers = nn.ModuleList(self.layers[:num_layers])
        draft.inv_freq = self.inv_freq
        return draft.eval()

    def new_cache(self, num_pages: int, page_size: int = PAGE_SIZE) -> PagedKVCache:
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
        embedded = self.embed(batch.tokens)  # [T, hidden]
        x, hidden = self.run_layers(batch, cache, embedded, hidden_layers=hidden_layers)
        x = _rms_norm(x, self.norm, self.config.rms_norm_eps)
        if -1 in hidden_layers:
            hidden[-1] = x
        rows = batch.last_rows() if logits_rows is None else logits_rows
        return ForwardOutput(logits=self.head(x[rows]), hidden=hidden)

    def run_layers(
        self,
        batch: StepBatch,
        cache: PagedKVCache,
        x: torch.Tensor,
        start: int = 0,
        stop: int | None = None,
        hidden_layers: tuple[int, ...] = (),
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Runs layers ``[start, stop)`` on the hidden states ``x [T, hidden]`` of ``batch``'s new tokens,
        writing their K/V; returns the output hidden states ``[T, hidden]`` (before the final norm) and
        ``{layer: [T, hidden]}`` after the layers in ``hidden_layers``.

        The batch's attention metadata is validated and planned once here
        (:func:`pyspec.ops.plan_tree_attention`); every layer then runs on the plan.
        """
        c = self.config
        plan = ops.plan_tree_attention(
            cache.k, cache.v, batch.qo_indptr, batch.page_table, batch.kv_lens, batch.tree_mask, c.num_heads
        )
        scale = 1.0 / math.sqrt(c.head_dim)
        pools = cache.layers()
        residual, hidden = None, {}
        for i in range(start, len(self.layers) if stop is None else stop):
            k_cache, v_cache = pools[i]
            x, residual = self.layers[i](x, residual, batch, plan, k_cache, v_cache, self.inv_freq, scale)
            if i in hidden_layers:
                hidden[i] = x + residual
        if residual is not None:
            x = x + residual
        return x, hidden

    def _assign_packed(self, key: str, weight: PackedWeight, state: dict) -> None:
        """Puts a packed weight in place: a projection becomes a :class:`PackedLinear` (its bias, still in
        ``state``, loads with the other tensors); the embedding or head a plain attribute."""
        if key in ("embed_tokens", "lm_head"):
            if key == "lm_head" and self.lm_head is None:
                return
            _set_weight(self, key, weight)
            return
        path, _, kind = key.rpartition(".")
        if kind != "weight":
            raise ValueError(f"a packed tensor must be a weight, got {key}")
        parent, _, name = path.rpartition(".")
        bias = state.get(f"{path}.bias")
        setattr(self.get_submodule(parent), name, PackedLinear(weight, bias))

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Loads weights named as in transformers' LlamaForCausalLM / Qwen2ForCausalLM; weights given as
        :class:`PackedWeight` stay packed."""
        ours = {}
        for name, tensor in state.items():
            key = name.removeprefix("model.")
            key = key.replace("self_attn.", "").replace("mlp.", "")
            key = key.replace("layernorm.weight", "layernorm").replace("embed_tokens.weight", "embed_tokens")
            key = {"norm.weight": "norm", "lm_head.weight": "lm_head"}.get(key, key)
            ours[key] = tensor
        if self.lm_head is None:
            ours.pop("lm_head", None)
        ours = fuse_projections(ours)
        for key in [k for k, v in ours.items() if isinstance(v, PackedWeight)]:
            self._assign_packed(key, ours.pop(key), ours)
        missing, unexpected = self.load_state_dict(ours, strict=False, assign=True)
        if missing or unexpected:
            raise ValueError(
                f"weights do not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
