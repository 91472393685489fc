"""Drafts trained for a target, by name: the weights shipped in ``pyspec/weights/<target>/``.

- ``"draft-lm-1l"``, ``"draft-lm-3l"``: draft language models (a model level, any place in a stack);
- ``"medusa"``, ``"hidden-transfer"``: future-token heads, drafting from the target's own pass (the
  only draft of a stack).

Each weights file has a JSON manifest next to it (training command, data split, steps, tokens seen,
losses, source commit); ``python -m pyspec.training`` reproduces them.

Example:
    >>> trained_drafts(load_model("smollm2-135m-instruct"))  # doctest: +SKIP
    ['draft-lm-1l', 'draft-lm-3l', 'hidden-transfer', 'medusa']
"""

from __future__ import annotations

from pathlib import Path

from pyspec.drafters.heads import FutureHeads
from pyspec.models.llama import LlamaModel
from pyspec.models.loading import WEIGHTS_DIR

HEADS = ("medusa", "hidden-transfer")


def weights_path(target: LlamaModel, name: str) -> Path:
    """Where the trained draft ``name`` of ``target`` lives (it may not exist)."""
    return WEIGHTS_DIR / target.name / f"{name}.safetensors"


def trained_drafts(target: LlamaModel) -> list[str]:
    """Names of the drafts trained for ``target``."""
    folder = WEIGHTS_DIR / target.name
    return sorted(p.stem for p in folder.glob("*.safetensors")) if folder.is_dir() else []


def _missing(target: LlamaModel, name: str) -> FileNotFoundError:
    have = trained_drafts(target)
    return FileNotFoundError(
        f"no trained draft {name!r} for {target.name}: "
        f"{'available: ' + ', '.join(have) if have else 'none is shipped'} "
        "(train one with python -m pyspec.training)"
    )


def load_heads(target: LlamaModel, name: str) -> FutureHeads:
    """The trained Medusa heads or hidden-transfer layers ``name`` of ``target``."""
    path = weights_path(target, name)
    if not path.exists():
        raise _missing(target, name)
    return FutureHeads.load(path)


def load_draft_model(target: LlamaModel, name: str) -> LlamaModel:
    """The trained draft LM ``name`` of ``target`` (sharing its embedding and head)."""
    from pyspec.models.draft_lm import load_draft_lm

    path = weights_path(target, name)
    if not path.exists():
        raise _missing(target, name)
    return load_draft_lm(target, path)
