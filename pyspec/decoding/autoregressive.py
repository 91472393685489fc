"""Plain autoregressive decoding of a ragged batch: one forward pass per new token, no padding."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from pyspec.batch import StepBatch
from pyspec.decoding.output import GenerationOutput, StreamCallback, TextTracker, add_token, collect_outputs
from pyspec.models.llama import LlamaModel
from pyspec.sampling import SamplingParams, sample

PAGE_SIZE = 16
GREEDY = SamplingParams()


def check_prompts(model: LlamaModel, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
    """Raises ValueError for an empty batch or prompt, or a prompt that fills the context."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not prompts:
        raise ValueError("no prompts given")
    context = model.config.max_position_embeddings
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
        if len(p) >= context:
            raise ValueError(f"prompt {i} has {len(p)} tokens but the model's context is {context} tokens")
        bad = [t for t in p if not 0 <= t < model.config.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside the vocabulary: {bad[:5]}")


def generate_autoregressive(
    model: LlamaModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 128,
    sampling: SamplingParams | Sequence[SamplingParams] = GREEDY,
    stop_strings: Sequence[str] = (),
    stream: StreamCallback | None = None,
) -> list[GenerationOutput]:
    """Decodes every prompt (token ids) together, each sequence at its own length.

    A sequence stops at an end-of-sequence token (kept in ``tokens``, not in ``text``), at a stop
    string (the text ends before it), at ``max_new_tokens`` or when the context is full; finished
    sequences leave the batch. ``stream(i, text)`` receives prompt i's text as it is produced.

    Example:
        >>> model = pyspec.load_model("smollm2-135m-instruct")  # doctest: +SKIP
        >>> ids = model.tokenizer("The capital of France is").input_ids  # doctest: +SKIP
        >>> generate_autoregressive(model, [ids], max_new_tokens=8)[0].text  # doctest: +SKIP
    """
    check_prompts(model, prompts, max_new_tokens)
    params = list(sampling) if isinstance(sampling, Sequence) else [sampling] * len(prompts)
    if len(params) != len(prompts):
        raise ValueError(f"{len(params)} sampling settings for {len(prompts)} prompts")
    context = model.config.max_position_embeddings
    limits = [min(max_new_tokens, context - len(p)) for p in prompts]
    pages = sum(-(-(len(p) + n) // PAGE_SIZE) for p, n in zip(prompts, limits, strict=True))
    cache = model.new_cache(num_pages=pages + 1, page_size=PAGE_SIZE)
    seqs = [cache.add_sequence() for _ in prompts]
    generators = [p.generator() for p in params]
    texts = [TextTracker(model.tokenizer, tuple(stop_strings), i, stream) for i in range(len(prompts))]
    eos = set(model.config.eos_token_ids)
    finish = [None if n > 0 else "length" for n in limits]
    passes, start, first_step = [0] * len(prompts), time.perf_counter(), None

    active = [i for i in range(len(prompts)) if finish[i] is None]
    inputs = {i: list(prompts[i]) for i in active}
    while active:
        batch = StepBatch.build(cache, [seqs[i] for i in active], [inputs[i] for i in active])
        with torch.inference_mode():
            logits = model(batch, cache).logits  # [len(active), vocab]
        batch.commit(cache)
        for row, i in enumerate(active):
            token = sample(logits[row], params[i], generators[i])
            passes[i] += 1
            finish[i] = add_token(texts[i], token, eos, limits[i])
            inputs[i] = [token]
        first_step = first_step or (time.perf_counter() - start, [len(t.tokens) for t in texts])
        for i in active:
            if finish[i] is not None:
                cache.release(seqs[i])
        active = [i for i in active if finish[i] is None]

    seconds = time.perf_counter() - start
    return collect_outputs(texts, finish, [len(p) for p in prompts], passes, seconds, first_step)
