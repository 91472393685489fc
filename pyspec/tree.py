"""Token trees as parent arrays, and the tree masks the attention op reads.

A tree of n nodes is a parent array: ``parents[i]`` is the index of node i's parent, ``-1`` for a root,
and every parent comes before its children (``parents[i] < i``). A chain is ``[-1, 0, 1, ...]``.
"""

from __future__ import annotations

import torch


def check_parents(parents: torch.Tensor) -> None:
    """Raises ValueError unless ``parents`` is a 1-D integer parent array with parents before children."""
    if parents.dim() != 1 or parents.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"parents must be a 1-D int32/int64 tensor, got {parents.dtype} {tuple(parents.shape)}"
        )
    idx = torch.arange(parents.numel(), device=parents.device)
    if bool(((parents < -1) | (parents >= idx)).any()):
        raise ValueError("parents[i] must be -1 (a root) or an earlier node index < i")


def ancestor_mask(parents: torch.Tensor) -> torch.Tensor:
    """Boolean ``[n, n]`` mask: ``mask[i, j]`` is True when node j is node i or one of its ancestors.

    Example:
        >>> ancestor_mask(torch.tensor([-1, 0, 0])).int()
        tensor([[1, 0, 0],
                [1, 1, 0],
                [1, 0, 1]], dtype=torch.int32)
    """
    check_parents(parents)
    n = parents.numel()
    mask = torch.eye(n, dtype=torch.bool, device=parents.device)
    for i in range(n):  # parents come first, so their rows are complete
        p = int(parents[i])
        if p >= 0:
            mask[i] |= mask[p]
    return mask


def depths(parents: torch.Tensor) -> torch.Tensor:
    """Depth of every node (roots are 0): the position offset of a node after the committed prefix.

    Example:
        >>> depths(torch.tensor([-1, 0, 1, 0]))
        tensor([0, 1, 2, 1])
    """
    return ancestor_mask(parents).sum(dim=1) - 1


def pack_tree_masks(masks: list[torch.Tensor]) -> torch.Tensor:
    """Flattens and concatenates per-sequence ``[n_b, n_b]`` masks into the op's packed 1-D layout.

    Example:
        >>> pack_tree_masks([ancestor_mask(torch.tensor([-1, 0])), torch.ones(1, 1, dtype=torch.bool)])
        tensor([ True, False,  True,  True,  True])
    """
    if not masks:
        return torch.zeros(0, dtype=torch.bool)
    for m in masks:
        if m.dim() != 2 or m.shape[0] != m.shape[1] or m.dtype != torch.bool:
            raise ValueError(f"each mask must be a square bool tensor, got {m.dtype} {tuple(m.shape)}")
    return torch.cat([m.reshape(-1) for m in masks])
