"""Draft language models trained for a target: a few decoder layers of the target's shape on its frozen
embedding and head (shared, not copied), with their own final norm and a shortlisted head (see
:mod:`pyspec.drafters.heads`). Saved as safetensors of the layers, the norm and the shortlist.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from pyspec.models.llama import LlamaModel, fuse_projections


def save_draft_lm(
    layers: nn.ModuleList, norm: torch.Tensor, shortlist: torch.Tensor, path: Path, manifest: dict
) -> None:
    """Writes a draft LM's trained tensors to ``path`` (fp16, half the size; loaded as fp32) and its
    manifest next to it."""
    state = {f"layers.{k}": v.detach().half().contiguous() for k, v in layers.state_dict().items()}
    state["norm"] = norm.detach().half().contiguous()
    state["shortlist"] = shortlist.long().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), {"kind": "draft_lm", "num_layers": str(len(layers))})
    path.with_suffix(".json").write_text(json.dumps(manifest, indent=1) + "\n")


def load_draft_lm(target: LlamaModel, path: str | Path) -> LlamaModel:
    """A draft LM for ``target`` from ``path``: its layers and norm, the target's embedding and head.

    Example:
        >>> path = WEIGHTS_DIR / "smollm2-135m-instruct" / "draft-lm-1l.safetensors"  # doctest: +SKIP
        >>> draft = load_draft_lm(target, path)  # doctest: +SKIP
        >>> ModelDrafter(draft, block_size=4)  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no trained draft LM at {path}")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("kind") != "draft_lm":
        raise ValueError(f"{path} holds no draft LM (metadata {meta})")
    dtype = target.embed_tokens.dtype
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    if state["norm"].shape[0] != target.config.hidden_size:
        raise ValueError(
            f"{path} was trained for hidden size {state['norm'].shape[0]}, "
            f"the target has {target.config.hidden_size}"
        )
    config = replace(target.config, num_layers=int(meta["num_layers"]))
    draft = target.first_layers(1)  # shares embedding, head and rotary table
    draft.config = config
    with torch.device("meta"):
        fresh = LlamaModel(replace(config, vocab_size=1))
    draft.layers = fresh.layers
    draft.layers.load_state_dict(
        fuse_projections({k.removeprefix("layers."): v for k, v in state.items() if k.startswith("layers.")}),
        assign=True,
    )
    for layer in draft.layers:
        layer.config = config
    draft.requires_grad_(False)
    draft.norm = nn.Parameter(state["norm"], requires_grad=False)
    draft.set_shortlist(state["shortlist"])
    draft.name = f"{target.name}-draft-{meta['num_layers']}l"
    return draft.eval()
