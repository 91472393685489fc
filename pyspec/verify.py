"""Lossless verification of draft token trees, vectorised over the batch.

A verification step of sequence b sees a tree of ``n_b`` draft nodes hanging below its last context
token. The target scored the context's last token and every node in one pass, giving ``n_b + 1``
distributions: row 0 is the distribution of the token after the context, row ``i + 1`` the one after
node i. Walking from row 0, a node's children are tried in order (lower node index first):

* a child x drawn from the draft distribution q is accepted with probability ``min(1, r(x) / q(x))``;
  on rejection the residual becomes ``r <- norm(max(0, r - q))`` (speculative sampling; SpecInfer for
  several children);
* a deterministic candidate (q is the one-hot on x, e.g. top-k or n-gram proposals) is accepted with
  probability ``r(x)``; on rejection ``r(x)`` is zeroed and r renormalised (the same rule with q one-hot).

An accepted child becomes the current node (``r`` = its target row); when no child is accepted, or a
leaf is reached, one more token is drawn from ``r``: a *recovered* token after a rejection, a *bonus*
token after a leaf. The emitted tokens are distributed exactly as the target's. Greedy verification
keeps the longest path whose every token is the target's argmax, then adds the argmax after it.

Batched layout: trees padded to ``N`` nodes; ``parents[b, i] == -2`` marks padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD = -2  # parent value of a padding node


@dataclass(frozen=True)
class Verdict:
    """What one verification step keeps, per sequence."""

    path: torch.Tensor  # [B, N] int64, accepted node indices root first, -1 past num_accepted
    num_accepted: torch.Tensor  # [B] int64
    next_token: torch.Tensor  # [B] int64: the recovered or bonus token

    def accepted(self, b: int) -> list[int]:
        """Accepted node indices of sequence b, root first."""
        return self.path[b, : int(self.num_accepted[b])].tolist()


def children_table(parents: torch.Tensor) -> torch.Tensor:
    """``[B, N + 1, K]`` children of every row (row 0 = the context, row i + 1 = node i), in node
    order, padded with -1; K is the largest number of children of any row.

    Example:
        >>> children_table(torch.tensor([[-1, -1, 0, PAD]]))[0].tolist()
        [[0, 1], [2, -1], [-1, -1], [-1, -1], [-1, -1]]
    """
    B, N = parents.shape
    idx = torch.arange(N)
    real = parents != PAD
    if bool((real & ((parents < -1) | (parents >= idx))).any()):
        raise ValueError("a node's parent must be -1 or an earlier node: parents must come first")
    same = (parents[:, :, None] == parents[:, None, :]) & (idx[None, :] < idx[:, None])  # [B, i, j<i]
    rank = same.sum(-1)  # [B, N] index of a node among its siblings
    K = int(rank[real].max()) + 1 if bool(real.any()) else 1
    table = torch.full((B, N + 2, K), -1, dtype=torch.long)
    row = torch.where(real, parents + 1, N + 1)  # padding goes to a scratch row, dropped below
    table[torch.arange(B)[:, None].expand(B, N), row, rank.clamp(max=K - 1)] = idx.expand(B, N)
    return table[:, : N + 1]


def _check(tokens: torch.Tensor, parents: torch.Tensor, rows: int) -> None:
    if tokens.shape != parents.shape or tokens.dim() != 2:
        raise ValueError(f"tokens {tuple(tokens.shape)} and parents {tuple(parents.shape)} must be [B, N]")
    if rows != tokens.shape[1] + 1:
        raise ValueError(f"the target gives {rows} rows per sequence, expected N + 1 = {tokens.shape[1] + 1}")


def verify_greedy(target_argmax: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor) -> Verdict:
    """Greedy verification: the longest path of nodes equal to the target's argmax, plus one token.

    ``target_argmax [B, N + 1]``: the target's argmax at row 0 (after the context) and after every node.

    Example (node 0 matches, its child node 1 does not; the target's token after node 0 is 7):
        >>> v = verify_greedy(torch.tensor([[5, 7, 9]]), torch.tensor([[5, 8]]), torch.tensor([[-1, 0]]))
        >>> v.accepted(0), int(v.next_token[0])
        ([0], 7)
    """
    _check(tokens, parents, target_argmax.shape[1])
    B, N = tokens.shape
    kids = children_table(parents)
    ar = torch.arange(B)
    cur = torch.zeros(B, dtype=torch.long)  # current row
    alive = torch.ones(B, dtype=torch.bool)
    path = torch.full((B, max(N, 1)), -1, dtype=torch.long)
    count = torch.zeros(B, dtype=torch.long)
    for _ in range(N):
        want = target_argmax[ar, cur]
        moved = torch.zeros(B, dtype=torch.bool)
        nxt = cur.clone()
        for j in range(kids.shape[2]):
            child = kids[ar, cur, j]
            hit = alive & ~moved & (child >= 0) & (tokens[ar, child.clamp(min=0)] == want)
            nxt = torch.where(hit, child + 1, nxt)
            moved |= hit
        if not moved.any():
            break
        path[moved, count[moved]] = nxt[moved] - 1
        count += moved.long()
        alive &= moved
        cur = nxt
    return Verdict(path[:, :N], count, target_argmax[ar, cur])


def verify_sampled(
    target_probs: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    draft_probs: torch.Tensor | None,
    uniforms: torch.Tensor,
) -> Verdict:
    """Exact speculative verification of token trees (chains are trees) for a batch.

    ``target_probs [B, N + 1, V]``: target distributions (temperature, top-k, top-p already applied);
    ``tokens, parents [B, N]``; ``draft_probs [B, N, V]``: the distribution each node was drawn from,
    with one-hot rows for deterministic candidates, or ``None`` when every node is deterministic;
    ``uniforms [B, N + 1]`` in [0, 1): node i's acceptance draw, and the last one for the final token.

    Example (a chain of two deterministic candidates; the target is sure of both):
        >>> p = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])
        >>> v = verify_sampled(p, torch.tensor([[1, 2]]), torch.tensor([[-1, 0]]), None, torch.rand(1, 3))
        >>> v.accepted(0), int(v.next_token[0])
        ([0, 1], 0)
    """
    _check(tokens, parents, target_probs.shape[1])
    B, N = tokens.shape
    if draft_probs is not None and draft_probs.shape != (B, N, target_probs.shape[2]):
        raise ValueError(f"draft_probs {tuple(draft_probs.shape)} must be [B, N, V] like the target's rows")
    if uniforms.shape != (B, N + 1):
        raise ValueError(f"uniforms {tuple(uniforms.shape)} must be [B, N + 1]")
    kids = children_table(parents)
    ar = torch.arange(B)
    cur = torch.zeros(B, dtype=torch.long)
    r = target_probs[:, 0].clone()  # [B, V] residual of the current row
    alive = torch.ones(B, dtype=torch.bool)
    path = torch.full((B, max(N, 1)), -1, dtype=torch.long)
    count = torch.zeros(B, dtype=torch.long)
    for _ in range(N):
        moved = torch.zeros(B, dtype=torch.bool)
        nxt = cur.clone()
        for j in range(kids.shape[2]):
            child = kids[ar, cur, j]
            trying = alive & ~moved & (child >= 0)
            if not trying.any():
                break
            node = child.clamp(min=0)
            x = tokens[ar, node]
            if draft_probs is None:
                q = torch.nn.functional.one_hot(x, r.shape[1]).to(r.dtype)
            else:
                q = draft_probs[ar, node]
            px, qx = r[ar, x], q[ar, x]
            accept = trying & (uniforms[ar, node] * qx < px)  # probability min(1, px / qx)
            reject = trying & ~accept
            if reject.any():
                residual = (r - q).clamp_min(0)
                mass = residual.sum(-1, keepdim=True)
                # mass 0 needs p <= q everywhere, i.e. p == q, where rejection has probability 0
                residual = torch.where(mass > 0, residual / mass.clamp_min(1e-30), r)
                r = torch.where(reject[:, None], residual, r)
            nxt = torch.where(accept, child + 1, nxt)
            moved |= accept
        if not moved.any():
            break
        path[moved, count[moved]] = nxt[moved] - 1
        count += moved.long()
        alive &= moved
        r = torch.where(moved[:, None], target_probs[ar, nxt], r)
        cur = nxt
    return Verdict(path[:, :N], count, draw(r, uniforms[:, N]))


def draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row of ``probs [B, V]`` (need not be normalised) by inverse CDF at ``uniforms [B]``;
    tokens of probability 0 are never drawn.

    Example:
        >>> draw(torch.tensor([[0.0, 0.5, 0.0, 0.5]]), torch.tensor([0.6])).tolist()
        [3]
    """
    cdf = probs.double().cumsum(-1)
    at = (uniforms.double() * cdf[:, -1]).unsqueeze(1)
    token = torch.searchsorted(cdf, at, right=True).squeeze(1)
    last_positive = probs.shape[1] - 1 - (probs > 0).flip(-1).long().argmax(-1)  # rounding guard
    return torch.minimum(token, last_positive)
