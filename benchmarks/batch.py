"""Batched speculative decoding without padding (EMS-SD) against padded batching and plain decoding.

SmolLM2-135M-Instruct, greedy, fp32, held-out MT-bench questions (every 4th, chat template) served by
:class:`pyspec.decoding.engine.BatchEngine` with continuous batching: all requests are submitted at
once and at most ``batch`` run together. Modes:

- ``autoregressive``: no drafts (one token per request per step);
- ``padded``: n-gram drafts (block 4), drafts padded to the longest and KV aligned to the longest
  acceptance (the padded baseline); ``unpadded-kv`` (inputs still padded) and ``unpadded-inputs``
  (KV still padded): the two ablations; ``ems``: neither padded;
- ``ems+plan``: per batch size, what a plan made from this machine's profile chooses (speculation
  or not, block size), as served by the engine.

Every request's output is checked against its own plain decoding. Throughput: new tokens of all
requests over the wall time; latency: submission to finish, mean over requests; peak KV pages held
between steps (padding slots included). Each mode runs ``--repeats`` times, modes in turn (reversed
every other repeat); the table shows the median and the range. Padded KV is emulated for memory
only (see the engine).

    python benchmarks/batch.py            # 16 requests x 64 new tokens, batch 1, 2, 4, 8, 16
    python benchmarks/batch.py --quick    # 8 requests x 32 new tokens, batch 1 and 8 (a few minutes)

Last line JSON: ``{"ems_over_padded_bs8", "ems_over_ar": {"1", "8", "16"}, "lossless"}`` where
``ems_over_ar`` is ``ems+plan`` throughput over ``autoregressive``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import _path  # noqa: F401  (first: keeps benchmarks/planner.py from shadowing the planner package)
import torch

import pyspec
from planner.plan import make_plan
from pyspec.api import encode_prompts
from pyspec.data import calibration, held_out, mtbench
from pyspec.decoding.autoregressive import generate_autoregressive
from pyspec.decoding.engine import BatchEngine
from pyspec.decoding.hierarchy import build_stack

MODES = {  # name -> (speculate, padding)
    "autoregressive": (False, "none"),
    "padded": (True, "both"),
    "unpadded-kv": (True, "inputs"),
    "unpadded-inputs": (True, "kv"),
    "ems": (True, "none"),
}


def serve(target, prompts, max_new, batch, block, padding):
    drafter = build_stack(target, ["ngram"], [block]) if block else None
    engine = BatchEngine(
        target, drafter, max_batch=batch, max_length=max(map(len, prompts)) + max_new + 8, padding=padding
    )
    start = time.perf_counter()
    ids = [engine.submit(p, max_new_tokens=max_new) for p in prompts]
    outputs = engine.run()
    seconds = time.perf_counter() - start
    outs = [outputs[i] for i in ids]
    return {
        "tokens": [o.tokens for o in outs],
        "throughput": sum(len(o.tokens) for o in outs) / seconds,
        "latency": sum(o.stats.seconds for o in outs) / len(outs),
        "peak_pages": engine.stats["peak_pages"],
        "steps": engine.stats["steps"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 requests x 32 tokens, batch 1 and 8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--block", type=int, default=4, help="n-gram block size of the speculative modes")
    parser.add_argument("--repeats", type=int, default=None, help="runs per mode (default 2; --quick 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, max_new, sizes = (8, 32, [1, 8]) if args.quick else (16, 64, [1, 2, 4, 8, 16])
    args.repeats = args.repeats or (1 if args.quick else 2)

    target = pyspec.load_model("smollm2-135m-instruct", progress=False)
    prompts = encode_prompts(target, [p.text for p in held_out(mtbench(), 4)[:n]])
    references = [generate_autoregressive(target, [p], max_new)[0].tokens for p in prompts]
    start = time.perf_counter()
    held = [p.text for p in calibration(mtbench(), 4)[:8]]  # calibrate on MT-bench, as served
    profile = pyspec.profile_model(target, ["ngram"], held, batch_sizes=sizes)
    plan = make_plan(profile, max_block=8)
    print(f"profiled and planned in {time.perf_counter() - start:.0f} s", flush=True)

    results, lossless = {}, True  # (batch, mode) -> {"throughput": [per repeat], ...}
    for batch in sizes:
        choice = plan.for_batch(batch)
        planned = choice.levels[0][1] if choice.levels else 0
        runs = {name: (args.block if spec else 0, padding) for name, (spec, padding) in MODES.items()}
        runs["ems+plan"] = (planned, "none")
        for repeat in range(args.repeats):  # modes in turn, reversed every other repeat
            for name in list(runs) if repeat % 2 == 0 else list(runs)[::-1]:
                block, padding = runs[name]
                r = serve(target, prompts, max_new, batch, block, padding)
                if r.pop("tokens") != references:
                    lossless = False
                    print(f"MISMATCH batch {batch} mode {name}")
                entry = results.setdefault(
                    (batch, name), {"label": f"ngram:{block}" if block else "autoregressive"}
                )
                for key, value in r.items():
                    entry.setdefault(key, []).append(value)
        print(f"batch {batch} done", flush=True)

    def median(batch: int, name: str, key: str) -> float:
        return statistics.median(results[(batch, name)][key])

    print(
        f"\n{n} MT-bench requests x {max_new} new tokens, greedy, n-gram block {args.block}, "
        f"{args.threads} threads; continuous batching, at most `batch` running"
    )
    print(
        f"{'batch':>5} {'mode':16} {'tok/s':>7} {'[min, max]':>14} {'vs AR':>6} {'latency s':>10} "
        f"{'steps':>6} {'peak KV':>8}"
    )
    for batch in sizes:
        ar = median(batch, "autoregressive", "throughput")
        for name in list(MODES) + ["ems+plan"]:
            r = results[(batch, name)]
            label = f"{name} ({r['label']})" if name == "ems+plan" else name
            thr, low, high = median(batch, name, "throughput"), min(r["throughput"]), max(r["throughput"])
            print(
                f"{batch:5d} {label:16} {thr:7.1f} [{low:5.1f}, {high:5.1f}] "
                f"{thr / ar:5.2f}x {median(batch, name, 'latency'):10.2f} {r['steps'][0]:6d} "
                f"{r['peak_pages'][0]:8d}"
            )
    ratio = {
        b: median(b, "ems+plan", "throughput") / median(b, "autoregressive", "throughput") for b in sizes
    }
    over_padded = median(8, "ems", "throughput") / median(8, "padded", "throughput")
    print(
        f"\nEMS over padded at batch 8: {over_padded:.2f}x; EMS with the plan over autoregressive: "
        + ", ".join(f"batch {b} {x:.2f}x" for b, x in ratio.items())
        + f"; lossless {lossless}"
    )
    print(
        json.dumps(
            {
                "ems_over_padded_bs8": round(over_padded, 3),
                "ems_over_ar": {str(b): round(ratio[b], 3) for b in (1, 8, 16) if b in ratio},
                "lossless": lossless,
            }
        )
    )


if __name__ == "__main__":
    main()
