"""APAR against sequential decoding of the same model: the time until the user has the whole answer.

Modes, per prompt, interleaved over repeats (greedy, fp32, one request at a time, the same
``--max-new-tokens`` bounding every answer: for APAR all its streams together, in reading order):

- ``sequential``: SmolLM2-135M-Instruct itself, no adapter, plain decoding: the baseline. (The adapter
  model with forks banned, ``max_depth=0``, is not: trained to fork, it writes bare list heads
  without their details. It runs once per prompt as ``adapter, no forks`` to show it.)
- ``sequential+ngram``: the same with n-gram drafts (4 tokens a step);
- ``apar``: the model with the shipped APAR adapter, forking (depth 1, at most 8 streams running,
  children ending at their item's line break), all streams in one ragged batch;
- ``apar+ngram``: each stream drafting for itself with the n-gram drafter.

Structured prompts: MT-bench's writing, humanities and stem questions (never trained on) and held-out
ShareGPT questions whose reply is a numbered list; unstructured: MT-bench's math and reasoning, where
the model should not fork. Speculative modes are checked to give the same answer as their plain
counterparts on every run, and every repeat the first's. The modes run in reverse order on odd repeats.

Quality, on the first repeat's answers: the base model's mean per-token log-likelihood of each answer
(it favours the base model's own greedy text, loops included, so it is a strict test for APAR's);
``repeats``, the share of word 4-grams that repeat an earlier one, and ``fluent``, the answers with
no degenerate repetition and no line written twice (:func:`pyspec.training.apar_own.is_fluent`); and
a pairwise judgment by Qwen2.5-Coder-1.5B-Instruct (when installed; packed q8 weights): the
probability it gives "A" against "B" for the better answer, asked in both orders, averaged.

    python benchmarks/apar.py             # 6 + 6 structured, 3 unstructured prompts, 2 repeats, 256 tokens
    python benchmarks/apar.py --quick     # 2 + 2 structured, 1 unstructured, 1 repeat, 96 tokens

Headline figures, on the structured prompts, medians over (prompt, repeat) pairs of ratios measured
back to back: ``time_to_answer_ratio`` (APAR's seconds to its complete answer over sequential
decoding's), ``time_to_answer_ratio_with_speculation`` (APAR+n-gram over sequential),
``..._vs_sequential_ngram`` (APAR+n-gram over sequential+n-gram), ``answer_length_ratio`` (answer
tokens), ``step_reduction`` (sequential's steps over APAR's), ``kv_peak_ratio`` (APAR's peak KV pages
over sequential's); ``speedup`` and ``with_speculation_speedup`` (the inverse time ratios) with
``..._spread`` (min and max over the repeats' medians). Secondary, labelled ``imagined_``: APAR's
generated tokens per step, the step reduction over a sequential decode of APAR's own answer that
never ran. Last line JSON: those keys, ``forks_per_answer``, ``unstructured_forks_per_answer``,
``unstructured_time_ratio``, ``loglik_*``, ``fluent_*``, ``judge_*`` and ``lossless``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import _path  # noqa: F401  (first: keeps benchmarks/planner.py from shadowing the planner package)
import torch

from pyspec.api import encode_prompts, load_model
from pyspec.batch import StepBatch
from pyspec.data import mtbench
from pyspec.decoding.apar import generate_apar
from pyspec.decoding.autoregressive import generate_autoregressive
from pyspec.decoding.hierarchy import build_stack
from pyspec.decoding.speculative import generate_speculative
from pyspec.models.adapters import load_apar_model
from pyspec.training.apar_data import held_out_prompts
from pyspec.training.apar_own import is_fluent

MODES = ("sequential", "apar", "sequential+ngram", "apar+ngram")
NO_FORKS = "adapter, no forks"
STRUCTURED_CATEGORIES = ("writing", "humanities", "stem")
UNSTRUCTURED_CATEGORIES = ("math", "reasoning")
JUDGE = "qwen2.5-coder-1.5b-instruct"
JUDGE_QUESTION = (
    "Which answer to the question is better: more helpful, correct, complete and clear? Both may be "
    "cut off at the same length.\n\nQuestion:\n{q}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\n"
    "Reply with the letter of the better answer only: A or B."
)


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


def run(base, apar, ids: list[int], mode: str, max_new_tokens: int) -> dict:
    """One answer: its text, answer tokens, steps, seconds, peak KV pages, forks, and what must
    match across repeats and drafters (``answer``: the tokens or the APAR text)."""
    ngram = mode.endswith("+ngram")
    if mode.startswith("sequential"):
        drafter = build_stack(base, ["ngram"], [4]) if ngram else None
        if drafter is None:
            out = generate_autoregressive(base, [ids], max_new_tokens)[0]
        else:
            out = generate_speculative(base, [ids], drafter, max_new_tokens)[0]
        eos = set(base.config.eos_token_ids)
        n = sum(t not in eos for t in out.tokens)
        return _record(out.text, n, out.stats, answer=out.tokens)
    drafter = build_stack(apar, ["ngram"], [4]) if ngram else None
    depth = 0 if mode == NO_FORKS else 1
    out = generate_apar(apar, [ids], max_new_tokens=max_new_tokens, max_depth=depth, drafter=drafter)[0]
    return _record(out.text, out.stats.answer_tokens, out.stats, answer=(out.text, out.finish_reason))


def _record(text: str, answer_tokens: int, stats, answer) -> dict:
    return {
        "text": text,
        "answer_tokens": answer_tokens,
        "generated": stats.new_tokens,
        "steps": stats.target_passes,
        "seconds": stats.seconds,
        "peak_pages": stats.peak_pages,
        "forks": stats.forks,
        "answer": answer,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few prompts, 96 tokens, 1 repeat")
    parser.add_argument("--structured", type=int, default=6, help="prompts per structured set")
    parser.add_argument("--unstructured", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=256, help="per answer (all its streams)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-judge", action="store_true", help="skip the Qwen pairwise judgment")
    parser.add_argument(
        "--adapter", type=Path, default=None, help="an APAR adapter folder (default: shipped)"
    )
    parser.add_argument("--examples", type=Path, default=None, help="write every answer to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.structured, args.unstructured, args.max_new_tokens, args.repeats = 2, 1, 96, 1
    torch.set_num_threads(args.threads)
    base, apar = load_model("smollm2-135m-instruct", progress=False), load_apar_model(adapter=args.adapter)
    sets = prompt_sets(args.structured, args.unstructured)
    runs, lossless = [], True
    for name, prompts in sets.items():
        for pid, text in prompts:
            ids = encode_prompts(base, text)[0]
            if encode_prompts(apar, text)[0] != ids:
                raise AssertionError(f"{pid}: the adapter's tokenizer encodes the prompt differently")
            first = {}
            for repeat in range(args.repeats):
                modes = MODES[:: 1 - 2 * (repeat % 2)] + (
                    (NO_FORKS,) if repeat == 0 else ()
                )  # order alternates
                for mode in modes:
                    r = run(base, apar, ids, mode, args.max_new_tokens)
                    reference = first.setdefault(mode.removesuffix("+ngram"), r["answer"])
                    if r.pop("answer") != reference:
                        lossless = False
                        print(f"MISMATCH {pid} {mode} repeat {repeat}")
                    runs.append({"set": name, "prompt": pid, "mode": mode, "repeat": repeat, **r})
            mine = {r["mode"]: r for r in runs if r["prompt"] == pid and r["repeat"] == 0}
            print(
                f"{name:<20} {pid:<28} forks {mine['apar']['forks']:>2}  steps {mine['apar']['steps']:>4}  "
                f"time ratio {mine['apar']['seconds'] / mine['sequential']['seconds']:.2f}",
                flush=True,
            )
    texts = {(r["prompt"], r["mode"]): r["text"] for r in runs if r["repeat"] == 0}
    questions = dict(p for ps in sets.values() for p in ps)
    loglik = {key: log_likelihood(base, questions[key[0]], t) for key, t in texts.items()}
    structured = [pid for name, ps in sets.items() if name != "unstructured" for pid, _ in ps]
    judged = {} if args.no_judge else judge(structured, questions, texts)
    headline = report(runs, sets, loglik, judged, args)
    if args.examples:
        rows = [{**r, "loglik": loglik[(r["prompt"], r["mode"])]} for r in runs if r["repeat"] == 0]
        args.examples.write_text(json.dumps({"answers": rows, "judge": judged}, indent=1) + "\n")
    print(json.dumps({**headline, "lossless": lossless}))


def log_likelihood(model, question: str, answer: str) -> float:
    """The model's mean per-token log-likelihood of ``answer`` (re-tokenized) after the chat prompt."""
    prompt = encode_prompts(model, question)[0]
    ids = prompt + model.tokenizer(answer, add_special_tokens=False).input_ids
    rows = torch.arange(len(prompt) - 1, len(ids) - 1)
    logits = _logits(model, ids, rows)
    targets = torch.tensor(ids[len(prompt) :])
    return float(torch.log_softmax(logits.float(), -1).gather(1, targets[:, None]).mean())


def repetition(text: str) -> float:
    """The share of the text's word 4-grams that repeat an earlier one (loops score high)."""
    words = text.split()
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def _logits(model, ids: list[int], rows: torch.Tensor) -> torch.Tensor:
    cache = model.new_cache(num_pages=len(ids) // 16 + 2)
    batch = StepBatch.build(cache, [cache.add_sequence()], [ids])
    with torch.inference_mode():
        return model(batch, cache, logits_rows=rows).logits


def judge(prompts: list[str], questions: dict[str, str], texts: dict) -> dict:
    """Per structured prompt, Qwen's probability that APAR's answer is the better one (against the
    sequential answer), asked with APAR as A and as B, averaged. Empty when Qwen is not installed."""
    try:
        qwen = load_model(JUDGE, progress=False, packed=True, compute="q8")
    except FileNotFoundError as e:
        print(f"no pairwise judgment: {e}")
        return {}
    letters = [qwen.tokenizer(x, add_special_tokens=False).input_ids[0] for x in ("A", "B")]
    out = {}
    for pid in prompts:
        apar, seq = texts[(pid, "apar")], texts[(pid, "sequential")]
        p_first = []
        for a, b in ((apar, seq), (seq, apar)):
            ids = encode_prompts(qwen, JUDGE_QUESTION.format(q=questions[pid], a=a, b=b))[0]
            two = _logits(qwen, ids, torch.tensor([len(ids) - 1]))[0, letters].float().softmax(-1)
            p_first.append(float(two[0]))
        out[pid] = {
            "apar_as_a": p_first[0],
            "apar_as_b": 1 - p_first[1],
            "apar": (p_first[0] + 1 - p_first[1]) / 2,
        }
        print(f"judge {pid:<28} P(APAR better) {out[pid]['apar']:.2f}", flush=True)
    return out


def _ratios(runs: list[dict], mode: str, base: str, key: str) -> dict[int, list[float]]:
    """Per repeat, the ratio ``mode`` over ``base`` of ``key``, per prompt (the runs back to back)."""
    index = {(r["prompt"], r["mode"], r["repeat"]): r for r in runs}
    out: dict[int, list[float]] = {}
    for r in runs:
        if r["mode"] == mode:
            other = index[(r["prompt"], base, r["repeat"])][key]
            out.setdefault(r["repeat"], []).append(r[key] / other if other else float("nan"))
    return out


def _median(per_repeat: dict[int, list[float]]) -> float:
    return round(statistics.median(x for xs in per_repeat.values() for x in xs), 3)


def _spread(per_repeat: dict[int, list[float]], invert: bool = False) -> list[float]:
    meds = [statistics.median(1 / x if invert else x for x in xs) for xs in per_repeat.values()]
    return [round(min(meds), 3), round(max(meds), 3)]


def report(runs: list[dict], sets: dict, loglik: dict, judged: dict, args) -> dict:
    """Prints a table per prompt set; returns the headline figures over the structured sets."""
    print(
        f"\nAPAR (SmolLM2-135M-Instruct + adapter) against SmolLM2-135M-Instruct decoding sequentially; "
        f"greedy fp32, {args.threads} threads, answers of at most {args.max_new_tokens} tokens, "
        f"{args.repeats} repeat(s), one request at a time. Time ratio: over sequential, per prompt back "
        f"to back, median (min-max). Imagined: APAR's generated tokens per step."
    )
    header = (
        ("answer tok", 11), ("steps", 7), ("seconds", 9), ("time ratio", 11), ("(spread)", 13),
        ("peak KV", 8), ("forks", 6), ("loglik", 8), ("repeats", 8), ("fluent", 7), ("imagined", 9),
    )  # fmt: skip
    for name in sets:
        mine = [r for r in runs if r["set"] == name]
        print(f"\n{name} ({len(sets[name])} prompts)")
        print(f"{'mode':<20}" + "".join(f"{h:>{w}}" for h, w in header))
        for mode in MODES + (NO_FORKS,):
            rs = [r for r in mine if r["mode"] == mode]
            ratio = [x for xs in _ratios(mine, mode, "sequential", "seconds").values() for x in xs]
            firsts = [r for r in rs if r["repeat"] == 0]
            ll = statistics.median(loglik[(r["prompt"], mode)] for r in firsts)
            rep = statistics.median(repetition(r["text"]) for r in firsts)
            fluent = f"{sum(is_fluent(r['text']) for r in firsts)}/{len(firsts)}"
            imagined = statistics.median(r["generated"] / r["steps"] for r in rs)
            print(
                f"{mode:<20}{statistics.median(r['answer_tokens'] for r in rs):>11.0f}"
                f"{statistics.median(r['steps'] for r in rs):>7.0f}"
                f"{statistics.median(r['seconds'] for r in rs):>9.2f}{statistics.median(ratio):>10.2f}x"
                f"{f'({min(ratio):.2f}-{max(ratio):.2f})':>13}"
                f"{statistics.median(r['peak_pages'] for r in rs):>8.0f}"
                f"{statistics.mean(r['forks'] for r in rs):>6.1f}{ll:>8.3f}{rep:>8.2f}{fluent:>7}"
                f"{imagined:>9.2f}"
            )
    if judged:
        print(f"\npairwise judgment by {JUDGE} (packed q8), P(APAR's answer better than sequential's):")
        for pid, j in judged.items():
            print(f"  {pid:<30} as A {j['apar_as_a']:.2f}  as B {j['apar_as_b']:.2f}  mean {j['apar']:.2f}")
    names = [n for n in sets if n != "unstructured"]
    st = [r for r in runs if r["set"] in names]
    loose = [r for r in runs if r["set"] == "unstructured"]
    time = _ratios(st, "apar", "sequential", "seconds")
    spec = _ratios(st, "apar+ngram", "sequential", "seconds")
    firsts = [r for r in st if r["repeat"] == 0]

    def ll(mode: str) -> float:
        return round(statistics.median(loglik[(r["prompt"], mode)] for r in firsts if r["mode"] == mode), 3)

    def fluent(mode: str) -> float:
        texts = [r["text"] for r in firsts if r["mode"] == mode]
        return round(sum(map(is_fluent, texts)) / len(texts), 3)

    out = {
        "time_to_answer_ratio": _median(time),
        "time_to_answer_ratio_with_speculation": _median(spec),
        "time_to_answer_ratio_vs_sequential_ngram": _median(
            _ratios(st, "apar+ngram", "sequential+ngram", "seconds")
        ),
        "answer_length_ratio": _median(_ratios(st, "apar", "sequential", "answer_tokens")),
        "step_reduction": round(1 / _median(_ratios(st, "apar", "sequential", "steps")), 3),
        "kv_peak_ratio": _median(_ratios(st, "apar", "sequential", "peak_pages")),
        "speedup": round(1 / _median(time), 3),
        "speedup_spread": _spread(time, invert=True),
        "with_speculation_speedup": round(1 / _median(spec), 3),
        "with_speculation_spread": _spread(spec, invert=True),
        "imagined_step_reduction": round(
            statistics.median(r["generated"] / r["steps"] for r in st if r["mode"] == "apar"), 3
        ),
        "forks_per_answer": round(statistics.mean(r["forks"] for r in st if r["mode"] == "apar"), 2),
        "unstructured_forks_per_answer": round(
            statistics.mean(r["forks"] for r in loose if r["mode"] == "apar"), 2
        ),
        "unstructured_time_ratio": _median(_ratios(loose, "apar", "sequential", "seconds")),
        "loglik_apar": ll("apar"),
        "loglik_sequential": ll("sequential"),
        "loglik_adapter_no_forks": ll(NO_FORKS),
        "fluent_apar": fluent("apar"),
        "fluent_sequential": fluent("sequential"),
    }
    if judged:
        prefs = [j["apar"] for j in judged.values()]
        out |= {
            "judge_apar_preferred": round(statistics.mean(prefs), 3),
            "judge_apar_wins": sum(p > 0.5 for p in prefs),
            "judge_prompts": len(prefs),
        }
    return out


if __name__ == "__main__":
    main()
