"""GGUF -> Hugging Face layout: config, dequantised fp32 tensors with Hugging Face names, tokenizer.

llama.cpp's converter permutes the rows of the q and k projections of Llama models for its
interleaved rotary layout; they are permuted back here so that the weights follow the Hugging Face
("rotate half") convention that pyspec's rotary op and transformers use. Qwen2 is stored unpermuted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pyspec.models.config import ModelConfig

# GGUF tensor name -> Hugging Face name ("{i}" is the layer index).
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>")


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def hf_name(gguf_name: str) -> str:
    """Hugging Face name of a GGUF tensor.

    Example:
        >>> hf_name("blk.3.attn_q.weight")
        'model.layers.3.self_attn.q_proj.weight'
    """
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    raise ValueError(f"unexpected GGUF tensor {gguf_name!r}")


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undoes llama.cpp's per-head row permutation of a q/k projection (weight [rows, cols], bias [rows])."""
    rows = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_head, rows // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


def read_config(reader, tokens: list[str]) -> ModelConfig:
    """Model hyper-parameters from GGUF metadata."""
    arch = _field(reader, "general.architecture")
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"unsupported GGUF architecture {arch!r}: pyspec runs llama and qwen2 models")
    names = {t.name for t in reader.tensors}
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    stops = [tokens.index(t) for t in _STOP_TOKENS if t in tokens]
    eos_ids = tuple(dict.fromkeys(([eos] if eos is not None else []) + stops))
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    return ModelConfig(
        vocab_size=len(tokens),
        hidden_size=int(_field(reader, f"{arch}.embedding_length")),
        num_layers=int(_field(reader, f"{arch}.block_count")),
        num_heads=heads,
        num_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
        intermediate_size=int(_field(reader, f"{arch}.feed_forward_length")),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rms_norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        tie_word_embeddings="output.weight" not in names,
        attention_bias=arch == "qwen2",
        max_position_embeddings=int(_field(reader, f"{arch}.context_length", 8192)),
        architecture=arch,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=eos_ids,
    )


def read_gguf_config(path: Path) -> ModelConfig:
    """A GGUF file's model configuration (no tensor data read)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return read_config(reader, list(_field(reader, "tokenizer.ggml.tokens", [])))


def convert_gguf(path: Path, progress: bool = True) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Reads a GGUF file: its config and every tensor dequantised to fp32 under its Hugging Face name."""
    import gguf
    from tqdm import tqdm

    reader = gguf.GGUFReader(str(path))
    tokens = list(_field(reader, "tokenizer.ggml.tokens", []))
    config = read_config(reader, tokens)
    state = {}
    for t in tqdm(reader.tensors, desc=f"converting {path.name}", unit="tensor", disable=not progress):
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape.tolist())])  # GGUF lists dims innermost first
        if config.architecture == "llama" and t.name.split(".")[-2] in ("attn_q", "attn_k"):
            w = unpermute_rotary(w, config.num_heads if ".attn_q." in t.name else config.num_kv_heads)
        state[hf_name(t.name)] = torch.from_numpy(np.array(w, dtype=np.float32, order="C"))  # a writable copy
    return config, state
