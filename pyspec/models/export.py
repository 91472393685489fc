"""A pyspec model as a ``transformers`` model with the same weights, so that transformers' own tools
(assisted generation) can run pyspec's drafts: an early exit (``target.first_layers(N)``) or a trained
draft LM (:mod:`pyspec.models.draft_lm`, with its shortlisted head).
"""

from __future__ import annotations

import os
import warnings

import torch

from pyspec.models.llama import LlamaModel


def hf_state_dict(model: LlamaModel) -> dict[str, torch.Tensor]:
    """``model``'s weights under transformers' Llama / Qwen2 names (the inverse of
    :meth:`LlamaModel.load_hf_state_dict`); tensors shared, not copied."""
    state = {"model.embed_tokens.weight": model.embed_tokens, "model.norm.weight": model.norm}
    if model.lm_head is not None:
        state["lm_head.weight"] = model.lm_head
    for i, layer in enumerate(model.layers):
        prefix = f"model.layers.{i}."
        state[prefix + "input_layernorm.weight"] = layer.input_layernorm
        state[prefix + "post_attention_layernorm.weight"] = layer.post_attention_layernorm
        for name, (weight, bias) in layer.projections().items():
            group = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            state[f"{prefix}{group}.{name}.weight"] = weight
            if bias is not None:
                state[f"{prefix}{group}.{name}.bias"] = bias
    return state


def to_transformers(model: LlamaModel, folder: str | os.PathLike):
    """``model`` as a ``transformers`` causal LM (fp32, eval mode): the architecture and settings of
    the checkpoint in ``folder`` (the target's Hugging Face folder) with ``model``'s number of layers
    and weights. A shortlisted head (a trained draft LM's) scores only its shortlist there too: the
    other logits are -inf, as in :meth:`LlamaModel.head`.

    Example:
        >>> draft = resolve_draft(target, "draft-lm-1l")  # doctest: +SKIP
        >>> assistant = to_transformers(draft, target.folder)  # doctest: +SKIP
        >>> hf_target.generate(ids, assistant_model=assistant)  # doctest: +SKIP
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder), num_hidden_layers=model.config.num_layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.detach().float() for k, v in hf_state_dict(model).items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(
            f"{folder} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if config.tie_word_embeddings:
        hf.tie_weights()
    if model.shortlist is not None:
        mask = torch.full((config.vocab_size,), float("-inf"))
        mask[model.shortlist] = 0.0
        hf.lm_head.register_forward_hook(lambda module, inputs, logits: logits + mask)
    return hf.eval()
