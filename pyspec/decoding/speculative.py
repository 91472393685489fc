"""Speculative decoding of a ragged batch: draft, verify in one target pass, emit, repeat.

Each step, the drafter (an n-gram lookup, a draft model, or a whole hierarchy) proposes a chain or a
tree per sequence; the target scores all of them in one pass with tree attention, the exact rules of
:mod:`pyspec.verify` keep a path, and KV compaction leaves only that path in the target's cache.
Greedy output is token-identical to :func:`generate_autoregressive`; sampled output follows the
target's distribution exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspec.decoding.core import GREEDY, decode_batch
from pyspec.decoding.output import GenerationOutput, StreamCallback
from pyspec.drafters.base import Drafter
from pyspec.models.llama import LlamaModel
from pyspec.sampling import SamplingParams


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
    ``stats.target_passes`` counts the steps this sequence took, ``stats.mat`` its tokens per target
    pass, and ``stats.levels`` has, per level of the stack, bottom first (the target last), its
    passes, time, and the acceptance of the drafts it verified (shared by the whole batch).

    Example:
        >>> drafter = build_stack(target, ["ngram"])  # doctest: +SKIP
        >>> generate_speculative(target, [ids], drafter, max_new_tokens=32)[0].stats.mat  # doctest: +SKIP
    """
    if drafter is None:
        raise ValueError("generate_speculative needs a drafter (generate_autoregressive decodes without)")
    return decode_batch(target, prompts, drafter, max_new_tokens, sampling, stop_strings, stream)
