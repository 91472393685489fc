"""Low-rank adapters merged into a target: the APAR model (docs/papers.md §3).

APAR's control tokens ``[Fork]`` and ``[Child]`` are added to the tokenizer and to the embeddings (tied
with the head), and the adapter trained by ``python -m pyspec.training apar`` (peft's format: its
config and the LoRA and control-token weights, the delta only) is merged into the weights with
``peft``. The result is a plain :class:`LlamaModel` that every decoding mode runs.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from pyspec.models.llama import LlamaModel
from pyspec.models.loading import WEIGHTS_DIR, load_config, resolve

FORK, CHILD = "[Fork]", "[Child]"
TARGET = "smollm2-135m-instruct"


def hf_model_with_control_tokens(folder: Path, dtype: torch.dtype = torch.float32):
    """The model of ``folder`` as a ``transformers`` model and tokenizer, with ``[Fork]``/``[Child]``
    added (new embedding rows drawn from the old rows' mean and covariance)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.add_special_tokens({"additional_special_tokens": [FORK, CHILD]})
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer


def adapter_dir(name: str = TARGET) -> Path:
    """Where the APAR adapter of target ``name`` is shipped."""
    return WEIGHTS_DIR / name / "apar"


def load_apar_model(
    name: str = TARGET, adapter: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32
) -> LlamaModel:
    """The target fine-tuned for APAR: control tokens added and the adapter merged.

    ``model.control_tokens`` is ``(fork_id, child_id)``. Raises FileNotFoundError when the adapter
    is missing, and ValueError when it was trained for another vocabulary.

    Example:
        >>> model = load_apar_model()  # doctest: +SKIP
        >>> model.tokenizer.convert_ids_to_tokens(list(model.control_tokens))  # doctest: +SKIP
        ['[Fork]', '[Child]']
    """
    from peft import PeftConfig, PeftModel

    path = Path(adapter) if adapter is not None else adapter_dir(name)
    if not (path / "adapter_config.json").exists():
        raise FileNotFoundError(
            f"no APAR adapter at {path}; train one with: python -m pyspec.training apar --out {path}"
        )
    folder = resolve(name)
    base, tokenizer = hf_model_with_control_tokens(folder)
    PeftConfig.from_pretrained(str(path))  # a clear error for a broken config
    try:
        merged = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    except RuntimeError as err:  # shapes that do not fit this target
        raise ValueError(f"the adapter at {path} does not fit {name}: {err}") from err
    config = replace(load_config(folder), vocab_size=len(tokenizer))
    control_tokens = tuple(tokenizer.convert_tokens_to_ids([FORK, CHILD]))
    with torch.device("meta"):
        model = LlamaModel(
            config, name=f"{name}+apar", tokenizer=tokenizer, folder=folder, control_tokens=control_tokens
        )
    model.load_hf_state_dict({k: v.detach().float() for k, v in merged.state_dict().items()})
    model.to(dtype)
    model.inv_freq = model.inv_freq.float()
    return model.eval()
