"""The planner's predictions against measured runs on SmolLM2-135M-Instruct (planner issue, item 8).

1. Profile this machine (``pyspec.profile_model``): forward-pass costs of the target and of the
   candidate drafts (n-gram, the target's first 8 and first 20 layers), and acceptance on calibration
   prompts (MT-bench and HumanEval prompts the benchmarks hold out).
2. Plan (``planner.plan.make_plan``): the predicted-fastest configuration at batch 1.
3. Run a grid of configurations (chains of one, two and three levels with several block sizes,
   trees, and the plan's choice) on held-out benchmark prompts, greedy, batch 1, each prompt's runs
   interleaved, every output checked token for token against autoregressive decoding; compare each
   configuration's measured seconds per token with the planner's prediction for it.

    python benchmarks/planner.py            # 5 + 5 prompts x 128 new tokens, 14 configurations (~25 min)
    python benchmarks/planner.py --all      # and 4 more, 2-6x slower than plain decoding (~45 minutes)
    python benchmarks/planner.py --quick    # 2 + 2 prompts x 48 new tokens, small grid (~4 minutes)

Times are of decoding after the first step (the prompt's prefill, the same for every configuration
but for the draft models' own prefill), which the planner does not model. Regret: how much slower
the planner's choice ran than the best measured configuration. Prediction error:
|predicted - measured| / measured, median over the five fastest measured configurations.
Last line JSON: ``{"regret", "median_prediction_error", "chosen", "best_measured", "lossless"}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import _path  # noqa: F401  (first: keeps this file from shadowing the planner package)
import torch

import pyspec
from planner.plan import Choice, make_plan, predict
from pyspec.api import encode_prompts
from pyspec.data import held_out, humaneval, mtbench
from pyspec.decoding.autoregressive import generate_autoregressive
from pyspec.decoding.speculative import generate_speculative
from pyspec.drafters.model import TreeShape
from pyspec.spec import SpecConfig

CANDIDATES = ["ngram", "early:8", "early:20"]


def grid(quick: bool, everything: bool = False) -> list[Choice]:
    """The configurations measured (predictions are filled in later)."""

    def chain(*levels):
        return Choice(tuple(levels), 0.0, 0.0)

    def tree(name, widths):
        shape = TreeShape.branching(widths)
        return Choice(((name, len(shape.parents)),), 0.0, 0.0, (shape.parents, shape.ranks))

    if quick:
        return (
            [chain()]
            + [chain(("ngram", b)) for b in (2, 4, 8, 16)]
            + [
                chain(("early:20", 2)),
                tree("early:20", [2, 1]),
            ]
        )
    slow = (  # 2-6x slower than plain decoding here: only with --all
        [chain(("early:20", 3)), tree("early:20", [3, 2, 1]), chain(("ngram", 8), ("early:20", 3))]
        + [chain(("ngram", 4), ("early:8", 3), ("early:20", 3))]
        if everything
        else []
    )
    return (
        [chain()]
        + [chain(("ngram", b)) for b in (1, 2, 3, 4, 6, 8, 12, 16)]
        + [chain(("early:20", b)) for b in (1, 2)]
        + [chain(("early:8", 2)), tree("early:20", [2, 1]), chain(("ngram", 4), ("early:20", 2))]
        + slow
    )


def drafter(target, choice: Choice):
    return SpecConfig.from_plan_choice(choice).build(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 + 2 prompts, 48 new tokens, small grid")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--all", action="store_true", help="also the slowest stacks and trees (+20 minutes)")
    parser.add_argument("--profile", default=None, help="reuse a profile JSON instead of measuring one")
    parser.add_argument("--save-profile", default=None, help="write the measured profile here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, max_new = (2, 48) if args.quick else (5, 128)

    target = pyspec.load_model("smollm2-135m-instruct", progress=False)
    start = time.perf_counter()
    if args.profile:
        with open(args.profile) as f:
            profile = json.load(f)
    else:
        profile = pyspec.profile_model(target, CANDIDATES, calibration_prompts=2 if args.quick else 8)
        if args.save_profile:
            with open(args.save_profile, "w") as f:
                json.dump(profile, f, indent=1)
    plan = make_plan(profile).for_batch(1)
    print(f"profiled and planned in {time.perf_counter() - start:.0f} s; plan: {plan.label}", flush=True)

    configs = grid(args.quick, args.all)
    if all((c.levels, c.tree) != (plan.levels, plan.tree) for c in configs):
        configs.append(plan)
    prompts = encode_prompts(target, [p.text for p in held_out(mtbench(), 4)[:n]])
    prompts += [target.tokenizer(p.text).input_ids for p in held_out(humaneval(), 8)[:n]]
    generate_autoregressive(target, prompts[:1], 8)  # warm-up

    seconds = {c.label: [] for c in configs}  # per prompt: decoding after the first step (prefill)
    tokens = {c.label: [] for c in configs}  # per prompt: tokens after the first step
    passes = {c.label: 0 for c in configs}
    emitted = {c.label: 0 for c in configs}
    lossless = True
    for i, prompt in enumerate(prompts):
        reference = None
        for c in configs:
            if c.levels:
                out = generate_speculative(target, [prompt], drafter(target, c), max_new)[0]
            else:
                out = generate_autoregressive(target, [prompt], max_new)[0]
            after = out.stats.seconds - out.stats.ttft_seconds
            seconds[c.label].append(after)
            tokens[c.label].append(round(out.stats.decode_tokens_per_second * after))
            passes[c.label] += out.stats.target_passes
            emitted[c.label] += len(out.tokens)
            reference = reference or out.tokens  # autoregressive runs first
            if out.tokens != reference:
                lossless = False
                print(f"MISMATCH prompt {i} {c.label}")
        print(f"prompt {i + 1}/{len(prompts)} done", flush=True)

    measured = {k: sum(seconds[k]) / sum(tokens[k]) for k in seconds}
    predicted = {c.label: predict(profile, 1, c.levels, c.tree) for c in configs}
    ar = measured["autoregressive"]
    print(
        f"\n{len(prompts)} held-out prompts (MT-bench, HumanEval) x {max_new} new tokens, greedy, batch 1, "
        f"{args.threads} threads; the plan: {plan.label}"
    )
    print(
        f"{'configuration':34} {'MAT':>5} {'predicted':>10} {'measured':>9} {'error':>7} "
        f"{'speed-up':>9} {'per-prompt median [min, max]':>29}"
    )
    for c in sorted(configs, key=lambda c: measured[c.label]):
        k = c.label
        ratios = [a / s for a, s in zip(seconds["autoregressive"], seconds[k], strict=True)]
        print(
            f"{k + (' *' if k == plan.label else ''):34} {emitted[k] / passes[k]:5.2f} "
            f"{predicted[k] * 1e3:8.1f}ms {measured[k] * 1e3:7.1f}ms "
            f"{(predicted[k] - measured[k]) / measured[k]:+7.1%} {ar / measured[k]:8.2f}x "
            f"{statistics.median(ratios):12.2f} [{min(ratios):.2f}, {max(ratios):.2f}]"
        )
    best = min(measured, key=measured.get)
    top5 = sorted(measured, key=measured.get)[:5]
    errors = [abs(predicted[k] - measured[k]) / measured[k] for k in top5]
    regret = measured[plan.label] / measured[best] - 1
    print(
        f"\n* the plan's choice; regret {regret:.1%} against the best measured ({best}); "
        f"median prediction error over the five fastest {statistics.median(errors):.1%}; lossless {lossless}"
    )
    print(
        json.dumps(
            {
                "regret": round(regret, 4),
                "median_prediction_error": round(statistics.median(errors), 4),
                "chosen": plan.label,
                "best_measured": best,
                "lossless": lossless,
            }
        )
    )


if __name__ == "__main__":
    main()
