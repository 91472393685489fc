"""Fine-tuning a target for APAR with low-rank adapters (``peft``) on the recipe's packed trees.

The model gets two new tokens, ``[Fork]`` and ``[Child]`` (their embedding rows, tied with the head,
are trained through peft's ``trainable_token_indices``), and LoRA adapters on every attention and MLP
projection. Each example is one reply's token tree (:class:`pyspec.training.apar_data.Example`) run
as one sequence with a 4-D attention mask (each token sees its ancestors) and tree positions, so a
child is trained on exactly the context it has when decoding. Only the adapter is saved.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pyspec.models.adapters import CHILD, FORK, hf_model_with_control_tokens
from pyspec.training.apar_data import Example, Recipe
from pyspec.training.apar_own import own_replies_for_recipe
from pyspec.tree import ancestor_mask, depths

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TuneConfig:
    """Hyper-parameters of an APAR fine-tune (stored in the manifest)."""

    tokens: int = 150_000  # packed tokens to train on (epochs over the examples if needed)
    structured: int = 300  # structured training replies (as many unstructured are mixed in)
    held_out: int = 24  # structured held-out replies to evaluate on (and as many unstructured)
    max_tokens: int = 768  # longest packed example
    rank: int = 16
    alpha: int = 32
    lr: float = 1e-3  # LoRA matrices
    token_lr: float = 1e-2  # the new rows: at 1e-3, [Fork] was still ranked ~7,500th after 20 steps
    warmup_steps: int = 5
    step_tokens: int = 2048  # packed tokens per optimiser step
    seed: int = 0
    own: int = 0  # training prompts answered by the target itself, cut first (0: ShareGPT's replies only)
    init: str | None = None  # an adapter folder to continue training (its rank and alpha win)


def with_adapter(model, config: TuneConfig, tokenizer):
    """Wraps ``model`` with fresh LoRA adapters and trainable control-token rows."""
    import peft

    lora = peft.LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        target_modules=TARGET_MODULES,
        lora_dropout=0.0,
        trainable_token_indices={"embed_tokens": tokenizer.convert_tokens_to_ids([FORK, CHILD])},
    )
    return peft.get_peft_model(model, lora)


def tree_logits(model, example: Example, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[n, V]`` predicting an example's ``n`` taught tokens, and those tokens ``[n]``: one
    pass over the packed tree with a 4-D mask (each token sees its ancestors) and tree positions."""
    tokens = torch.tensor(example.tokens, device=device)
    parents = torch.tensor(example.parents)
    mask = ancestor_mask(parents)  # [N, N]
    bias = torch.zeros(mask.shape, device=device).masked_fill_(~mask.to(device), float("-inf"))
    taught = torch.tensor([i for i, t in enumerate(example.targets) if t])
    out = model(
        input_ids=tokens[None],
        attention_mask=bias[None, None],
        position_ids=depths(parents)[None].to(device),
        logits_to_keep=parents[taught].to(device),  # token i is predicted from its parent's state
    )
    return out.logits[0].float(), tokens[taught.to(device)]


@torch.no_grad()
def evaluate(model, examples: list[Example], fork_id: int, device) -> dict:
    """Held-out loss per taught token, and how well the model places ``[Fork]`` greedily: recall (the
    argmax is ``[Fork]`` where the reply forks) and false forks (argmax ``[Fork]`` elsewhere), over
    structured and unstructured replies."""
    model.eval()
    total, count = 0.0, 0
    hits = forks = false = others = 0
    for ex in examples:
        logits, gold = tree_logits(model, ex, device)
        total += float(F.cross_entropy(logits, gold, reduction="sum"))
        count += len(gold)
        is_fork, said_fork = gold == fork_id, logits.argmax(-1) == fork_id
        hits += int((is_fork & said_fork).sum())
        forks += int(is_fork.sum())
        false += int((~is_fork & said_fork).sum())
        others += int((~is_fork).sum())
    model.train()
    return {
        "loss": round(total / max(count, 1), 4),
        "fork_recall": round(hits / max(forks, 1), 4),
        "false_fork_rate": round(false / max(others, 1), 5),
    }


def tune(
    config: TuneConfig,
    folder: Path,
    out_dir: Path | None,
    checkpoint: Path,
    progress: bool = True,
) -> tuple[object, dict]:
    """Fine-tunes (resuming from ``checkpoint`` when it exists) and saves the adapter in ``out_dir``
    (fp16 safetensors + peft's adapter config). Returns the peft model and a summary: data statistics,
    steps, tokens seen, train loss, held-out metrics before and after, seconds, device.

    Example:
        >>> model, summary = tune(TuneConfig(), folder, WEIGHTS / "apar", ckpt)  # doctest: +SKIP
    """
    from tqdm import tqdm

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    base, tokenizer = hf_model_with_control_tokens(folder)
    if config.init is None:
        model = with_adapter(base, config, tokenizer).to(device)
    else:
        import peft

        model = peft.PeftModel.from_pretrained(base, config.init, is_trainable=True).to(device)
        model.float()  # the shipped delta is fp16
    recipe = Recipe(tokenizer, config.max_tokens)
    own = own_replies_for_recipe(config.own, progress)
    train_set, train_stats = recipe.build("train", config.structured, progress=progress, first=own)
    held_set, held_stats = recipe.build("held_out", config.held_out)
    fork_id = recipe.fork
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    groups = [
        {"params": [p for n, p in named if not _is_token_row(n)], "lr": config.lr},
        {"params": [p for n, p in named if _is_token_row(n)], "lr": config.token_lr},
    ]
    optimiser = torch.optim.AdamW(groups, weight_decay=0.0)
    total_steps = max(1, config.tokens // config.step_tokens)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda s: min(1.0, (s + 1) / config.warmup_steps) * max(0.05, 1 - s / total_steps),
    )
    state = {"step": 0, "tokens": 0, "cursor": 0, "seconds": 0.0, "losses": [], "before": None}
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(saved["model"], strict=False)
        optimiser.load_state_dict(saved["optimiser"])
        schedule.load_state_dict(saved["schedule"])
        state = saved["state"]
    if state["before"] is None:
        state["before"] = evaluate(model, held_set, fork_id, device)
    order = list(range(len(train_set)))
    random.Random(config.seed).shuffle(order)
    model.train()
    bar = tqdm(total=total_steps, initial=state["step"], desc="APAR fine-tune", disable=not progress)
    while state["step"] < total_steps:
        start = time.perf_counter()
        batch, size = [], 0
        while size < config.step_tokens:
            ex = train_set[order[state["cursor"] % len(order)]]
            state["cursor"] += 1
            batch.append(ex)
            size += len(ex.tokens)
        taught = sum(sum(ex.targets) for ex in batch)
        step_loss = 0.0
        for ex in batch:
            logits, gold = tree_logits(model, ex, device)
            loss = F.cross_entropy(logits, gold, reduction="sum")
            (loss / taught).backward()
            step_loss += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        schedule.step()
        optimiser.zero_grad(set_to_none=True)
        state["step"] += 1
        state["tokens"] += size
        state["seconds"] += time.perf_counter() - start
        state["losses"].append(round(step_loss / taught, 4))
        bar.update(1)
        bar.set_postfix(loss=state["losses"][-1])
        if state["step"] % 10 == 0 or state["step"] == total_steps:
            trainable = {k: v for k, v in model.state_dict().items() if _is_trainable(k)}
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save(
                {
                    "model": trainable,
                    "optimiser": optimiser.state_dict(),
                    "schedule": schedule.state_dict(),
                    "state": state,
                },
                checkpoint,
            )
    bar.close()
    after = evaluate(model, held_set, fork_id, device)
    summary = {
        "config": asdict(config),
        "data": {"train": train_stats.summary(), "held_out": held_stats.summary()},
        "steps": state["step"],
        "tokens_seen": state["tokens"],
        "train_loss_first_last": [state["losses"][0], state["losses"][-1]] if state["losses"] else [],
        "held_out_before": state["before"],
        "held_out_after": after,
        "seconds": round(state["seconds"], 1),
        "device": str(device),
    }
    if out_dir is not None:
        save_adapter(model, out_dir)
    return model, summary


def _is_token_row(name: str) -> bool:
    return "trainable_tokens" in name


def _is_trainable(name: str) -> bool:
    return "lora_" in name or _is_token_row(name)


def save_adapter(model, out_dir: Path, base_name: str = "smollm2-135m-instruct") -> None:
    """Saves only the delta: peft's adapter config (naming the base by its registry name, not a local
    path) and its weights in fp16."""
    from safetensors.torch import load_file, save_file

    model.save_pretrained(str(out_dir), save_embedding_layers=False)  # the new rows are in the delta
    config_path = out_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_name
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    weights = out_dir / "adapter_model.safetensors"
    save_file({k: v.half().contiguous() for k, v in load_file(str(weights)).items()}, str(weights))
    (out_dir / "README.md").unlink(missing_ok=True)  # peft's model-card template


def write_manifest(out_dir: Path, manifest: dict) -> None:
    """The adapter's manifest (training command, data, steps, losses, source commit)."""
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
