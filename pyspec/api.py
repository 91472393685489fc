"""pyspec's public entry points: load a model, generate text."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from pyspec.decoding.autoregressive import generate_autoregressive
from pyspec.decoding.output import GenerationOutput, StreamCallback
from pyspec.models.llama import LlamaModel
from pyspec.models.loading import load_config, load_tokenizer, load_weights, resolve
from pyspec.sampling import SamplingParams


def load_model(
    name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32, progress: bool = True
) -> LlamaModel:
    """Loads a model and its tokenizer (``model.tokenizer``, with its chat template).

    ``name_or_path``: a registry name (``smollm2-135m-instruct``, ``qwen2.5-coder-1.5b-instruct``), a
    GGUF file (converted once and cached, see :mod:`pyspec.models.loading`) or a Hugging Face folder
    with safetensors. Weights are the checkpoint's, dequantised; fp32 by default.

    Example:
        >>> model = load_model("smollm2-135m-instruct")  # doctest: +SKIP
        >>> chat = [{"role": "user", "content": "Hi"}]
        >>> model.tokenizer.apply_chat_template(chat, tokenize=False)  # doctest: +SKIP
    """
    folder = resolve(name_or_path, progress=progress)
    config = load_config(folder)
    with torch.device("meta"):  # no memory until the checkpoint's tensors are assigned
        model = LlamaModel(config)
    model.load_hf_state_dict(load_weights(folder))
    model.to(dtype)
    model.inv_freq = model.inv_freq.float()
    model.tokenizer = load_tokenizer(folder)
    model.name = str(name_or_path)
    model.folder = folder
    return model.eval()


def encode_prompts(model: LlamaModel, prompts: str | Sequence[str], chat: bool = True) -> list[list[int]]:
    """Token ids of each prompt; with ``chat``, wrapped in the model's chat template as a user turn."""
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    ids = []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"prompt {i} is empty")
        if chat and getattr(model.tokenizer, "chat_template", None):
            text = model.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            ids.append(model.tokenizer(text, add_special_tokens=False).input_ids)
        else:
            ids.append(model.tokenizer(text).input_ids)
    return ids


def generate(
    model: LlamaModel,
    prompts: str | Sequence[str],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    chat: bool = True,
    stream: StreamCallback | None = None,
) -> list[GenerationOutput]:
    """Generates a reply to each prompt; all prompts decode together in one ragged batch.

    Greedy by default (``temperature=0``); with sampling, ``seed`` makes each prompt's output
    reproducible (prompt i uses ``seed + i``). ``stop``: strings that end a reply. ``stream(i, text)``
    receives new text of prompt i as it is produced. Each output has ``.text``, ``.tokens``,
    ``.finish_reason`` and ``.stats``.

    Example:
        >>> model = load_model("smollm2-135m-instruct")  # doctest: +SKIP
        >>> generate(model, "Write a haiku about tea.", max_new_tokens=32)[0].text  # doctest: +SKIP
    """
    ids = encode_prompts(model, prompts, chat)
    params = [
        SamplingParams(temperature, top_k, top_p, None if seed is None else seed + i) for i in range(len(ids))
    ]
    return generate_autoregressive(model, ids, max_new_tokens, params, tuple(stop), stream)
