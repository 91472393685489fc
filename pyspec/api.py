"""pyspec's public entry points: load a model, generate text."""

from __future__ import annotations

import os

import torch

from pyspec.models.llama import LlamaModel
from pyspec.models.loading import load_config, load_tokenizer, load_weights, resolve


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32, progress: bool = True) -> LlamaModel:
    """Loads a model and its tokenizer (``model.tokenizer``, with its chat template).

    ``name_or_path``: a registry name (``smollm2-135m-instruct``, ``qwen2.5-coder-1.5b-instruct``), a
    GGUF file (converted once and cached, see :mod:`pyspec.models.loading`) or a Hugging Face folder
    with safetensors. Weights are the checkpoint's, dequantised; fp32 by default.

    Example:
        >>> model = load_model("smollm2-135m-instruct")  # doctest: +SKIP
        >>> model.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)  # doctest: +SKIP
    """
    folder = resolve(name_or_path, progress=progress)
    config = load_config(folder)
    model = LlamaModel(config)
    model.load_hf_state_dict(load_weights(folder))
    model.to(dtype)
    model.inv_freq = model.inv_freq.float()
    model.tokenizer = load_tokenizer(folder)
    model.name = str(name_or_path)
    model.folder = folder
    return model.eval()
