"""APAR against the same fine-tuned model decoding sequentially, alone and with n-gram speculation.

The model is SmolLM2-135M-Instruct with the shipped APAR adapter (``pyspec/weights/.../apar``). Modes,
per prompt, interleaved over repeats (greedy, fp32, one request at a time):

- ``sequential``: the same model, forking banned (``max_depth=0``): the baseline;
- ``apar``: forking on (depth 1, at most 8 streams running), all streams in one ragged batch;
- ``sequential+ngram`` and ``apar+ngram``: each stream drafts with the n-gram drafter (4 tokens).

Structured prompts: MT-bench's writing, humanities and stem questions (never trained on) and held-out
ShareGPT questions whose reply is a numbered list. Unstructured prompts: MT-bench's math and
reasoning questions, where the model should not fork. Speculative modes are checked token-identical
to their plain counterparts on every run, and every repeat to the first.

    python benchmarks/apar.py             # 8 + 8 structured, 6 unstructured prompts, 2 repeats
    python benchmarks/apar.py --quick     # 3 + 3 structured, 2 unstructured, 1 repeat, 96 tokens

Headline figures, on the structured prompts. The baseline for steps and KV is sequential decoding of
the same answer: one step per token (``step_reduction``: APAR's tokens / APAR's steps, median over
prompts, prompt pass included) and one sequence holding the prompt and all the answer's tokens
(``kv_peak_ratio``: APAR's peak KV pages / the pages of that sequence, median). ``speedup`` and
``with_speculation_speedup``: tokens/s of APAR and of APAR+n-gram over the measured tokens/s of the
sequential mode (forks banned; its answers can differ in length, shown in the table), median over
repeats, with their spread (min, max). Last line JSON: ``{"step_reduction", "speedup",
"speedup_spread", "kv_peak_ratio", "with_speculation_speedup", "with_speculation_spread",
"forks_per_answer", "unstructured_forks_per_answer", "lossless"}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import _path  # noqa: F401  (first: keeps benchmarks/planner.py from shadowing the planner package)
import torch

from pyspec.api import encode_prompts
from pyspec.data import mtbench
from pyspec.decoding.apar import generate_apar
from pyspec.decoding.hierarchy import build_stack
from pyspec.kv_cache import PAGE_SIZE
from pyspec.models.adapters import load_apar_model
from pyspec.training.apar_data import held_out_prompts

MODES = ("sequential", "apar", "sequential+ngram", "apar+ngram")
STRUCTURED_CATEGORIES = ("writing", "humanities", "stem")
UNSTRUCTURED_CATEGORIES = ("math", "reasoning")


def prompt_sets(structured: int, unstructured: int) -> dict[str, list[tuple[str, str]]]:
    """(id, text) per set: MT-bench structured categories, held-out ShareGPT lists, unstructured."""
    bench = mtbench()
    picked = [p for c in STRUCTURED_CATEGORIES for p in bench if p.category == c]
    every = max(1, len(picked) // structured)
    mt = [(f"mtbench-{p.id}-{p.category}", p.text) for p in picked[::every][:structured]]
    sharegpt = [(f"sharegpt-{c.id}", c.prompt) for c in held_out_prompts(structured)]
    plain = [p for c in UNSTRUCTURED_CATEGORIES for p in bench if p.category == c]
    every = max(1, len(plain) // unstructured)
    loose = [(f"mtbench-{p.id}-{p.category}", p.text) for p in plain[::every][:unstructured]]
    return {"mtbench-structured": mt, "sharegpt-lists": sharegpt, "unstructured": loose}


def run(model, ids: list[int], mode: str, max_new_tokens: int):
    drafter = build_stack(model, ["ngram"], [4]) if mode.endswith("+ngram") else None
    depth = 0 if mode.startswith("sequential") else 1
    return generate_apar(model, [ids], max_new_tokens=max_new_tokens, max_depth=depth, drafter=drafter)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few prompts, 96 tokens, 1 repeat")
    parser.add_argument("--structured", type=int, default=8, help="prompts per structured set")
    parser.add_argument("--unstructured", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=256, help="per stream")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--examples", type=Path, default=None, help="write every answer to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.structured, args.unstructured, args.max_new_tokens, args.repeats = 3, 2, 96, 1
    torch.set_num_threads(args.threads)
    model = load_apar_model()
    sets = prompt_sets(args.structured, args.unstructured)
    rows: dict[str, dict[str, list[dict]]] = {name: {m: [] for m in MODES} for name in sets}
    examples, lossless = [], True
    for name, prompts in sets.items():
        for pid, text in prompts:
            ids = encode_prompts(model, text)[0]
            first = {}
            for repeat in range(args.repeats):
                for mode in MODES:
                    out = run(model, ids, mode, args.max_new_tokens)
                    tokens = [s["tokens"] for s in out.streams]
                    plain = mode.removesuffix("+ngram")
                    reference = first.setdefault(plain, tokens)
                    if tokens != reference:
                        lossless = False
                        print(f"MISMATCH {pid} {mode} repeat {repeat}")
                    rows[name][mode].append({"prompt": pid, "repeat": repeat, **out.stats.as_dict()})
                    if repeat == 0 and mode in ("sequential", "apar"):
                        examples.append(
                            {
                                "set": name,
                                "prompt": pid,
                                "mode": mode,
                                "text": out.text,
                                **out.stats.as_dict(),
                            }
                        )
            apar = rows[name]["apar"][-1]
            print(f"{name:<20} {pid:<28} forks {apar['forks']:>2}  steps {apar['steps']:>4}", flush=True)
    headline = report(rows, args)
    if args.examples:
        args.examples.write_text(json.dumps(examples, indent=1) + "\n")
    print(json.dumps({**headline, "lossless": lossless}))


def report(rows, args) -> dict:
    """Prints the table per prompt set; returns the headline figures over the structured sets."""
    print(
        f"\nAPAR, SmolLM2-135M-Instruct + adapter, greedy fp32, {args.threads} threads, "
        f"{args.max_new_tokens} tokens per stream, {args.repeats} repeat(s), one request at a time"
    )
    for name, modes in rows.items():
        n = len(modes["sequential"]) // args.repeats
        print(f"\n{name} ({n} prompts)")
        header = ("steps", 7), ("tokens", 8), ("tok/step", 9), ("tok/s", 8), ("speed-up", 10)
        header += ("spread", 13), ("peak KV", 9)
        print(f"{'mode':<18}" + "".join(f"{h:>{w}}" for h, w in header) + f"{'forks':>7}")
        for mode, runs in modes.items():
            steps, toks = sum(r["target_passes"] for r in runs), sum(r["new_tokens"] for r in runs)
            ups = _speedups(runs, modes["sequential"], args.repeats)
            peak = statistics.median(r["peak_pages"] for r in runs)
            forks = statistics.mean(r["forks"] for r in runs)
            print(
                f"{mode:<18}{steps / len(runs):>7.1f}{toks / len(runs):>8.1f}{toks / steps:>9.2f}"
                f"{_tps(runs):>8.1f}{statistics.median(ups):>9.2f}x{min(ups):>6.2f}-{max(ups):.2f}x"
                f"{peak:>9.0f}{forks:>7.1f}"
            )
    structured = {m: [r for name in rows if name != "unstructured" for r in rows[name][m]] for m in MODES}
    seq, apar, spec = structured["sequential"], structured["apar"], structured["apar+ngram"]
    one_sequence = [-(-(a["prompt_tokens"] + a["new_tokens"]) // PAGE_SIZE) for a in apar]
    ups, spec_ups = _speedups(apar, seq, args.repeats), _speedups(spec, seq, args.repeats)
    return {
        "step_reduction": round(statistics.median(a["new_tokens"] / a["target_passes"] for a in apar), 3),
        "speedup": round(statistics.median(ups), 3),
        "speedup_spread": [round(min(ups), 3), round(max(ups), 3)],
        "kv_peak_ratio": round(
            statistics.median(a["peak_pages"] / n for a, n in zip(apar, one_sequence, strict=True)), 3
        ),
        "with_speculation_speedup": round(statistics.median(spec_ups), 3),
        "with_speculation_spread": [round(min(spec_ups), 3), round(max(spec_ups), 3)],
        "forks_per_answer": round(statistics.mean(a["forks"] for a in apar), 2),
        "unstructured_forks_per_answer": round(
            statistics.mean(r["forks"] for r in rows["unstructured"]["apar"]), 2
        ),
    }


def _tps(runs: list[dict]) -> float:
    return sum(r["new_tokens"] for r in runs) / sum(r["seconds"] for r in runs)


def _speedups(runs: list[dict], baseline: list[dict], repeats: int) -> list[float]:
    """tokens/s of ``runs`` over ``baseline``'s, once per repeat (the same prompts each time)."""
    return [
        _tps([r for r in runs if r["repeat"] == k]) / _tps([r for r in baseline if r["repeat"] == k])
        for k in range(repeats)
    ]


if __name__ == "__main__":
    main()
