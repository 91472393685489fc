"""Draft names: the one parser every entry point uses (``generate``, ``plan``, ``profile``, the CLI).

Accepted, for a target model:

- ``"ngram"``: prompt lookup (the bottom level of a stack);
- ``"early:N"``: the target's first N layers (with its final norm and head);
- a trained draft of the target, shipped in ``pyspec/weights/<target>/``: ``"draft-lm-1l"``,
  ``"draft-lm-3l"`` (levels of a stack), ``"medusa"``, ``"hidden-transfer"`` (future-token heads,
  the only draft of a stack);
- another model: a registry name, a ``.gguf`` file or a Hugging Face folder (what
  :func:`pyspec.load_model` takes), with a suffix for how its weights load (:data:`PRECISIONS`):
  ``"@bf16"`` bfloat16, ``"@packed"`` its GGUF blocks kept packed, ``"@q8"`` packed with int8
  activations (a draft's numerics change how often it is right, never the output).

Example:
    >>> parse_draft("early:20")
    ('early', 20)
    >>> parse_draft("smollm2-135m-instruct@bf16")
    ('model', 'smollm2-135m-instruct', 'bf16')
    >>> PRECISIONS["q8"]
    {'packed': True, 'compute': 'q8'}
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pyspec.drafters.trained import HEADS, load_draft_model
from pyspec.models.llama import LlamaModel
from pyspec.models.loading import ModelNotFoundError, load_model

# A model draft's suffix -> pyspec.load_model's keyword arguments.
PRECISIONS: dict[str, dict] = {
    "bf16": {"dtype": torch.bfloat16},
    "packed": {"packed": True},
    "q8": {"packed": True, "compute": "q8"},
}

ACCEPTED = (
    "'ngram', 'early:N' (the target's first N layers), a trained 'draft-lm-1l' / 'draft-lm-3l', "
    "'medusa' or 'hidden-transfer' (alone), or a model: a registry name, a .gguf file or a Hugging Face "
    "folder, with '@bf16' (bfloat16), '@packed' (GGUF blocks) or '@q8' (GGUF blocks, int8 activations)"
)


def parse_draft(name: str) -> tuple:
    """What a draft name means, without loading anything: ``("ngram",)``, ``("early", N)``,
    ``("trained", name)`` or ``("model", name_or_path, precision)`` (precision ``""`` or a key of
    :data:`PRECISIONS`).
    Raises ValueError, listing what is accepted, for anything else."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a draft name must be a non-empty string, got {name!r}; use {ACCEPTED}")
    if name == "ngram":
        return ("ngram",)
    if name.startswith("early:"):
        count = name.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"bad draft {name!r}: 'early:N' takes a number of layers N >= 1")
        return ("early", int(count))
    if name in HEADS or name.startswith("draft-lm-"):
        return ("trained", name)
    base, at, precision = name.rpartition("@") if "@" in name else (name, "", "")
    if at and precision not in PRECISIONS:
        suffixes = ", ".join(f"'@{p}'" for p in PRECISIONS)
        raise ValueError(f"bad draft {name!r}: the precision suffixes are {suffixes}")
    return ("model", base, precision)


def resolve_draft(
    target: LlamaModel, name: str | LlamaModel, load: Callable[..., LlamaModel] | None = None
) -> LlamaModel | str:
    """The draft ``name`` for ``target``: ``"ngram"``, ``"medusa"`` and ``"hidden-transfer"`` stay
    names (the stack builds them); everything else becomes a model. A model passes through.
    ``load(name_or_path, **PRECISIONS[suffix])`` loads another model (default
    :func:`pyspec.load_model`; the planner passes a cached one). Raises ValueError listing what is
    accepted, FileNotFoundError for a trained draft that is not shipped for this target.

    Example:
        >>> resolve_draft(target, "early:8").config.num_layers  # doctest: +SKIP
        8
    """
    if isinstance(name, LlamaModel):
        return name
    kind, *rest = parse_draft(name)
    if kind == "ngram" or (kind == "trained" and name in HEADS):
        return name
    if kind == "early":
        try:
            return target.first_layers(rest[0])
        except ValueError as e:
            raise ValueError(f"bad draft {name!r}: {e}") from None
    if kind == "trained":
        return load_draft_model(target, name)
    path, precision = rest
    try:
        draft = (load or load_model)(path, **PRECISIONS.get(precision, {}))
    except ModelNotFoundError as e:
        raise ValueError(f"unknown draft {name!r}: use {ACCEPTED} ({e})") from None
    if precision:
        draft.name = f"{path}@{precision}"  # how plans and profiles name it
    return draft
