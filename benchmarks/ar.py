"""Autoregressive decoding: pyspec against transformers ``generate()``, and the cost of verifying k tokens.

1. SmolLM2-135M-Instruct, fp32, greedy, MT-bench prompts, same threads: pyspec's autoregressive
   decoding against ``generate()`` at batch 1 (each prompt alone) and batch 8 (pyspec: one ragged
   batch; transformers: one left-padded batch), repeats interleaved. Batch 1 checks token identity.
2. t(k)/t(1): one forward pass of k = 1..16 new tokens (a chain after a ~300-token prompt) against
   one of a single token, for pyspec and transformers, on SmolLM2 and (when installed) Qwen2.5-Coder-1.5B.

    python benchmarks/ar.py            # 10 prompts x 128 new tokens, 3 repeats
    python benchmarks/ar.py --quick    # 3 prompts x 32 new tokens, 1 repeat

Last line: JSON ``{"speedup_vs_hf_bs1", "speedup_vs_hf_bs8", "identical_to_hf", "verify_cost_ratio_k8"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import _path  # noqa: F401  (first: keeps benchmarks/planner.py from shadowing the planner package)
import torch

import pyspec
from pyspec.api import encode_prompts
from pyspec.batch import StepBatch
from pyspec.data import mtbench
from pyspec.decoding.autoregressive import generate_autoregressive
from pyspec.models.loading import ModelNotFoundError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def hf_generate(hf, prompts: list[list[int]], max_new: int, pad: int) -> tuple[list[list[int]], float]:
    """transformers greedy generate() of a left-padded batch: new tokens per prompt (cut at EOS), seconds."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False, pad_token_id=pad)
    seconds = time.perf_counter() - start
    eos = set(
        hf.generation_config.eos_token_id
        if isinstance(hf.generation_config.eos_token_id, list)
        else [hf.generation_config.eos_token_id]
    )
    results = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        results.append(row[:cut])
    return results, seconds


def pyspec_generate(model, prompts: list[list[int]], max_new: int) -> tuple[list[list[int]], float]:
    start = time.perf_counter()
    outs = generate_autoregressive(model, prompts, max_new)
    return [o.tokens for o in outs], time.perf_counter() - start


def divergence_gap(model, prompt: list[int], ours: list[int], theirs: list[int]) -> str:
    """Where two greedy outputs part, and pyspec's top-1/top-2 logit gap there (a near-tie shows as a
    tiny gap: two fp32 implementations that sum in different orders may break it differently)."""
    at = next(i for i, (a, b) in enumerate(zip(ours + [-1], theirs + [-2], strict=False)) if a != b)
    cache = model.new_cache(num_pages=(len(prompt) + at) // 16 + 2)
    seq = cache.add_sequence()
    with torch.inference_mode():
        logits = model(StepBatch.build(cache, [seq], [prompt + ours[:at]]), cache).logits[0]
    top = logits.topk(2).values
    gap = float(top[0] - top[1])
    return f"token {at}: pyspec {ours[at : at + 1]}, transformers {theirs[at : at + 1]}, gap {gap:.2e}"


def decode_throughput(model, hf, prompts, max_new, repeats, batch):
    """Median tokens/s of both tools over interleaved repeats; identity of their tokens."""
    groups = [prompts[i : i + batch] for i in range(0, len(prompts), batch)]
    rates = {"pyspec": [], "transformers": []}
    identical = True
    pad = model.config.eos_token_ids[0]
    for _ in range(repeats):
        outputs = {}
        for name in ("transformers", "pyspec"):
            tokens, seconds = 0, 0.0
            for g, group in enumerate(groups):
                run = pyspec_generate if name == "pyspec" else lambda m, p, n: hf_generate(hf, p, n, pad)
                out, s = run(model, group, max_new)
                outputs[name, g] = out
                tokens += sum(len(o) for o in out)
                seconds += s
            rates[name].append(tokens / seconds)
        for g, group in enumerate(groups if batch == 1 else []):  # padding changes transformers' batches
            ours, theirs = outputs["pyspec", g][0], outputs["transformers", g][0]
            if ours != theirs:
                identical = False
                where = divergence_gap(model, group[0], ours, theirs)
                print(f"  prompt {g} differs from transformers at {where}")
    return rates, identical


def forward_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def verify_costs(model, hf, ks, repeats) -> dict[str, dict[int, float]]:
    """Forward time of k new tokens after a ~300-token prompt, over that of 1 token."""
    prompt = list(range(1000, 1300))
    cache = model.new_cache(num_pages=(300 + 32) // 16 + 2)
    seq = cache.add_sequence()
    with torch.inference_mode():
        model(StepBatch.build(cache, [seq], [prompt]), cache)
    cache.commit(seq, 300)
    ours, theirs = {}, {}

    def run_pyspec(k):
        batch = StepBatch.build(cache, [seq], [list(range(2000, 2000 + k))])
        with torch.inference_mode():
            model(batch, cache)

    for k in ks:
        ours[k] = forward_time(lambda k=k: run_pyspec(k), repeats)
    if hf is not None:
        with torch.inference_mode():
            past = hf(torch.tensor([prompt]), use_cache=True).past_key_values

        def run_hf(k):
            with torch.inference_mode():
                hf(torch.arange(2000, 2000 + k)[None], past_key_values=past, use_cache=True)
            past.crop(-k)  # back to the prompt: the next run verifies the same position

        for k in ks:
            theirs[k] = forward_time(lambda k=k: run_hf(k), repeats)
    return {
        "pyspec": {k: ours[k] / ours[ks[0]] for k in ks},
        "pyspec_ms": {k: ours[k] * 1e3 for k in ks},
        "transformers": {k: theirs[k] / theirs[ks[0]] for k in theirs},
        "transformers_ms": {k: theirs[k] * 1e3 for k in theirs},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="3 prompts x 32 tokens, 1 repeat (a few minutes)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-qwen", action="store_true", help="do not measure Qwen even when installed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    n_prompts, max_new, repeats = (8, 32, 1) if args.quick else (10, 128, 3)
    model = pyspec.load_model("smollm2-135m-instruct", progress=False)
    hf = AutoModelForCausalLM.from_pretrained(str(model.folder), dtype=torch.float32).eval()
    prompts = encode_prompts(model, [p.text for p in mtbench()[:n_prompts]])

    print(
        f"SmolLM2-135M-Instruct, fp32 greedy, {args.threads} threads, {len(prompts)} MT-bench prompts, "
        f"{max_new} new tokens, {repeats} repeat(s)"
    )
    print(f"{'batch':>5} {'pyspec tok/s':>13} {'HF tok/s':>9} {'speedup':>8} {'spread':>14}")
    speedups = {}
    identical = True
    for batch in (1, 8):
        use = prompts[: max(batch, 3 if args.quick else len(prompts))] if batch == 1 else prompts[:8]
        rates, same = decode_throughput(model, hf, use, max_new, repeats, batch)
        if batch == 1:
            identical = same
        ratios = [a / b for a, b in zip(rates["pyspec"], rates["transformers"], strict=True)]
        speedups[batch] = statistics.median(ratios)
        ours, theirs = statistics.median(rates["pyspec"]), statistics.median(rates["transformers"])
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        print(f"{batch:>5} {ours:>13.1f} {theirs:>9.1f} {speedups[batch]:>7.2f}x {spread:>14}")
    print(f"batch 1 token-identical to transformers: {identical}")

    ks = [1, 2, 4, 8, 16] if args.quick else list(range(1, 17))
    costs = {"smollm2": verify_costs(model, hf, ks, 3 if args.quick else 7)}
    del hf
    if not args.skip_qwen:
        try:
            qwen = pyspec.load_model("qwen2.5-coder-1.5b-instruct", progress=False)
            costs["qwen"] = verify_costs(qwen, None, ks, 3)
            del qwen
        except ModelNotFoundError as e:
            print(f"Qwen2.5-Coder-1.5B not measured: {e}")
    print("\nforward of k new tokens after a 300-token prompt: t(k)/t(1)  [t(1) ms]")
    print(
        f"{'k':>3} "
        + " ".join(
            f"{name + ' ' + tool:>22}"
            for name in costs
            for tool in ("pyspec", "transformers")
            if costs[name][tool]
        )
    )
    for k in ks:
        cells = [
            f"{costs[n][tool][k]:>22.2f}"
            for n in costs
            for tool in ("pyspec", "transformers")
            if costs[n][tool]
        ]
        print(f"{k:>3} " + " ".join(cells))
    for n in costs:
        print(
            f"t(1) {n}: pyspec {costs[n]['pyspec_ms'][1]:.1f} ms"
            + (
                f", transformers {costs[n]['transformers_ms'][1]:.1f} ms"
                if costs[n]["transformers_ms"]
                else ""
            )
        )
    summary = {
        "speedup_vs_hf_bs1": round(speedups[1], 3),
        "speedup_vs_hf_bs8": round(speedups[8], 3),
        "identical_to_hf": identical,
        "verify_cost_ratio_k8": {n: round(c["pyspec"][8], 3) for n, c in costs.items()},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
