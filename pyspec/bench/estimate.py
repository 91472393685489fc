"""Estimated decoding speed where the real weights cannot be installed (a GPU machine without network
access): the latency of the target's real shapes with random weights, measured here, combined with
acceptance measured elsewhere with the real weights. ``pyspec bench --random-weights`` prints it;
every figure is labelled as an estimate.

Example:
    >>> from pyspec.bench.estimate import estimate_markdown
    >>> rows = [{"batch": 1, "mode": "ar", "tokens_per_second": 10.0, "speedup_vs_ar": 1.0}]
    >>> sources = {"latency_source": "random weights", "acceptance_source": "real weights"}
    >>> est = {"date": "2026-11-24", "model": "m", "rows": rows, **sources}
    >>> estimate_markdown(est).splitlines()[0].startswith("**ESTIMATED")
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import torch


def estimate(
    acceptance_profile: dict,
    device: str | None = None,
    batch_sizes: Sequence[int] = (1,),
    block: int = 5,
    sizes: Sequence[int] | None = None,
    contexts: Sequence[int] = (256, 1024),
    repeats: int = 5,
) -> dict:
    """Estimated decoding speed on a machine that cannot install the weights (a GPU without network
    access): latency of the target's real shapes with random weights on ``device`` (default: CUDA
    when present), combined with the acceptance in ``acceptance_profile`` (a ``pyspec profile``
    made with the real weights elsewhere). Predicted tokens/s per sequence of plain decoding, n-gram
    drafts of ``block`` and the plan, per batch size; labelled as estimates.

    Example:
        >>> est = estimate(json.load(open("profile.json")), "cuda", [1, 8])  # doctest: +SKIP
        >>> print(estimate_markdown(est))  # doctest: +SKIP
    """
    from planner.plan import make_plan, predict
    from pyspec.hardware import hardware
    from pyspec.models.shapes import random_model
    from pyspec.profile import DEFAULT_SIZES, latency

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    target = random_model(acceptance_profile["target"], device)
    by_context = latency(
        target, acceptance_profile["candidates"], batch_sizes, sizes or DEFAULT_SIZES, contexts, repeats
    )
    profile = {
        **acceptance_profile,
        "hardware": hardware(),
        "dtype": "float32",
        "context": contexts[0],
        "latency": by_context[str(contexts[0])],
        "latency_by_context": by_context,
    }
    plan = make_plan(profile, max_block=16)
    rows = []
    for b in batch_sizes:
        choice = plan.for_batch(b)
        configs = {
            "ar": ([], None),
            f"ngram:{block}": ([("ngram", block)], None),
            f"plan ({choice.label})": (choice.levels, choice.tree),
        }
        plain = predict(profile, b, [], None)
        for mode, (levels, tree) in configs.items():
            seconds = predict(profile, b, levels, tree)
            rows.append(
                {
                    "batch": b,
                    "mode": mode,
                    "tokens_per_second": 1.0 / seconds,
                    "speedup_vs_ar": plain / seconds,
                }
            )
    here, elsewhere = hardware(), acceptance_profile.get("hardware", {})
    return {
        "estimated": True,
        "model": acceptance_profile["target"],
        "latency_source": f"random weights of the real shapes on {here['gpu'] or here['cpu']}",
        "acceptance_source": f"real weights on {elsewhere.get('gpu') or elsewhere.get('cpu', 'unknown')}",
        "date": date.today().isoformat(),
        "rows": rows,
        "profile": profile,
    }


def estimate_markdown(est: dict) -> str:
    """An estimate from :func:`estimate` as a markdown table, labelled as such."""
    lines = [
        f"**ESTIMATED, not measured end to end** ({est['date']}): {est['model']}; latency from "
        f"{est['latency_source']}; acceptance from {est['acceptance_source']}.",
        "",
        "| batch | mode | predicted tokens/s per sequence | speed-up over ar |",
        "|---:|---|---:|---:|",
    ]
    for r in est["rows"]:
        lines.append(
            f"| {r['batch']} | {r['mode']} | {r['tokens_per_second']:.1f} | {r['speedup_vs_ar']:.2f}x |"
        )
    return "\n".join(lines) + "\n"
