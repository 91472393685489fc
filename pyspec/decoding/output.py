"""What a decoding loop returns per prompt, and the text bookkeeping every loop shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

StreamCallback = Callable[[int, str], None]  # (prompt index, new text)


@dataclass
class GenerationOutput:
    """One prompt's generation: new token ids, their text, why it stopped, and statistics."""

    tokens: list[int]
    text: str
    finish_reason: str  # "eos", "stop" (a stop string), "length" (max_new_tokens or the context)
    stats: dict = field(default_factory=dict)


class TextTracker:
    """Incremental detokenisation of one sequence with stop strings and streaming.

    Text is streamed once it can no longer become part of a stop string or of an unfinished UTF-8
    character; a stop string ends the text before it.
    """

    def __init__(
        self, tokenizer, stop_strings: tuple[str, ...], index: int, stream: StreamCallback | None
    ) -> None:
        self.tokenizer, self.stop_strings, self.index, self.stream = tokenizer, stop_strings, index, stream
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped = False

    def add(self, token: int) -> bool:
        """Appends a token; returns True when a stop string was reached."""
        self.tokens.append(token)
        if self.tokenizer is None:  # a model without a tokenizer (random weights, for timing): ids only
            return False
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        for stop in self.stop_strings:
            at = self.text.find(stop)
            if at >= 0:
                self.text = self.text[:at]
                self.stopped = True
        hold = 0 if self.stopped else max([len(s) - 1 for s in self.stop_strings] + [0])
        ready = len(self.text) - hold
        if self.text.endswith("\ufffd") and not self.stopped:  # a character still being spelled out
            ready = min(ready, len(self.text.rstrip("\ufffd")))
        self._emit(ready)
        return self.stopped

    def finish(self) -> None:
        """Streams whatever is left."""
        self._emit(len(self.text))

    def _emit(self, upto: int) -> None:
        if self.stream is not None and upto > self.sent:
            self.stream(self.index, self.text[self.sent : upto])
            self.sent = upto


def add_token(tracker: TextTracker, token: int, eos: set[int], limit: int) -> str | None:
    """Appends ``token`` to a sequence; returns why the sequence ends with it (``"stop"``, ``"eos"``,
    ``"length"``) or None."""
    if tracker.add(token):
        return "stop"
    if token in eos:
        return "eos"
    if len(tracker.tokens) >= limit:
        return "length"
    return None


def collect_outputs(
    texts: list[TextTracker],
    finish: list[str | None],
    prompt_lengths: list[int],
    passes: list[int],
    seconds: float,
    first_step: tuple[float, list[int]] | None = None,
    **extra,
) -> list[GenerationOutput]:
    """Streams what is left of every text and builds the outputs with their statistics: prompt and
    new tokens, target passes this sequence took, MAT (new tokens per pass), wall time for the whole
    batch, tokens per second, and ``extra`` entries. ``first_step``: the batch's first step (the
    prompt's prefill) as (seconds, tokens each sequence had after it), giving the time to first
    token and the decoding speed after it (``decode_tokens_per_second``, prefill excluded)."""
    outputs = []
    for i, tracker in enumerate(texts):
        tracker.finish()
        n = len(tracker.tokens)
        first_seconds, first_tokens = first_step if first_step else (0.0, [0] * len(texts))
        after = seconds - first_seconds
        stats = {
            "prompt_tokens": prompt_lengths[i],
            "new_tokens": n,
            "target_passes": passes[i],
            "seconds": seconds,
            "tokens_per_second": n / seconds if seconds > 0 else 0.0,
            "mat": n / passes[i] if passes[i] else 0.0,
            "ttft_seconds": first_seconds,
            "decode_tokens_per_second": (n - first_tokens[i]) / after if after > 0 else 0.0,
        } | extra
        outputs.append(GenerationOutput(tracker.tokens, tracker.text, finish[i], stats))
    return outputs
