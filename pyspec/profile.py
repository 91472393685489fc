"""Profiling for the planner: forward-pass time against new tokens and batch size, and the
acceptance rate between every pair of candidate drafts and the target, on calibration prompts.

The result is the profile dict :func:`planner.plan.make_plan` reads (JSON-serialisable), with a
hardware fingerprint so that a plan made elsewhere is noticed.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Sequence

import torch
from tqdm import tqdm

from pyspec.batch import StepBatch
from pyspec.decoding.autoregressive import GREEDY, generate_autoregressive
from pyspec.drafters.ngram import lookup
from pyspec.models.llama import LlamaModel
from pyspec.sampling import SamplingParams, probabilities

DEFAULT_SIZES = (1, 2, 3, 4, 5, 6, 8, 12, 16)


def hardware() -> dict:
    """What a plan depends on: CPU model, core count, torch threads, GPU (if any), torch version.

    Example:
        >>> sorted(hardware())
        ['cpu', 'cpu_count', 'gpu', 'machine', 'threads', 'torch']
    """
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__.split("+")[0],
    }


def resolve_candidate(target: LlamaModel, name: str) -> LlamaModel | str:
    """A candidate draft by name: ``"ngram"`` or ``"early:N"`` (the target's first N layers)."""
    if name == "ngram":
        return name
    if name.startswith("early:"):
        return target.first_layers(int(name.split(":", 1)[1]))
    raise ValueError(f"unknown candidate draft {name!r}: use 'ngram' or 'early:N'")


def forward_seconds(
    model: LlamaModel, sizes: Sequence[int], batch_size: int, context: int, repeats: int = 5
) -> dict:
    """Median seconds of one forward pass with n new tokens per sequence (a chain after ``context``
    committed tokens), for each n in ``sizes``: ``{"sizes": [...], "seconds": [...]}``."""
    cache = model.new_cache(num_pages=batch_size * (-(-(context + max(sizes)) // 16) + 1), page_size=16)
    seqs = [cache.add_sequence() for _ in range(batch_size)]
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, model.config.vocab_size, (batch_size, context), generator=gen).tolist()
    with torch.inference_mode():
        batch = StepBatch.build(cache, seqs, prefix)
        model(batch, cache)
        batch.commit(cache)
        seconds = []
        for n in sizes:
            times = []
            for _ in range(repeats + 1):  # the first is a warm-up
                batch = StepBatch.build(cache, seqs, [[1] * n] * batch_size)
                start = time.perf_counter()
                model(batch, cache)
                times.append(time.perf_counter() - start)
                for s in seqs:
                    cache.rollback(s, context)
            seconds.append(statistics.median(times[1:]))
    return {"sizes": list(sizes), "seconds": seconds}


def _distributions(
    model: LlamaModel, sequence: list[int], start: int, params: SamplingParams
) -> torch.Tensor:
    """[len(sequence) - start, vocab]: the model's distribution of token t given tokens < t."""
    cache = model.new_cache(num_pages=-(-len(sequence) // 16) + 1, page_size=16)
    seq = cache.add_sequence()
    batch = StepBatch.build(cache, [seq], [sequence])
    with torch.inference_mode():
        logits = model(batch, cache, logits_rows=torch.arange(start - 1, len(sequence) - 1)).logits
    return probabilities(logits, params)


def acceptance(
    target: LlamaModel,
    candidates: Sequence[str],
    prompts: Sequence[Sequence[int]],
    params: SamplingParams = GREEDY,
    new_tokens: int = 64,
) -> list[list[float]]:
    """``alpha[j][i] = E[sum_x min(p_j(x), p_i(x))]`` over the positions of the target's own
    continuations of ``prompts`` (teacher forcing), for candidates then the target. The n-gram
    drafter's row is the probability that its proposal at each position is accepted (0 without one)."""
    models = [resolve_candidate(target, c) for c in candidates] + [target]
    sequences = [
        list(p) + o.tokens
        for p, o in zip(prompts, generate_autoregressive(target, prompts, new_tokens), strict=True)
    ]
    m = len(models)
    total, count = torch.zeros(m, m, dtype=torch.float64), 0
    for prompt, sequence in tqdm(list(zip(prompts, sequences, strict=True)), desc="acceptance", leave=False):
        start = len(prompt)
        if len(sequence) == start:
            continue
        dists = [None if isinstance(x, str) else _distributions(x, sequence, start, params) for x in models]
        for j in range(m):
            for i in range(j + 1, m):
                if dists[j] is None:  # n-gram: its first proposed token, accepted with p_i(x)
                    rows = [lookup(sequence[:t], 1) for t in range(start, len(sequence))]
                    hit = [(r, x[0]) for r, x in enumerate(rows) if x]
                    mass = sum(float(dists[i][r, tok]) for r, tok in hit) if dists[i] is not None else 0.0
                else:
                    mass = float(torch.minimum(dists[j], dists[i]).sum())
                total[j, i] += mass
        count += len(sequence) - start
    alpha = (total / max(count, 1)).tolist()
    for k in range(m):
        alpha[k][k] = 1.0
    return alpha


def profile(
    target: LlamaModel,
    candidates: Sequence[str],
    prompts: Sequence[Sequence[int]],
    batch_sizes: Sequence[int] = (1,),
    sizes: Sequence[int] = DEFAULT_SIZES,
    context: int = 256,
    params: SamplingParams = GREEDY,
    repeats: int = 5,
) -> dict:
    """Everything :func:`planner.plan.make_plan` needs, measured here (see the module docstring)."""
    name = getattr(target, "name", "target")
    latency = {}
    jobs = [(b, c) for b in batch_sizes for c in list(candidates) + [name]]
    for b, c in tqdm(jobs, desc="latency"):
        model = target if c == name else resolve_candidate(target, c)
        if model == "ngram":
            start = time.perf_counter()
            for _ in range(20):
                lookup(list(range(context)) * 2, 4)
            latency.setdefault(str(b), {})[c] = {
                "sizes": [1],
                "seconds": [(time.perf_counter() - start) / 20],
            }
        else:
            latency.setdefault(str(b), {})[c] = forward_seconds(model, sizes, b, context, repeats)
    return {
        "hardware": hardware(),
        "dtype": str(target.embed_tokens.dtype).removeprefix("torch."),
        "target": name,
        "candidates": list(candidates),
        "latency": latency,
        "alpha": acceptance(target, candidates, prompts, params),
    }
