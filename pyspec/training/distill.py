"""Training loops: draft LMs, Medusa heads and hidden-transfer layers, distilled from the target's
top-k next-token distributions (:mod:`pyspec.training.teacher`), with the target frozen.

Every kind predicts, from an anchor position s, the tokens at s + 1 + i for its future steps i
(draft LM: i = 0 only, autoregressively; heads: i = 1..k). The loss is the cross-entropy of the
draft's distribution over the shortlist against the teacher's top-k probabilities there. Runs are
resumable: a checkpoint is written every ``checkpoint_every`` steps and picked up on restart.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pyspec.drafters.heads import FutureHeads, HiddenTransfer, MedusaHeads
from pyspec.models.llama import LlamaModel
from pyspec.reference import rms_norm
from pyspec.training.functional import attend, causal_layers, finish, project
from pyspec.training.teacher import TeacherData


def shortlist_of(data: TeacherData, size: int) -> torch.Tensor:
    """The ``size`` tokens the teacher ranks first most often at reply positions (ties by id).

    Example:
        >>> shortlist_of(data, 8192).shape  # doctest: +SKIP
        torch.Size([8192])
    """
    counts = torch.bincount(data.top_ids[..., 0][data.loss_mask], minlength=data.top_ids.max() + 1)
    weights = data.top_probs.float()[data.loss_mask]  # every top-k token counts a little, by its mass
    counts = counts.float() + torch.zeros_like(counts, dtype=torch.float).index_add_(
        0, data.top_ids[data.loss_mask].flatten(), weights.flatten() * 1e-3
    )
    return counts.topk(min(size, counts.numel())).indices.sort().values


class Objective(nn.Module):
    """A draft kind's trainable part and its forward from teacher data to per-step shortlist logits."""

    steps: tuple[int, ...]  # future steps i predicted (token s + 1 + i from anchor s)

    def __init__(self, target: LlamaModel, shortlist: torch.Tensor) -> None:
        super().__init__()
        self.target = [target]  # not a submodule: frozen, never saved
        self.register_buffer("shortlist", shortlist)
        self.register_buffer("head", target.head_weight[shortlist].clone())  # [V', D]
        index = torch.full((target.config.vocab_size,), -1, dtype=torch.long)
        index[shortlist] = torch.arange(len(shortlist))
        self.register_buffer("index", index)  # target id -> shortlist row, -1 if absent

    def logits(self, data: TeacherData, rows: torch.Tensor, anchors: torch.Tensor) -> dict[int, torch.Tensor]:
        """Per future step i: logits ``[B, A, V']`` at the positions ``anchors [A]`` of the sequences
        ``rows``."""
        raise NotImplementedError


class DraftLMObjective(Objective):
    steps = (0,)

    def __init__(self, target: LlamaModel, shortlist: torch.Tensor, num_layers: int) -> None:
        super().__init__(target, shortlist)
        self.layers = copy.deepcopy(target.layers[:num_layers]).requires_grad_(True)
        self.norm = nn.Parameter(target.norm.detach().clone())

    def logits(self, data, rows, anchors):
        t = self.target[0]
        x = F.embedding(data.tokens[rows].to(self.head.device), t.embed_tokens)
        x, _ = causal_layers(self.layers, x, t.inv_freq)
        return {0: rms_norm(x[:, anchors], self.norm, t.config.rms_norm_eps) @ self.head.T}


class MedusaObjective(Objective):
    def __init__(self, target: LlamaModel, shortlist: torch.Tensor, num_future: int) -> None:
        super().__init__(target, shortlist)
        self.heads = MedusaHeads(target.config.hidden_size, num_future, shortlist)
        self.steps = tuple(range(1, num_future + 1))

    def logits(self, data, rows, anchors):
        h = data.hidden[self.target[0].config.num_layers][rows][:, anchors].to(self.head.device).float()
        out = self.heads(h)  # [B, A, k, D]
        return {i: out[:, :, i - 1] @ self.head.T for i in self.steps}


class HiddenTransferObjective(Objective):
    """Pseudo states for positions s+1..s+k run through layers ``layer``..L with the real tokens: pseudo
    (s, i) attends to real positions <= s and to pseudo (s, j <= i), as in decoding."""

    def __init__(self, target: LlamaModel, shortlist: torch.Tensor, num_future: int, layer: int) -> None:
        super().__init__(target, shortlist)
        self.heads = HiddenTransfer(target.config.hidden_size, num_future, shortlist, layer)
        self.steps = tuple(range(1, num_future + 1))

    @staticmethod
    def mask(S: int, anchors: torch.Tensor, k: int) -> torch.Tensor:
        """``[A k, S + A k]``: pseudo (s, i) may attend to real positions <= s and to (s, j <= i)."""
        s = anchors.repeat_interleave(k)  # anchor of each pseudo query
        i = torch.arange(k, device=anchors.device).repeat(len(anchors))  # its step - 1
        a = torch.arange(len(anchors), device=anchors.device).repeat_interleave(k)
        real = torch.arange(S, device=anchors.device)[None, :] <= s[:, None]
        pseudo = (a[:, None] == a[None, :]) & (i[None, :] <= i[:, None])
        return torch.cat([real, pseudo], dim=1)

    def logits(self, data, rows, anchors):
        t = self.target[0]
        layer, k = self.heads.layer, self.heads.num_future
        x = data.hidden[layer][rows].to(self.head.device).float()  # [B, S, D] real states
        B, S, D = x.shape
        anchors = anchors.to(x.device)
        A = len(anchors)
        p = self.heads(x[:, anchors]).reshape(B, A * k, D)  # pseudo states, anchor-major
        real_pos = torch.arange(S, device=x.device)
        pseudo_pos = anchors.repeat_interleave(k) + torch.arange(1, k + 1, device=x.device).repeat(A)
        mask = self.mask(S, anchors, k)
        for block in t.layers[layer:]:
            with torch.no_grad():
                qr, kr, vr = project(block, x, real_pos, t.inv_freq)
                x_next = finish(block, x, attend(qr, kr, vr, None))
            qp, kp, vp = project(block, p, pseudo_pos, t.inv_freq)
            attn = attend(qp, torch.cat([kr, kp], dim=2), torch.cat([vr, vp], dim=2), mask)
            p, x = finish(block, p, attn), x_next
        out = rms_norm(p, t.norm, t.config.rms_norm_eps).view(B, A, k, D)
        return {i: out[:, :, i - 1] @ self.head.T for i in self.steps}


def step_targets(obj: Objective, data: TeacherData, rows: torch.Tensor, i: int, anchors: torch.Tensor):
    """For future step i at each anchor s: the teacher's top-k token ids at position s + i, their
    probabilities, and whether the anchor counts (s + i is a reply position)."""
    S = data.tokens.shape[1]
    ids = torch.zeros((len(rows), S) + data.top_ids.shape[2:], dtype=torch.long)
    probs = torch.zeros((len(rows), S) + data.top_ids.shape[2:])
    valid = torch.zeros(len(rows), S, dtype=torch.bool)
    if i < S:
        ids[:, : S - i] = data.top_ids[rows, i:]
        probs[:, : S - i] = data.top_probs[rows, i:].float()
        valid[:, : S - i] = data.loss_mask[rows, i:]
    dev = obj.head.device
    return ids[:, anchors].to(dev), probs[:, anchors].to(dev), valid[:, anchors].to(dev)


def anchors_of(obj: Objective, data: TeacherData, rows: torch.Tensor) -> torch.Tensor:
    """Positions where some sequence of ``rows`` has a reply token to predict at some step (the
    others cost compute and teach nothing)."""
    mask, S = data.loss_mask[rows], data.tokens.shape[1]
    useful = torch.zeros(S, dtype=torch.bool)
    for i in obj.steps:
        useful[: S - i] |= mask[:, i:].any(0)
    return useful.nonzero().flatten()


def losses(
    obj: Objective, data: TeacherData, rows: torch.Tensor
) -> tuple[torch.Tensor, dict[int, list[int]]]:
    """Mean soft cross-entropy over steps and anchors, and per step [top-1 agreements, anchors]."""
    total, count, hits = 0.0, 0, {}
    anchors = anchors_of(obj, data, rows)
    for i, logits in obj.logits(data, rows, anchors).items():
        ids, probs, valid = step_targets(obj, data, rows, i, anchors)
        ids, probs, logits = ids[valid], probs[valid], logits[valid]  # [M, K], [M, K], [M, V']
        short = obj.index[ids]
        probs = probs * (short >= 0)  # teacher mass outside the shortlist is dropped
        logp = torch.log_softmax(logits, dim=-1)
        total = total - (probs * logp.gather(1, short.clamp(min=0))).sum()
        count += len(ids)
        with torch.no_grad():
            best = obj.shortlist[logits.argmax(-1)]
            hits[i] = [int((best == ids[:, 0]).sum()), len(ids)]
    return total / max(count, 1), hits


@dataclass
class TrainConfig:
    """One training run. ``tokens``: reply positions (anchors) to train on, which sets the steps."""

    kind: str  # "draft-lm", "medusa" or "hidden-transfer"
    tokens: int
    layers: int = 1  # draft-lm: decoder layers; hidden-transfer: injection layer t
    num_future: int = 3
    shortlist: int = 8192
    batch_size: int = 4
    lr: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 25


@torch.no_grad()
def evaluate(obj: Objective, data: TeacherData, batch_size: int = 4) -> dict:
    """Held-out loss and top-1 agreement with the teacher per future step."""
    obj.eval()
    total, count, hits = 0.0, 0, {}
    for start in range(0, len(data.ids), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(data.ids)))
        loss, h = losses(obj, data, rows)
        n = sum(c for _, c in h.values())
        total, count = total + float(loss) * n, count + n
        for i, (a, c) in h.items():
            hits.setdefault(i, [0, 0])
            hits[i][0] += a
            hits[i][1] += c
    obj.train()
    return {"loss": total / max(count, 1), "top1": {i: a / max(c, 1) for i, (a, c) in hits.items()}}


def make_objective(config: TrainConfig, target: LlamaModel, shortlist: torch.Tensor) -> Objective:
    if config.kind == "draft-lm":
        return DraftLMObjective(target, shortlist, config.layers)
    if config.kind == "medusa":
        return MedusaObjective(target, shortlist, config.num_future)
    if config.kind == "hidden-transfer":
        if not 1 <= config.layers < target.config.num_layers:
            raise ValueError(f"the injection layer must be in [1, {target.config.num_layers - 1}]")
        return HiddenTransferObjective(target, shortlist, config.num_future, config.layers)
    raise ValueError(f"unknown draft kind {config.kind!r}: draft-lm, medusa or hidden-transfer")


def train(
    config: TrainConfig,
    target: LlamaModel,
    data: TeacherData,
    held_out: TeacherData,
    checkpoint: Path,
    progress: bool = True,
) -> tuple[Objective, dict]:
    """Trains one draft; resumes from ``checkpoint`` when it exists. Returns the objective (its
    trainable part holds the weights) and a summary (steps, tokens seen, losses, held-out top-1).

    Example:
        >>> config = TrainConfig("medusa", tokens=20000)
        >>> obj, summary = train(config, target, data, held, Path("m.ckpt"))  # doctest: +SKIP
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(config.seed)
    obj = make_objective(config, target, shortlist_of(data, config.shortlist)).to(device)
    params = [p for p in obj.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    per_step = max(1, data.num_tokens // len(data.ids)) * config.batch_size
    total_steps = max(1, math.ceil(config.tokens / per_step))
    warmup = max(1, total_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s / total_steps, 1.0))))
    )
    state = {"step": 0, "seen": 0, "loss": float("nan"), "seconds": 0.0}
    resumed_from = 0
    if checkpoint.exists():  # same run (a longer budget continues it), else start over
        saved = torch.load(checkpoint, weights_only=False)
        same = ("tokens", "checkpoint_every")
        if {k: v for k, v in saved["config"].items() if k not in same} == {
            k: v for k, v in config.__dict__.items() if k not in same
        }:
            obj.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            state, resumed_from = saved["state"], saved["state"]["step"]
    order = torch.randperm(len(data.ids), generator=torch.Generator().manual_seed(config.seed))
    bar = tqdm(total=total_steps, initial=state["step"], desc=config.kind, disable=not progress)
    start = time.perf_counter() - state["seconds"]
    while state["step"] < total_steps:
        step = state["step"]
        epoch, offset = divmod(step * config.batch_size, len(order))
        if offset == 0 and epoch:
            order = torch.randperm(
                len(data.ids), generator=torch.Generator().manual_seed(config.seed + epoch)
            )
        rows = order[offset : offset + config.batch_size]
        loss, hits = losses(obj, data, rows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        loss = float(loss.detach())
        state.update(
            step=step + 1,
            seen=state["seen"] + int(data.loss_mask[rows].sum()),
            loss=0.9 * state["loss"] + 0.1 * loss if step else loss,
            seconds=time.perf_counter() - start,
        )
        bar.update(1)
        bar.set_postfix(loss=f"{state['loss']:.3f}")
        if state["step"] % config.checkpoint_every == 0 or state["step"] == total_steps:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save(
                {
                    "config": config.__dict__,
                    "model": obj.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "state": state,
                },
                checkpoint,
            )
    bar.close()
    result = evaluate(obj, held_out)
    summary = {
        "steps": state["step"],
        "resumed_from": resumed_from,
        "tokens_seen": state["seen"],
        "train_loss": state["loss"],
        "seconds": round(state["seconds"], 1),
        "device": device,
        "held_out_loss": result["loss"],
        "held_out_top1": result["top1"],
    }
    return obj.cpu(), summary


def trained_module(obj: Objective) -> FutureHeads | nn.Module:
    """The part of ``obj`` that is saved: the heads, or the draft LM's layers."""
    return obj.heads if hasattr(obj, "heads") else obj.layers
