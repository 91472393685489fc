"""Speculative decoding of a ragged batch: draft, verify in one target pass, emit, repeat.

Each step, the drafter (an n-gram lookup, a draft model, or a whole hierarchy) proposes a chain or a
tree per sequence; the target scores all of them in one pass with tree attention, the exact rules of
:mod:`pyspec.verify` keep a path, and KV compaction leaves only that path in the target's cache.
Greedy output is token-identical to :func:`generate_autoregressive`; sampled output follows the
target's distribution exactly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from pyspec.decoding.autoregressive import GREEDY, check_prompts
from pyspec.decoding.output import GenerationOutput, StreamCallback, TextTracker, add_token, collect_outputs
from pyspec.decoding.verifier import Verifier
from pyspec.drafters.base import Drafter
from pyspec.models.llama import LlamaModel
from pyspec.sampling import SamplingParams

MARGIN = 16  # cache room past prompt + max_new_tokens, on top of each level's largest draft


def generate_speculative(
    target: LlamaModel,
    prompts: Sequence[Sequence[int]],
    drafter: Drafter,
    max_new_tokens: int = 128,
    sampling: SamplingParams | Sequence[SamplingParams] = GREEDY,
    stop_strings: Sequence[str] = (),
    stream: StreamCallback | None = None,
) -> list[GenerationOutput]:
    """Decodes every prompt (token ids) with ``drafter`` proposing and ``target`` verifying.

    Stopping, streaming and per-prompt sampling as in :func:`generate_autoregressive`. Each output's
    ``stats`` adds ``target_passes`` (steps this sequence took), ``mat`` (tokens per target pass) and
    ``levels``: per level of the stack, bottom first (the target last), its passes, time, and the
    acceptance of the drafts it verified (shared by the whole batch).

    Example:
        >>> drafter = build_stack(target, ["ngram"])  # doctest: +SKIP
        >>> generate_speculative(target, [ids], drafter, max_new_tokens=32)[0].stats["mat"]  # doctest: +SKIP
    """
    check_prompts(target, prompts, max_new_tokens)
    if drafter.vocab_size is not None and drafter.vocab_size != target.config.vocab_size:
        raise ValueError(
            f"the drafter's vocabulary has {drafter.vocab_size} tokens, "
            f"the target's {target.config.vocab_size}"
        )
    params = list(sampling) if isinstance(sampling, Sequence) else [sampling] * len(prompts)
    if len(params) != len(prompts):
        raise ValueError(f"{len(params)} sampling settings for {len(prompts)} prompts")
    context = target.config.max_position_embeddings
    limits = [min(max_new_tokens, context - len(p)) for p in prompts]
    lengths = [len(p) + n + MARGIN for p, n in zip(prompts, limits, strict=True)]
    verifier = Verifier(target, getattr(target, "name", "target"))
    room = [n + drafter.max_draft for n in lengths]
    verifier.begin(room, runner=drafter.target_runner(target, room))
    drafter.begin(lengths)
    generators = [p.generator() for p in params]
    texts = [TextTracker(target.tokenizer, tuple(stop_strings), i, stream) for i in range(len(prompts))]
    eos = set(target.config.eos_token_ids)
    finish = [None if n > 0 else "length" for n in limits]
    passes = [0] * len(prompts)
    start, first_step = time.perf_counter(), None
    active = [i for i in range(len(prompts)) if finish[i] is None]
    for i in active:
        verifier.add(i)
        drafter.add(i)
    try:
        while active:
            contexts = [list(prompts[i]) + texts[i].tokens for i in active]
            budgets = [limits[i] - len(texts[i].tokens) - 1 for i in active]
            sub_params, sub_gens = [params[i] for i in active], [generators[i] for i in active]
            drafts = drafter.propose(active, contexts, sub_params, sub_gens, budgets)
            results = verifier.step(active, contexts, drafts, sub_params, sub_gens)
            for i, res in zip(active, results, strict=True):
                passes[i] += 1
                for token in res.tokens:
                    finish[i] = add_token(texts[i], token, eos, limits[i])
                    if finish[i] is not None:
                        break
            first_step = first_step or (time.perf_counter() - start, [len(t.tokens) for t in texts])
            for i in active:
                if finish[i] is not None:
                    verifier.release(i)
                    drafter.release(i)
            active = [i for i in active if finish[i] is None]
    finally:
        drafter.end()
        verifier.end()

    seconds = time.perf_counter() - start
    levels = [s.as_dict() for s in drafter.levels() + [verifier.stats]]
    return collect_outputs(
        texts, finish, [len(p) for p in prompts], passes, seconds, first_step, levels=levels
    )
