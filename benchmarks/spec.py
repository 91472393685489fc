"""Speculative decoding modes against pyspec's autoregressive decoding on SmolLM2-135M-Instruct.

Greedy, fp32, batch 1 (each prompt alone), on held-out prompts: 20 MT-bench questions (every 4th,
chat template) and 20 HumanEval completions (every 8th, raw). For each prompt, autoregressive decoding
runs first (the reference tokens and the baseline time), then every mode, interleaved; each mode's
tokens are checked against the reference while it is timed; a mode's speed-up is against the
autoregressive runs of the same prompts. Until trained drafts exist (a later issue), the model drafts
are early exits of the target itself (its first layers plus its head): weak and slow, so those modes
run on the first ``--slow-prompts`` (5) prompts of each dataset; the n-gram modes on all of them.

    python benchmarks/spec.py            # 20 + 20 prompts x 128 new tokens
    python benchmarks/spec.py --quick    # 2 + 2 prompts x 48 new tokens (about 3 minutes)

Prints a table per dataset (MAT, tokens/s, speed-up: ratio of total times, and the median and
interquartile range of per-prompt speed-ups); last line JSON
``{"lossless", "best_mode", "best_speedup_vs_ar", "mat", "speedup_vs_ar"}``.
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
from pyspec.drafters.model import TreeShape


def modes(target):
    """Mode name -> a fresh drafter stack."""
    small, large = target.first_layers(8), target.first_layers(20)
    return {
        "ngram(b=4)": lambda: build_stack(target, ["ngram"], [4]),
        "ngram(b=8)": lambda: build_stack(target, ["ngram"], [8]),
        "early20(chain 3)": lambda: build_stack(target, [large], [3]),
        "early20(tree 3x2x1)": lambda: build_stack(target, [large], tree=TreeShape.branching([3, 2, 1])),
        "ngram>early20": lambda: build_stack(target, ["ngram", large], [4, 4]),
        "ngram>early20(tree 3,2,1)": lambda: build_stack(target, ["ngram", large], [4, 4], tree=[3, 2, 1]),
        "ngram>early8>early20": lambda: build_stack(target, ["ngram", small, large], [4, 3, 4]),
    }


SLOW_PROMPTS = 5  # the early-exit modes are 2-6x slower than autoregressive decoding: fewer prompts


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 + 2 prompts, 48 new tokens")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--modes", nargs="*", default=None, help="subset of mode names")
    parser.add_argument(
        "--slow-prompts", type=int, default=SLOW_PROMPTS, help="prompts per dataset for the model-draft modes"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = 2 if args.quick else 20
    max_new = args.max_new_tokens or (48 if args.quick else 128)

    target = pyspec.load_model("smollm2-135m-instruct", progress=False)
    datasets = {
        "mtbench": encode_prompts(target, [p.text for p in held_out(mtbench(), 4)[:n]]),
        "humaneval": [target.tokenizer(p.text).input_ids for p in held_out(humaneval(), 8)[:n]],
    }
    stacks = modes(target)
    names = args.modes or list(stacks)
    generate_autoregressive(target, datasets["mtbench"][:1], 8)  # warm-up

    rows = {}  # (dataset, mode) -> list of (tokens, seconds, passes, ar_seconds)
    lossless = True
    for ds, prompts in datasets.items():
        for i, prompt in enumerate(prompts):
            start = time.perf_counter()
            ref = generate_autoregressive(target, [prompt], max_new)[0]
            ar_seconds = time.perf_counter() - start
            rows.setdefault((ds, "autoregressive"), []).append(
                (len(ref.tokens), ar_seconds, len(ref.tokens), ar_seconds)
            )
            for name in names:
                if not name.startswith("ngram(") and i >= args.slow_prompts:
                    continue
                start = time.perf_counter()
                out = generate_speculative(target, [prompt], stacks[name](), max_new)[0]
                seconds = time.perf_counter() - start
                if out.tokens != ref.tokens:
                    lossless = False
                    print(f"MISMATCH {ds} prompt {i} mode {name}")
                rows.setdefault((ds, name), []).append(
                    (len(out.tokens), seconds, out.stats.target_passes, ar_seconds)
                )
            print(f"{ds} {i + 1}/{len(prompts)} done", flush=True)

    summary: dict = {}
    for ds in datasets:
        print(
            f"\n{ds} ({len(datasets[ds])} prompts, {max_new} new tokens, greedy, batch 1, "
            f"{args.threads} threads)"
        )
        print(f"{'mode':26} {'n':>3} {'MAT':>5} {'tok/s':>7} {'speed-up':>9} {'per-prompt median [IQR]':>26}")
        for name in ["autoregressive"] + names:
            r = rows[(ds, name)]
            tokens, secs, passes = sum(x[0] for x in r), sum(x[1] for x in r), sum(x[2] for x in r)
            ar = sum(x[3] for x in r)
            lo, med, hi = quartiles([x[3] / x[1] for x in r])
            summary.setdefault(name, {})[ds] = {
                "mat": tokens / passes,
                "speedup": ar / secs,
                "tok_s": tokens / secs,
            }
            print(
                f"{name:26} {len(r):3d} {tokens / passes:5.2f} {tokens / secs:7.1f} {ar / secs:8.2f}x "
                f"{med:12.2f} [{lo:.2f}, {hi:.2f}]"
            )
    overall = {name: statistics.mean(v["speedup"] for v in summary[name].values()) for name in names}
    best = max(overall, key=overall.get)
    print(f"\nlossless: {lossless}; best mode (mean speed-up over both datasets): {best}")
    print(
        json.dumps(
            {
                "lossless": lossless,
                "best_mode": best,
                "best_speedup_vs_ar": round(overall[best], 3),
                "mat": {n: {ds: round(v["mat"], 3) for ds, v in summary[n].items()} for n in names},
                "speedup_vs_ar": {
                    n: {ds: round(v["speedup"], 3) for ds, v in summary[n].items()} for n in names
                },
            }
        )
    )


if __name__ == "__main__":
    main()
