"""The trained drafts of SmolLM2-135M-Instruct against its autoregressive decoding.

Draft kinds (weights in ``pyspec/weights/smollm2-135m-instruct/``, trained by ``python -m
pyspec.training``): draft LMs of 1 and 3 layers (chains of 2 and 4), the hierarchy n-gram > 1-layer >
3-layer > target, Medusa heads and hidden-transfer layers (3 future tokens, one chain and one tree of
per-depth widths, the same tree for both). Greedy, fp32, batch 1, held-out prompts: MT-bench (every
4th, chat template) and HumanEval (every 8th, raw). Per prompt and repeat, autoregressive decoding runs
first (reference tokens and baseline time), then every mode, interleaved; every mode's tokens are
checked against the reference while it is timed.

    python benchmarks/drafts.py            # 10 + 10 prompts x 128 new tokens, 1 repeat
    python benchmarks/drafts.py --quick    # 2 + 2 prompts x 48 new tokens (about 3 minutes)

Prints per dataset: MAT, tokens/s, speed-up (ratio of total times) and the median [min, max] of
per-prompt speed-ups; last line JSON
``{"mat": {"hidden_transfer", "medusa", "draft_lm_small", "draft_lm_large"}, "speedup_vs_ar": {...},
"lossless"}`` (MAT and speed-up over both datasets; heads: the tree mode).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import _path  # noqa: F401  (first: keeps benchmarks/planner.py from shadowing the planner package)
import torch

import pyspec
from pyspec.api import encode_prompts
from pyspec.data import held_out, humaneval, mtbench
from pyspec.decoding.autoregressive import generate_autoregressive
from pyspec.decoding.hierarchy import build_stack
from pyspec.decoding.speculative import generate_speculative

HEADLINE = {  # JSON key -> mode
    "draft_lm_small": "draft-lm-1l(b=4)",
    "draft_lm_large": "draft-lm-3l(b=4)",
    "medusa": "medusa(tree)",
    "hidden_transfer": "hidden-transfer(tree)",
}


def modes(target, tree: list[int]):
    """Mode name -> a fresh drafter."""
    chain = [1] * len(tree)
    return {
        "draft-lm-1l(b=2)": lambda: build_stack(target, ["draft-lm-1l"], [2]),
        "draft-lm-1l(b=4)": lambda: build_stack(target, ["draft-lm-1l"], [4]),
        "draft-lm-3l(b=2)": lambda: build_stack(target, ["draft-lm-3l"], [2]),
        "draft-lm-3l(b=4)": lambda: build_stack(target, ["draft-lm-3l"], [4]),
        "ngram>1l>3l": lambda: build_stack(target, ["ngram", "draft-lm-1l", "draft-lm-3l"], [4, 3, 4]),
        "medusa(chain)": lambda: build_stack(target, ["medusa"], tree=chain),
        "medusa(tree)": lambda: build_stack(target, ["medusa"], tree=tree),
        "hidden-transfer(chain)": lambda: build_stack(target, ["hidden-transfer"], tree=chain),
        "hidden-transfer(tree)": lambda: build_stack(target, ["hidden-transfer"], tree=tree),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 + 2 prompts, 48 new tokens")
    parser.add_argument("--limit", type=int, default=10, help="prompts per dataset")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--tree", default="3,2,1", help="heads' tree: candidates per depth")
    parser.add_argument("--modes", nargs="*", default=None, help="subset of mode names")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = 2 if args.quick else args.limit
    max_new = args.max_new_tokens or (48 if args.quick else 128)

    target = pyspec.load_model("smollm2-135m-instruct", progress=False)
    datasets = {
        "mtbench": encode_prompts(target, [p.text for p in held_out(mtbench(), 4)[:n]]),
        "humaneval": [target.tokenizer(p.text).input_ids for p in held_out(humaneval(), 8)[:n]],
    }
    stacks = modes(target, [int(w) for w in args.tree.split(",")])
    names = args.modes or list(stacks)
    generate_autoregressive(target, datasets["mtbench"][:1], 8)  # warm-up

    rows: dict = {}  # (dataset, mode) -> list of (tokens, seconds, passes, ar_seconds)
    lossless = True
    for repeat in range(args.repeats):
        for ds, prompts in datasets.items():
            for i, prompt in enumerate(prompts):
                start = time.perf_counter()
                ref = generate_autoregressive(target, [prompt], max_new)[0]
                ar_seconds = time.perf_counter() - start
                rows.setdefault((ds, "autoregressive"), []).append(
                    (len(ref.tokens), ar_seconds, len(ref.tokens), ar_seconds)
                )
                for name in names:
                    start = time.perf_counter()
                    out = generate_speculative(target, [prompt], stacks[name](), max_new)[0]
                    seconds = time.perf_counter() - start
                    if out.tokens != ref.tokens:
                        lossless = False
                        print(f"MISMATCH {ds} prompt {i} mode {name}")
                    rows.setdefault((ds, name), []).append(
                        (len(out.tokens), seconds, out.stats.target_passes, ar_seconds)
                    )
                print(f"repeat {repeat + 1}/{args.repeats} {ds} {i + 1}/{len(prompts)} done", flush=True)

    summary: dict = {}
    for ds in datasets:
        print(
            f"\n{ds} ({len(datasets[ds])} prompts x {args.repeats} repeats, {max_new} new tokens, greedy, "
            f"batch 1, {args.threads} threads)"
        )
        print(f"{'mode':24} {'MAT':>5} {'tok/s':>7} {'speed-up':>9} {'per-prompt median [min, max]':>30}")
        for name in ["autoregressive"] + names:
            r = rows[(ds, name)]
            tokens, secs, passes = sum(x[0] for x in r), sum(x[1] for x in r), sum(x[2] for x in r)
            ar = sum(x[3] for x in r)
            per = [x[3] / x[1] for x in r]
            summary.setdefault(name, {})[ds] = (tokens, secs, passes, ar)
            print(
                f"{name:24} {tokens / passes:5.2f} {tokens / secs:7.1f} {ar / secs:8.2f}x "
                f"{statistics.median(per):14.2f} [{min(per):.2f}, {max(per):.2f}]"
            )
    both = {name: [sum(v[j] for v in summary[name].values()) for j in range(4)] for name in names}
    speedups = {k: round(both[m][3] / both[m][1], 3) for k, m in HEADLINE.items() if m in both}
    if "ngram>1l>3l" in both:
        speedups["hierarchy"] = round(both["ngram>1l>3l"][3] / both["ngram>1l>3l"][1], 3)
    print(f"\nlossless: {lossless}")
    print(
        json.dumps(
            {
                "mat": {k: round(both[m][0] / both[m][2], 3) for k, m in HEADLINE.items() if m in both},
                "speedup_vs_ar": speedups,
                "lossless": lossless,
            }
        )
    )


if __name__ == "__main__":
    main()
