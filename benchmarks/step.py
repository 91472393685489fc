"""One decoding pass, taken apart: pyspec's pass against the sum of its kernels, the weight-streaming
floor of this machine, and transformers' forward on the same shapes.

For SmolLM2-135M-Instruct (and Qwen2.5-Coder-1.5B-Instruct when `make qwen` installed it), fp32, the
machine's threads (2 here), T new tokens (a chain: 1 is a decoding step, T > 1 verifies a block) after a
context of C tokens:

- ``pass_ms[T@C]``: ``StepBatch.build`` plus the model's forward, what a decoding step pays; median of
  the repeats (spread: min and max in the table). The pass sizes of one context are timed in rounds,
  one pass of each size per round, so that drift falls on all of them alike;
- ``verify8_over_1[C]``: the median over rounds of the 8-token pass over the 1-token pass of the same
  round (``verify8_over_1_spread``: their min and max);
- ``kernels_ms``: the pass's op calls recorded, then replayed alone, one kind at a time and in the
  pass's order over each layer's own weights (so weights stream from DRAM as in the pass): linear,
  attention, rope + KV append, add + RMSNorm, silu * mul; each replay timed as a whole;
- ``overhead_ms``: pass minus kernels: Python, dispatch, batch building, planning, allocation;
- ``floor_ms``: reading the model's weight bytes once, in the same dtype, with the same threads
  (``torch.sum`` over a buffer of that size, the fastest read torch offers here); a 1-token pass
  cannot be faster. Measured beside every pass (this VM's memory bandwidth drifts by up to 1.5x
  over minutes), and each pass is divided by its own neighbour;
- ``hf_ms``: transformers' forward of the same T tokens after a ``DynamicCache`` of C tokens;
- ``ar_vs_hf_bs1``: pyspec's autoregressive decoding against ``generate()`` at batch 1 on held-out
  MT-bench prompts, interleaved, greedy tokens checked equal.

    python benchmarks/step.py            # T in 1 2 4 8, C in 256 1024, 15 repeats, 6 prompts x 64 tokens
    python benchmarks/step.py --quick    # 7 repeats, 3 prompts x 32 tokens (about 2 minutes)

Last line: JSON ``{"smollm2": {"pass_ms", "kernels_ms", "overhead_ms", "floor_ms", "pass_over_floor",
"verify8_over_1", "hf_ms"}, "ar_vs_hf_bs1", "identical_to_hf"}`` (qwen beside smollm2 when installed);
``overhead_ms``, ``floor_ms`` and ``pass_over_floor`` are those of the 1-token pass at C = 256.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import _path  # noqa: F401  (first: keeps benchmarks/planner.py from shadowing the planner package)
import torch

import pyspec
import pyspec.models.llama as llama
from pyspec.api import encode_prompts
from pyspec.batch import StepBatch
from pyspec.data import HELD_OUT_EVERY, held_out, mtbench
from pyspec.decoding.autoregressive import generate_autoregressive
from pyspec.models.loading import ModelNotFoundError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The ops a layer calls, by the module globals pyspec.models.llama binds them to.
KERNELS = {
    "_linear": "linear",
    "_attention": "attention",
    "_rope_kv_append": "rope_kv_append",
    "_rms_norm": "norm",
    "_add_rms_norm": "norm",
    "_silu_mul": "silu_mul",
}


def median_ms(fn, repeats: int) -> tuple[float, float, float]:
    """(median, min, max) milliseconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times), max(times)


class Context:
    """A cache holding ``length`` committed tokens of one sequence; passes of new tokens are rolled back."""

    def __init__(self, model, length: int, max_new: int) -> None:
        self.model = model
        self.cache = model.new_cache(num_pages=(length + max_new) // 16 + 2)
        self.seq = self.cache.add_sequence()
        tokens = [(17 * i) % 1000 + 100 for i in range(length)]
        with torch.inference_mode():
            batch = StepBatch.build(self.cache, [self.seq], [tokens])
            model(batch, self.cache)
            batch.commit(self.cache)

    def step(self, n: int) -> torch.Tensor:
        batch = StepBatch.build(self.cache, [self.seq], [list(range(300, 300 + n))])
        with torch.inference_mode():
            logits = self.model(batch, self.cache).logits
        self.cache.rollback(self.seq, self.cache.length(self.seq))
        return logits

    def record(self, n: int) -> list[tuple[str, object, tuple]]:
        """The op calls of one pass of n tokens, in order, with their arguments (kept alive)."""
        calls, saved = [], {name: getattr(llama, name) for name in KERNELS}

        def recorder(name, op):
            def call(*args):
                calls.append((KERNELS[name], op, args))
                return op(*args)

            return call

        plans, make_plan = [], llama.ops.plan_tree_attention

        def keep_plan(*args):  # the replay needs the pass's plan registered
            plans.append(make_plan(*args))
            return plans[-1]

        for name, op in saved.items():
            setattr(llama, name, recorder(name, op))
        llama.ops.plan_tree_attention = keep_plan
        try:
            batch = StepBatch.build(self.cache, [self.seq], [list(range(300, 300 + n))])
            with torch.inference_mode():
                self.model(batch, self.cache)
            calls.append(("_keep", None, (batch, plans)))
        finally:
            for name, op in saved.items():
                setattr(llama, name, op)
            llama.ops.plan_tree_attention = make_plan
        return calls


def kernel_times(calls, repeats: int) -> dict[str, float]:
    """Median milliseconds of each kind's calls replayed back to back (the plan stays registered)."""
    out = {}
    kinds = sorted({kind for kind, _, _ in calls if not kind.startswith("_")})
    with torch.inference_mode():
        for kind in kinds:
            mine = [(op, args) for k, op, args in calls if k == kind]

            def replay(mine=mine):
                for op, args in mine:
                    op(*args)

            out[kind] = median_ms(replay, repeats)[0]
    return out


def weight_floor_ms(model, repeats: int) -> tuple[float, float]:
    """(ms to read the model's weight bytes once with torch.sum, GB/s): the streaming floor of a pass."""
    params = list(model.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in params)
    dtype = params[0].dtype
    buffer = torch.ones(nbytes // torch.empty(0, dtype=dtype).element_size(), dtype=dtype)
    ms = median_ms(lambda: buffer.sum(), repeats)[0]
    return ms, nbytes / ms / 1e6


def hf_forward_ms(hf, length: int, n: int, repeats: int) -> float:
    """transformers' forward of n tokens after a DynamicCache of `length` tokens (cropped back each time)."""
    from transformers import DynamicCache

    ids = torch.tensor([[(17 * i) % 1000 + 100 for i in range(length)]])
    new = torch.arange(300, 300 + n)[None]
    with torch.inference_mode():
        cache = DynamicCache()
        hf(ids, past_key_values=cache, use_cache=True)

        def run():
            hf(new, past_key_values=cache, use_cache=True)
            cache.crop(-n)  # drop the n new tokens again

        return median_ms(run, repeats)[0]


def pass_table(name, model, hf, counts, contexts, repeats) -> dict:
    """Every measurement of one model; prints its table."""
    floor, gbps = weight_floor_ms(model, repeats)
    result = {"pass_ms": {}, "kernels_ms": {}, "overhead_ms_at": {}, "hf_ms": {}, "floor_ms_at": {}}
    print(
        f"\n{name}: weights {sum(p.numel() for p in model.parameters()) * 4 / 1e9:.2f} GB fp32, "
        f"floor {floor:.1f} ms ({gbps:.1f} GB/s)"
    )
    print(
        f"{'tokens@ctx':>10} {'pass ms (min-max)':>20} {'kernels':>8} {'overhead':>9} {'linear':>7} "
        f"{'attn':>6} {'rope+kv':>7} {'norms':>6} {'silu':>5} {'hf ms':>7} {'pass/floor':>10}"
    )
    verify = {}  # context: per-round ratios of the 8-token pass over the 1-token pass
    for length in contexts:
        ctx = Context(model, length, max(counts))
        passes = interleaved_passes(ctx, counts, repeats)
        if 8 in counts and 1 in counts:
            verify[str(length)] = [t8 / t1 for t1, t8 in zip(passes[1], passes[8], strict=True)]
        for n in counts:
            key = f"{n}@{length}"
            med, lo, hi = statistics.median(passes[n]), min(passes[n]), max(passes[n])
            floor_here = weight_floor_ms(model, 5)[0]  # next to the pass: this VM's bandwidth drifts
            kernels = kernel_times(ctx.record(n), repeats)
            total = sum(kernels.values())
            hf_ms = hf_forward_ms(hf, length, n, max(3, repeats // 2)) if hf is not None else float("nan")
            result["pass_ms"][key] = round(med, 2)
            result["kernels_ms"][key] = {k: round(v, 2) for k, v in kernels.items()} | {
                "total": round(total, 2)
            }
            result["overhead_ms_at"][key] = round(med - total, 2)
            result["hf_ms"][key] = round(hf_ms, 2)
            result["floor_ms_at"][key] = round(floor_here, 2)
            print(
                f"{key:>10} {med:8.2f} ({lo:5.1f}-{hi:5.1f}) {total:8.2f} {med - total:9.2f} "
                f"{kernels.get('linear', 0):7.2f} {kernels.get('attention', 0):6.2f} "
                f"{kernels.get('rope_kv_append', 0):7.2f} {kernels.get('norm', 0):6.2f} "
                f"{kernels.get('silu_mul', 0):5.2f} {hf_ms:7.2f} {med / floor:10.2f}"
            )
    base = f"{counts[0]}@{contexts[0]}"
    result["overhead_ms"] = result["overhead_ms_at"][base]
    result["floor_ms"] = result["floor_ms_at"][base]
    result["pass_over_floor"] = round(result["pass_ms"][base] / result["floor_ms"], 3)
    if verify:
        result["verify8_over_1"] = {c: round(statistics.median(r), 3) for c, r in verify.items()}
        result["verify8_over_1_spread"] = {c: [round(min(r), 3), round(max(r), 3)] for c, r in verify.items()}
    for c, r in verify.items():
        print(
            f"verifying 8 tokens / 1 at {c} tokens of context: {statistics.median(r):.3f} "
            f"(per round {min(r):.3f}-{max(r):.3f})"
        )
    return result


def interleaved_passes(ctx: Context, counts: list[int], repeats: int) -> dict[int, list[float]]:
    """Milliseconds of each pass size over ``repeats`` rounds, one pass of every size per round (after a
    warm-up round), so that this VM's drift over minutes falls on all sizes alike."""
    for n in counts:
        ctx.step(n)
    times = {n: [] for n in counts}
    for _ in range(repeats):
        for n in counts:
            start = time.perf_counter()
            ctx.step(n)
            times[n].append((time.perf_counter() - start) * 1e3)
    return times


def ar_against_hf(model, hf, prompts, max_new, repeats) -> tuple[float, bool, list]:
    """Median over prompts of pyspec AR tokens/s over generate()'s at batch 1 (interleaved), and
    whether every greedy output is identical."""
    ratios, identical = [], True
    eos = hf.generation_config.eos_token_id
    for i, ids in enumerate(prompts):
        ours, theirs = [], []
        for r in range(repeats):
            order = ("pyspec", "hf") if (i + r) % 2 == 0 else ("hf", "pyspec")
            for tool in order:
                start = time.perf_counter()
                if tool == "pyspec":
                    tokens = generate_autoregressive(model, [ids], max_new)[0].tokens
                    ours.append(len(tokens) / (time.perf_counter() - start))
                    mine = tokens
                else:
                    with torch.inference_mode():
                        out = hf.generate(
                            torch.tensor([ids]),
                            max_new_tokens=max_new,
                            do_sample=False,
                            pad_token_id=eos if isinstance(eos, int) else eos[0],
                        )
                    new = out[0, len(ids) :].tolist()
                    theirs.append(len(new) / (time.perf_counter() - start))
                    hf_tokens = new
        identical &= mine == hf_tokens[: len(mine)] and len(mine) == len(hf_tokens)
        ratios.append(statistics.median(ours) / statistics.median(theirs))
    return statistics.median(ratios), identical, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="7 repeats, 3 prompts x 32 tokens")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 7 if args.quick else 15
    counts, contexts = [1, 2, 4, 8], [256, 1024]
    from transformers import AutoModelForCausalLM

    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    flags = next(
        (line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), []
    )
    vector = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    print(f"machine: {cpu}, {args.threads} threads, {' '.join(vector)}; torch {torch.__version__}")

    summary = {}
    model = pyspec.load_model("smollm2-135m-instruct", progress=False)
    hf = AutoModelForCausalLM.from_pretrained(str(model.folder), dtype=torch.float32).eval()
    summary["smollm2"] = pass_table("SmolLM2-135M-Instruct", model, hf, counts, contexts, repeats)
    prompts = encode_prompts(model, [p.text for p in held_out(mtbench(), HELD_OUT_EVERY["mtbench"])])
    prompts = prompts[:: max(1, len(prompts) // (3 if args.quick else 6))][: 3 if args.quick else 6]
    max_new = 32 if args.quick else 64
    ratio, identical, ratios = ar_against_hf(model, hf, prompts, max_new, 1 if args.quick else 2)
    print(
        f"\nautoregressive decoding, batch 1, {len(prompts)} held-out MT-bench prompts x {max_new} tokens: "
        f"pyspec / generate() = {ratio:.2f}x (per prompt {', '.join(f'{r:.2f}' for r in ratios)}); "
        f"tokens identical: {identical}"
    )
    summary["ar_vs_hf_bs1"] = round(ratio, 3)
    summary["identical_to_hf"] = identical
    del model, hf
    try:
        qwen = pyspec.load_model("qwen2.5-coder-1.5b-instruct", progress=False)
    except ModelNotFoundError:
        print("\nQwen2.5-Coder-1.5B-Instruct is not installed (make qwen): skipped")
    else:
        hf = AutoModelForCausalLM.from_pretrained(str(qwen.folder), dtype=torch.float32).eval()
        summary["qwen"] = pass_table(
            "Qwen2.5-Coder-1.5B-Instruct", qwen, hf, [1, 8], [256], max(3, repeats // 3)
        )
    summary["machine"] = {"cpu": cpu, "threads": args.threads, "vector": vector}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
