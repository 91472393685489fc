"""Plain autoregressive decoding of a ragged batch: one forward pass per new token, no padding."""

from __future__ import annotations

from collections.abc import Sequence

from pyspec.decoding.core import GREEDY, decode_batch
from pyspec.decoding.output import GenerationOutput, StreamCallback
from pyspec.models.llama import LlamaModel
from pyspec.sampling import SamplingParams


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
    sequences leave the batch. ``stream(i, text)`` receives prompt i's text as it is produced. The
    drafter-less case of :func:`pyspec.decoding.core.decode_batch`: every step verifies an empty
    draft, i.e. samples the model's next token.

    Example:
        >>> model = pyspec.load_model("smollm2-135m-instruct")  # doctest: +SKIP
        >>> ids = model.tokenizer("The capital of France is").input_ids  # doctest: +SKIP
        >>> generate_autoregressive(model, [ids], max_new_tokens=8)[0].text  # doctest: +SKIP
    """
    return decode_batch(model, prompts, None, max_new_tokens, sampling, stop_strings, stream)
