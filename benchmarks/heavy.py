"""The heavy target: Qwen2.5-Coder-1.5B-Instruct with pyspec's planned configuration (a hierarchy
that may join SmolLM2-135M-Instruct's drafts across tokenizers) against Hugging Face ``generate()``
plain, with prompt lookup, and with assisted generation using SmolLM2 as a different-tokenizer
assistant. Needs ``make qwen``.

1. Profiles Qwen and the candidate drafts on calibration prompts held out of the benchmark
   (``--candidates``; saved to ``<out>/profile_qwen.json``, reused with ``--profile``) and plans.
   The target runs in the weight format the plan chose (fp32 or packed GGUF blocks: the same
   tokens); HF runs fp32.
2. Runs pyspec ``ar`` and ``plan`` and HF ``hf``, ``hf-pld``, ``hf-assisted`` on held-out HumanEval
   and MT-bench prompts, greedy fp32, batch 1, interleaved with the order rotated per prompt;
   every output is checked token for token against its own tool's plain decoding. When Qwen's
   trained hidden-transfer layers are shipped, pyspec ``hidden-transfer`` (a tree of
   ``--heads-tree`` widths drafted from Qwen's own pass) runs too.

    python benchmarks/heavy.py            # 3 HumanEval + 3 MT-bench prompts, 128 new tokens (~45 min here)
    python benchmarks/heavy.py --quick    # 1 + 1 prompts, 32 new tokens, a smaller profile

Last line JSON: ``{"speedup_vs_hf_plain": {"humaneval", "mtbench"}, "speedup_vs_hf_assisted": {...},
"lossless": true|false, "plan": "..."}``, plus ``"hidden_transfer_vs_hf_plain"`` when that mode ran.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import _path  # noqa: F401  (first: keeps benchmarks/planner.py from shadowing the planner package)
import torch

from planner.plan import make_plan
from pyspec.api import load_model, profile_model
from pyspec.bench import bench, markdown, write_report
from pyspec.drafters.trained import weights_path

TARGET = "qwen2.5-coder-1.5b-instruct"
ASSISTANT = "smollm2-135m-instruct"


def heavy_headline(report: dict) -> dict:
    """The issue's figures: pyspec ``plan`` over HF plain and over HF assisted, per dataset (and
    ``hidden-transfer`` over HF plain when it ran)."""
    figures = (
        ("speedup_vs_hf_plain", "plan", "hf"),
        ("speedup_vs_hf_assisted", "plan", "hf-assisted"),
        ("hidden_transfer_vs_hf_plain", "hidden-transfer", "hf"),
    )
    out: dict = {key: {} for key, _, _ in figures}
    for dataset, cats in report["summary"].items():
        modes = cats["all"]
        for key, ours, base in figures:
            if ours in modes and base in modes:
                out[key][dataset] = round(
                    modes[ours]["tokens_per_second"] / modes[base]["tokens_per_second"], 3
                )
    if not out["hidden_transfer_vs_hf_plain"]:
        del out["hidden_transfer_vs_hf_plain"]
    out["lossless"] = report["headline"]["lossless"]
    out["plan"] = report["plan"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 + 1 prompts x 32 tokens, smaller profile")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="prompts per dataset (default 3; quick 1)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 128 (--quick 32)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--candidates",
        default=f"ngram,{ASSISTANT}@bf16,{ASSISTANT}@q8",
        help="drafts the planner may stack, cheapest first (name@bf16: that model in bfloat16; "
        "@packed: its GGUF blocks; @q8: GGUF blocks with int8 activations)",
    )
    parser.add_argument(
        "--calibration-prompts", type=int, default=None, help="per dataset (default 2; quick 1)"
    )
    parser.add_argument("--profile", default=None, help="reuse a profile saved by an earlier run")
    parser.add_argument(
        "--heads-tree",
        nargs="+",
        type=int,
        default=[1, 1, 1],
        help="mode hidden-transfer: candidates per depth (default a chain of 3)",
    )
    parser.add_argument("--out", default=None, help="default results/heavy (--quick: results/quick/heavy)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    limit = args.limit or (1 if args.quick else 3)
    max_new = args.max_new_tokens or (32 if args.quick else 128)
    calibration = args.calibration_prompts or (1 if args.quick else 2)
    out = Path(args.out or ("results/quick/heavy" if args.quick else "results/heavy"))
    out.mkdir(parents=True, exist_ok=True)

    target = load_model(TARGET)
    if args.profile:
        profile = json.loads(Path(args.profile).read_text())
    else:
        profile = profile_model(target, args.candidates.split(","), calibration_prompts=calibration)
        (out / "profile_qwen.json").write_text(json.dumps(profile) + "\n")
    plan = make_plan(profile, max_block=16)
    choice = plan.for_batch(1)
    predicted, plain = choice.seconds_per_token * 1e3, choice.no_speculation_seconds * 1e3
    print(
        f"plan: {choice.label}, target weights {plan.weights} (predicted {predicted:.0f} ms/token, "
        f"plain {plain:.0f})",
        flush=True,
    )
    if plan.weights != target.weights_format:  # the plan's faster exact format: the same tokens
        target = load_model(TARGET, packed=plan.weights == "packed")
    modes = ["ar", "plan", "hf", "hf-pld", "hf-assisted"]
    if weights_path(target, "hidden-transfer").exists():
        modes.insert(2, "hidden-transfer")
    report = bench(
        target,
        ["humaneval", "mtbench"],
        modes,
        limit,
        max_new,
        args.repeats,
        assistant=ASSISTANT,
        profile=profile,
        heads_tree=args.heads_tree,
        tune_prompts=1,  # HF settings on 1 + 1 calibration prompts: Qwen's HF runs are slow
    )
    report["headline"] = heavy_headline(report)
    write_report(report, out, None)
    print(markdown(report))
    print(json.dumps(report["headline"]))


if __name__ == "__main__":
    main()
