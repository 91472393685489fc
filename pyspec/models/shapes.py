"""The registry models' architectures, for timing their real shapes with random weights where the
weight packages cannot be installed (a GPU machine without network access): latency does not
depend on weight values. Outputs of such a model mean nothing: use it for
latency only, and take acceptance from a profile measured with the real weights.
"""

from __future__ import annotations

import torch

from pyspec.models.config import ModelConfig
from pyspec.models.llama import LlamaModel

SHAPES = {  # as read from the checkpoints by pyspec.models.loading.load_config (a test keeps them equal)
    "smollm2-135m-instruct": ModelConfig(
        vocab_size=49152,
        hidden_size=576,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        intermediate_size=1536,
        rope_theta=100000.0,
        rms_norm_eps=9.999999747378752e-06,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
        bos_token_id=1,
        eos_token_ids=(2, 0),
    ),
    "qwen2.5-coder-1.5b-instruct": ModelConfig(
        vocab_size=151936,
        hidden_size=1536,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        intermediate_size=8960,
        rope_theta=1000000.0,
        rms_norm_eps=9.999999974752427e-07,
        attention_bias=True,
        max_position_embeddings=32768,
        architecture="qwen2",
        bos_token_id=151643,
        eos_token_ids=(151645, 151643),
    ),
}


def random_model(
    name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> LlamaModel:
    """A registry model's architecture with random weights (normal, std 0.02; norms 1), for timing
    only: it has no tokenizer and its outputs are noise. ``model.name`` says so.

    Example:
        >>> random_model("smollm2-135m-instruct").config.num_layers
        30
    """
    if name not in SHAPES:
        raise ValueError(f"no stored shape for {name!r}; known: {sorted(SHAPES)}")
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaModel(SHAPES[name], name=name, random_weights=True).to(dtype)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    model.inv_freq = model.inv_freq.float()
    return model.eval()
