"""The architecture of a Llama-family model (Llama, SmolLM2, Qwen2), read from a Hugging Face config."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a Llama-family decoder (names as in Hugging Face ``config.json``).

    Example:
        >>> ModelConfig(vocab_size=10, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=1,
        ...             intermediate_size=16).head_dim
        4
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2: q/k/v projections carry a bias
    max_position_embeddings: int = 8192
    architecture: str = "llama"  # "llama" or "qwen2"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_hf(self) -> dict:
        """The equivalent Hugging Face ``config.json`` content."""
        arch = "Qwen2ForCausalLM" if self.architecture == "qwen2" else "LlamaForCausalLM"
        hf = {
            "architectures": [arch],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "intermediate_size": self.intermediate_size,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids),
        }
        if self.architecture == "llama":
            hf.update(attention_bias=self.attention_bias, mlp_bias=False, head_dim=self.head_dim)
        return hf

    @classmethod
    def from_hf(cls, hf: dict) -> ModelConfig:
        """Reads a Hugging Face ``config.json`` dict of a Llama or Qwen2 model."""
        model_type = hf.get("model_type", "llama")
        if model_type not in ("llama", "qwen2"):
            raise ValueError(f"unsupported model_type {model_type!r}: pyspec runs Llama and Qwen2 models")
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        rope_theta = hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0))
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
            intermediate_size=hf["intermediate_size"],
            rope_theta=float(rope_theta),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-5),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            attention_bias=model_type == "qwen2" or hf.get("attention_bias", False),
            max_position_embeddings=hf.get("max_position_embeddings", 8192),
            architecture=model_type,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )

    @classmethod
    def load(cls, folder: str | Path) -> ModelConfig:
        """Reads ``folder/config.json``."""
        return cls.from_hf(json.loads((Path(folder) / "config.json").read_text()))

    def to_json(self) -> str:
        return json.dumps(asdict(self))
