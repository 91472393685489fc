"""Trained future-token heads for a target: Medusa heads and hidden-transfer layers.

Both read the target's hidden state at a context's last token s and give distributions for the tokens
at s + 2 .. s + 1 + k (the target's own head gives s + 1), over a *shortlist*: the target's most
frequent next tokens in the training data (FR-Spec's frequency-ranked draft vocabulary), which makes
the draft head several times cheaper than the full 49k-row head. Tokens outside the shortlist are
never proposed, which costs acceptance only, never correctness.

- :class:`MedusaHeads` (Cai et al. 2024): head i maps the final normalised state h to
  ``h + SiLU(W_i h + b_i)``, read by the target's head.
- :class:`HiddenTransfer` (docs/papers.md §1): at layer t, linear map i turns the last token's hidden state
  into a *pseudo* hidden state for position s + i; the pseudo states then run through layers
  t+1..L with the real tokens (attending to the context and to the earlier pseudo states), and the
  target's final norm and head read them.

Weights live in ``pyspec/weights/`` as safetensors with a JSON manifest each.

Example:
    >>> heads = MedusaHeads(hidden_size=16, num_future=3, shortlist=torch.arange(10))
    >>> heads(torch.zeros(2, 16)).shape
    torch.Size([2, 3, 16])
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


class FutureHeads(nn.Module):
    """Common ground: ``num_future`` future tokens, a vocabulary shortlist, safetensors I/O."""

    kind = ""

    def __init__(self, hidden_size: int, num_future: int, shortlist: torch.Tensor) -> None:
        super().__init__()
        if num_future < 1:
            raise ValueError(f"num_future must be >= 1, got {num_future}")
        self.hidden_size, self.num_future = hidden_size, num_future
        self.register_buffer("shortlist", shortlist.long().clone())  # [V'] target token ids

    def metadata(self) -> dict[str, str]:
        return {"kind": self.kind, "hidden_size": str(self.hidden_size), "num_future": str(self.num_future)}

    def save(self, path: Path, manifest: dict) -> None:
        """Writes ``path`` (safetensors, float weights in fp16) and ``path.with_suffix('.json')`` (the
        manifest)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in self.state_dict().items()
        }
        save_file(state, str(path), self.metadata())
        path.with_suffix(".json").write_text(json.dumps(manifest, indent=1) + "\n")

    @staticmethod
    def load(path: str | Path) -> FutureHeads:
        """Loads heads saved by :meth:`save`, of whichever kind they are.

        Example:
            >>> from pyspec.models.loading import WEIGHTS_DIR
            >>> path = WEIGHTS_DIR / "smollm2-135m-instruct" / "medusa.safetensors"
            >>> FutureHeads.load(path).num_future  # doctest: +SKIP
            3
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no trained heads at {path}")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        kinds = {cls.kind: cls for cls in (MedusaHeads, HiddenTransfer)}
        if meta.get("kind") not in kinds:
            raise ValueError(f"{path} holds no Medusa or hidden-transfer heads (metadata {meta})")
        state = load_file(str(path))
        cls = kinds[meta["kind"]]
        extra = {"layer": int(meta["layer"])} if cls is HiddenTransfer else {}
        heads = cls(int(meta["hidden_size"]), int(meta["num_future"]), state["shortlist"], **extra)
        heads.load_state_dict(state)
        return heads.eval().requires_grad_(False)


class MedusaHeads(FutureHeads):
    """``h [N, D]`` (final normalised state) -> ``[N, k, D]``, for the target's head."""

    kind = "medusa"

    def __init__(self, hidden_size: int, num_future: int, shortlist: torch.Tensor) -> None:
        super().__init__(hidden_size, num_future, shortlist)
        self.blocks = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(num_future))
        for block in self.blocks:  # start as the target's own head (Medusa's initialisation)
            nn.init.zeros_(block.weight)
            nn.init.zeros_(block.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.stack([h + nn.functional.silu(block(h)) for block in self.blocks], dim=-2)


class HiddenTransfer(FutureHeads):
    """``h_t [N, D]`` (the state after ``layer`` layers) -> pseudo states ``[N, k, D]`` at that layer."""

    kind = "hidden_transfer"

    def __init__(self, hidden_size: int, num_future: int, shortlist: torch.Tensor, layer: int) -> None:
        super().__init__(hidden_size, num_future, shortlist)
        self.layer = layer
        self.transfers = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(num_future))
        for t in self.transfers:  # start by copying the last token's state
            nn.init.eye_(t.weight)
            nn.init.zeros_(t.bias)

    def metadata(self) -> dict[str, str]:
        return {**super().metadata(), "layer": str(self.layer)}

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.stack([t(h) for t in self.transfers], dim=-2)
