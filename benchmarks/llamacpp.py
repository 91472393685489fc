"""pyspec on packed GGUF weights against llama.cpp on the same files, threads and prompts.

Per model (SmolLM2-135M-Instruct Q4_1, Qwen2.5-Coder-1.5B-Instruct Q4_K_M when ``make qwen`` installed
it), greedy, batch 1, on held-out HumanEval and MT-bench prompts (the same token ids for every tool):

- llama.cpp (``llama-cpp-python`` built from source in ``.venv-llamacpp``, ``make llamacpp``) plain
  decoding and its prompt-lookup decoding, run in that environment by ``_llamacpp_worker.py``;
- pyspec ``ar`` over the dequantised fp32 weights, ``ar`` over the packed weights (exact numerics:
  must give the fp32 tokens), and ``ngram`` (prompt-lookup drafts) over the packed weights;
- pyspec ``ar`` and ``ngram`` with q8 compute (``load_model(..., packed=True, compute="q8")``: int8
  activations, llama.cpp-style numerics; its own target: checked against its own ``ar``, and its
  greedy agreement with fp32 and with llama.cpp reported);
- Hugging Face ``generate()`` fp32 plain, the baseline of the issue's ``>= 3x``.

Every exact pyspec mode is checked token for token against pyspec fp32 ``ar``, q8 ``ngram`` against
q8 ``ar``; llama.cpp's lookup against its own plain output. Decode tokens/s leaves
the prefill out (time from the first new token to the last); end-to-end tokens/s (new tokens over
wall time) is what HF ratios use. Median and spread over prompts x repeats, the modes interleaved
per prompt.

    python benchmarks/llamacpp.py            # 2 HumanEval + 2 MT-bench prompts, 64 new tokens, 2 repeats
    python benchmarks/llamacpp.py --quick    # SmolLM2 only, 1 + 1 prompts, 32 new tokens, 1 repeat

Last line JSON: per model ``{"packed_ar_vs_hf_plain", "packed_ar_vs_llamacpp_decode",
"packed_ngram_vs_llamacpp_decode", "q8_ar_vs_llamacpp_decode", "q8_ngram_vs_llamacpp_decode",
"llamacpp_lookup_identical", "pyspec_lossless", ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import _path  # noqa: F401  (first: keeps benchmarks/planner.py from shadowing the planner package)
import torch

from pyspec.api import load_model
from pyspec.bench import Modes, select_prompts
from pyspec.models.loading import ModelNotFoundError, gguf_file

ROOT = Path(__file__).resolve().parents[1]
LLAMACPP_PYTHON = ROOT / ".venv-llamacpp" / "bin" / "python"
MODELS = {"smollm2": "smollm2-135m-instruct", "qwen": "qwen2.5-coder-1.5b-instruct"}
LOOKUP_TOKENS = 10  # llama-cpp-python's documented num_pred_tokens
NGRAM_BLOCK = 5


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def cpu_flags() -> list[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            return sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))
    return []


def run_llamacpp(
    path: Path, prompts: list[list[int]], max_new: int, eos: list[int], threads: int, repeats: int
) -> dict:
    if not LLAMACPP_PYTHON.exists():
        raise SystemExit(
            "llama.cpp is not installed: run `make llamacpp` (builds llama-cpp-python from source)"
        )
    request = {
        "model": str(path),
        "threads": threads,
        "prompts": prompts,
        "max_new_tokens": max_new,
        "eos": eos,
        "lookup_tokens": LOOKUP_TOKENS,
        "repeats": repeats,
    }
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    done = subprocess.run(
        [str(LLAMACPP_PYTHON), str(ROOT / "benchmarks" / "_llamacpp_worker.py")],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"llama.cpp worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def bench_model(key: str, limit: int, max_new: int, repeats: int, threads: int) -> dict:
    name = MODELS[key]
    path = gguf_file(name)
    dense = load_model(name, progress=True)
    packed = load_model(name, packed=True, progress=True)
    q8 = load_model(name, packed=True, compute="q8", progress=False)
    items = select_prompts(packed, ["humaneval", "mtbench"], limit)
    prompts = [it.ids for it in items]
    eos = list(packed.config.eos_token_ids)

    print(f"[{key}] llama.cpp on {path.name} ...", file=sys.stderr)
    lcpp = run_llamacpp(path, prompts, max_new, eos, threads, repeats)

    dense_modes, packed_modes = Modes(dense, ["ar", "hf"]), Modes(packed, ["ar", "ngram"], block=NGRAM_BLOCK)
    q8_modes = Modes(q8, ["ar", "ngram"], block=NGRAM_BLOCK)
    labels = ("fp32 ar", "packed ar", "packed ngram", "q8 ar", "q8 ngram", "hf plain")
    runs = {m: [] for m in labels}
    order = [
        ("fp32 ar", dense_modes, "ar"),
        ("packed ar", packed_modes, "ar"),
        ("packed ngram", packed_modes, "ngram"),
        ("q8 ar", q8_modes, "ar"),
        ("q8 ngram", q8_modes, "ngram"),
        ("hf plain", dense_modes, "hf"),
    ]
    with torch.inference_mode():
        packed_modes.run("ar", prompts[0], 4)  # warm-up
        q8_modes.run("ar", prompts[0], 4)
        for r in range(repeats):
            for i, ids in enumerate(prompts):
                k = (i + r) % len(order)
                for label, modes, mode in order[k:] + order[:k]:  # rotated per prompt
                    print(f"[{key}] {label} prompt {i} repeat {r}", file=sys.stderr)
                    tokens, seconds, _, decode = modes.run(mode, ids, max_new)
                    runs[label].append(
                        {"prompt": i, "tokens": tokens, "seconds": seconds, "decode_seconds": decode}
                    )

    reference = {run["prompt"]: run["tokens"] for run in runs["fp32 ar"]}
    q8_reference = {run["prompt"]: run["tokens"] for run in runs["q8 ar"][: len(prompts)]}
    rows = {}
    for label, rs in runs.items():
        row = {"tokens_per_second": summary([len(x["tokens"]) / x["seconds"] for x in rs])}
        if rs[0]["decode_seconds"]:
            row["decode_tokens_per_second"] = summary(
                [(len(x["tokens"]) - 1) / x["decode_seconds"] for x in rs]
            )
        row["identical_to_fp32_ar"] = sum(x["tokens"] == reference[x["prompt"]] for x in rs)
        if label.startswith("q8"):
            row["identical_to_q8_ar"] = sum(x["tokens"] == q8_reference[x["prompt"]] for x in rs)
        row["runs"] = len(rs)
        rows[f"pyspec {label}" if label != "hf plain" else "HF generate() fp32"] = row
    plain = {x["prompt"]: x["tokens"] for x in lcpp["runs"] if x["mode"] == "plain" and x["repeat"] == 0}
    for mode in ("plain", "lookup"):
        rs = [x for x in lcpp["runs"] if x["mode"] == mode]
        rows[f"llama.cpp {mode}"] = {
            "tokens_per_second": summary(
                [len(x["tokens"]) / (x["prefill_seconds"] + x["decode_seconds"]) for x in rs]
            ),
            "decode_tokens_per_second": summary([(len(x["tokens"]) - 1) / x["decode_seconds"] for x in rs]),
            "identical_to_llamacpp_plain": sum(x["tokens"] == plain[x["prompt"]] for x in rs),
            "runs": len(rs),
        }
    agree = [common_prefix(reference[i], plain[i]) for i in plain]
    q8_agree = [common_prefix(q8_reference[i], plain[i]) for i in plain]
    med = lambda row, what="decode_tokens_per_second": rows[row][what]["median"]  # noqa: E731
    exact_runs = [
        r for label, rs in runs.items() if label in ("fp32 ar", "packed ar", "packed ngram") for r in rs
    ]
    q8_runs = runs["q8 ar"] + runs["q8 ngram"]
    return {
        "model": name,
        "gguf": path.name,
        "prompts": len(prompts),
        "max_new_tokens": max_new,
        "repeats": repeats,
        "llamacpp": {"version": lcpp["version"], "system_info": lcpp["system_info"]},
        "packed_mb": round(sum_packed_bytes(packed) / 1e6, 1),
        "rows": rows,
        "greedy_agreement_with_llamacpp": {
            "identical": sum(reference[i] == plain[i] for i in plain),
            "prompts": len(plain),
            "mean_common_prefix": statistics.mean(agree),
            "q8_identical": sum(q8_reference[i] == plain[i] for i in plain),
            "q8_mean_common_prefix": statistics.mean(q8_agree),
        },
        "q8_agreement_with_fp32": {
            "identical": sum(q8_reference[i] == reference[i] for i in plain),
            "mean_common_prefix": statistics.mean(
                common_prefix(q8_reference[i], reference[i]) for i in plain
            ),
        },
        "headline": {
            "packed_ar_vs_hf_plain": round(
                med("pyspec packed ar", "tokens_per_second") / med("HF generate() fp32", "tokens_per_second"),
                3,
            ),
            "packed_ar_vs_fp32_ar": round(
                med("pyspec packed ar", "tokens_per_second") / med("pyspec fp32 ar", "tokens_per_second"), 3
            ),
            "packed_ar_vs_llamacpp_decode": round(med("pyspec packed ar") / med("llama.cpp plain"), 3),
            "packed_ngram_vs_llamacpp_decode": round(med("pyspec packed ngram") / med("llama.cpp plain"), 3),
            "packed_ngram_vs_hf_plain": round(
                med("pyspec packed ngram", "tokens_per_second")
                / med("HF generate() fp32", "tokens_per_second"),
                3,
            ),
            "q8_ar_vs_llamacpp_decode": round(med("pyspec q8 ar") / med("llama.cpp plain"), 3),
            "q8_ngram_vs_llamacpp_decode": round(med("pyspec q8 ngram") / med("llama.cpp plain"), 3),
            "q8_ar_vs_hf_plain": round(
                med("pyspec q8 ar", "tokens_per_second") / med("HF generate() fp32", "tokens_per_second"), 3
            ),
            "llamacpp_lookup_identical": "{}/{}".format(
                rows["llama.cpp lookup"]["identical_to_llamacpp_plain"], rows["llama.cpp lookup"]["runs"]
            ),
            "pyspec_lossless": all(r["tokens"] == reference[r["prompt"]] for r in exact_runs)
            and all(r["tokens"] == q8_reference[r["prompt"]] for r in q8_runs),
        },
    }


def sum_packed_bytes(model) -> int:
    """Bytes of the model's tensors at rest: packed blocks plus the fp32 norms and biases."""
    from pyspec.models.packed import PackedWeight

    seen = [model.embed_tokens, model.lm_head] + [
        getattr(layer, n).weight
        for layer in model.layers
        for n in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    ]
    packed = sum(w.nbytes if isinstance(w, PackedWeight) else w.numel() * 4 for w in seen if w is not None)
    return packed + sum(p.numel() * p.element_size() for p in model.parameters())


def table(result: dict) -> str:
    lines = [
        f"{result['model']} ({result['gguf']}), {result['prompts']} prompts x {result['repeats']} repeats, "
        f"{result['max_new_tokens']} new tokens; packed at rest {result['packed_mb']} MB",
        f"{'mode':24} {'decode tok/s (min-max)':>26} {'end-to-end tok/s':>18} {'identical':>10}",
        "(identical: exact modes and HF to pyspec fp32 ar, q8 modes to q8 ar, llama.cpp to its plain)",
    ]
    for label, row in result["rows"].items():
        dec = row.get("decode_tokens_per_second")
        d = f"{dec['median']:.2f} ({dec['min']:.2f}-{dec['max']:.2f})" if dec else "-"
        e = row["tokens_per_second"]["median"]
        same = row.get(
            "identical_to_q8_ar", row.get("identical_to_fp32_ar", row.get("identical_to_llamacpp_plain"))
        )
        same = f"{same}/{row['runs']}"
        lines.append(f"{label:24} {d:>26} {e:>18.2f} {same:>10}")
    g = result["greedy_agreement_with_llamacpp"]
    lines.append(
        f"pyspec fp32 greedy == llama.cpp plain on {g['identical']}/{g['prompts']} prompts "
        f"(mean common prefix {g['mean_common_prefix']:.1f} tokens); pyspec q8: {g['q8_identical']}/"
        f"{g['prompts']} ({g['q8_mean_common_prefix']:.1f}); q8 == fp32 on "
        f"{result['q8_agreement_with_fp32']['identical']}/{g['prompts']}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2,qwen", help="comma-separated: smollm2, qwen")
    parser.add_argument("--prompts", type=int, default=2, help="held-out prompts per dataset")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="results/llamacpp/llamacpp.json")
    parser.add_argument("--quick", action="store_true", help="SmolLM2, 1 + 1 prompts, 32 tokens, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.models, args.prompts, args.max_new_tokens, args.repeats = "smollm2", 1, 32, 1
    torch.set_num_threads(args.threads)
    results = {}
    for key in args.models.split(","):
        try:
            results[key] = bench_model(key, args.prompts, args.max_new_tokens, args.repeats, args.threads)
        except ModelNotFoundError as e:
            print(f"[{key}] skipped: {e}", file=sys.stderr)
            continue
        print(table(results[key]) + "\n")
    machine = {"cpu": cpu_model(), "flags": cpu_flags(), "threads": args.threads}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    print(f"machine: {machine['cpu']}, {', '.join(machine['flags'])}; {args.threads} threads")
    print(json.dumps({"cpu": machine["cpu"], **{k: r["headline"] for k, r in results.items()}}))


if __name__ == "__main__":
    main()
