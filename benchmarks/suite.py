"""The benchmark suite (``pyspec bench``) on both targets: pyspec against transformers ``generate()``.

1. SmolLM2-135M-Instruct on the held-out MT-bench and HumanEval prompts: pyspec ``ar``, ``ngram``,
   ``plan`` (profiled here first, on the calibration prompts) against HF plain, prompt lookup and
   assisted generation (the trained ``draft-lm-1l`` pyspec drafts with, exported as a transformers
   model); HF's ``prompt_lookup_num_tokens`` and ``num_assistant_tokens`` are each the fastest of a
   small set on the calibration prompts, and the report says which ran.
2. Qwen2.5-Coder-1.5B-Instruct on HumanEval (when installed: ``make qwen``): pyspec ``ar``,
   ``ngram`` and ``plan`` against HF plain and prompt lookup. The plan comes from the profile that
   ``benchmarks/heavy.py`` saved (``--qwen-profile``, default ``results/heavy/profile_qwen.json``:
   Qwen, n-gram and SmolLM2 drafts across tokenizers); without one, Qwen is not profiled here (that
   takes ~10 minutes) and ``plan`` is left out. Its n-gram block is ``--qwen-block``.

Writes ``results/`` (JSON, markdown, plots) and regenerates the README's results section (full run
only). Every output is checked token for token against its own tool's plain decoding.

    python benchmarks/suite.py            # 12 + 12 SmolLM2 prompts, 5 Qwen prompts, 128 new tokens (~1 h)
    python benchmarks/suite.py --quick    # 2 + 2 SmolLM2 prompts x 32 tokens, no Qwen (a few minutes)
    python benchmarks/suite.py --limit 0  # every held-out prompt: 20 + 21 (about 40 min for SmolLM2 here)
    python benchmarks/suite.py --limit 0 --resume   # the same across sessions: stop any time, rerun
                                                    # (SmolLM2's profile is kept in <out> for one plan)

Last line JSON: ``{"speedup_vs_hf_plain": {"smollm2_mtbench", "smollm2_humaneval", "qwen_humaneval"},
"speedup_vs_hf_pld": {...}, "lossless"}`` (pyspec's ``plan`` mode; ``ngram`` for Qwen without a profile).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import _path  # noqa: F401  (first: keeps benchmarks/planner.py from shadowing the planner package)
import torch

from pyspec.api import load_model, profile_model
from pyspec.bench import bench, markdown, write_report
from pyspec.models.loading import ModelNotFoundError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 + 2 prompts x 32 tokens, no Qwen")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="prompts per dataset (0: all; default 12)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 128 (--quick 32)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--qwen-limit", type=int, default=5, help="HumanEval prompts for Qwen")
    parser.add_argument("--qwen-block", type=int, default=8, help="Qwen's n-gram block size")
    parser.add_argument(
        "--qwen-profile",
        default="results/heavy/profile_qwen.json",
        help="Qwen's profile for mode plan (written by benchmarks/heavy.py)",
    )
    parser.add_argument(
        "--assistant",
        default=None,
        help="HF assisted generation's draft, a draft name (default: the trained draft-lm-1l pyspec uses)",
    )
    parser.add_argument("--skip-qwen", action="store_true")
    parser.add_argument("--out", default=None, help="default results/ (--quick: results/quick/)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep finished runs in <out>/journal_<model>.jsonl and go on from them (long runs)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    limit = (2 if args.quick else 12) if args.limit is None else (args.limit or None)
    max_new = args.max_new_tokens or (32 if args.quick else 128)
    out = args.out or ("results/quick" if args.quick else "results")
    readme = None if args.quick else "README.md"

    smollm2, profile = load_model("smollm2-135m-instruct"), None
    if args.resume:  # one plan for every sitting: the profile is kept with the journal
        saved = Path(out) / "profile_smollm2.json"
        if saved.exists():
            profile = json.loads(saved.read_text())
        else:
            profile = profile_model(smollm2, ["ngram"])
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(profile) + "\n")
    reports = [
        bench(
            smollm2,
            ["mtbench", "humaneval"],
            ["ar", "ngram", "plan", "hf", "hf-pld", "hf-assisted"],
            limit,
            max_new,
            args.repeats,
            assistant=args.assistant,
            profile=profile,
            journal=f"{out}/journal_smollm2.jsonl" if args.resume else None,
        )
    ]
    write_report(reports[0], out, readme)
    print(markdown(reports[0]), flush=True)
    if not (args.quick or args.skip_qwen):
        qwen_profile = Path(args.qwen_profile)
        profile = json.loads(qwen_profile.read_text()) if qwen_profile.exists() else None
        if profile is None:
            print(f"no Qwen profile at {qwen_profile} (run benchmarks/heavy.py): Qwen runs without plan")
        try:
            reports.append(
                bench(
                    "qwen2.5-coder-1.5b-instruct",
                    ["humaneval"],
                    ["ar", "ngram"] + (["plan"] if profile else []) + ["hf", "hf-pld"],
                    args.qwen_limit,
                    max_new,
                    args.repeats,
                    block=args.qwen_block,
                    profile=profile,
                    journal=f"{out}/journal_qwen.jsonl" if args.resume else None,
                )
            )
            write_report(reports[-1], out, readme)
            print(markdown(reports[-1]), flush=True)
        except ModelNotFoundError as e:
            print(f"Qwen2.5-Coder-1.5B not measured: {e}")
    merged = {"speedup_vs_hf_plain": {}, "speedup_vs_hf_pld": {}, "lossless": True}
    for r in reports:
        for key in ("speedup_vs_hf_plain", "speedup_vs_hf_pld"):
            merged[key].update(r["headline"][key])
        merged["lossless"] &= r["headline"]["lossless"]
    print(json.dumps(merged))


if __name__ == "__main__":
    main()
