"""What a decoding loop returns per prompt, and the text bookkeeping every loop shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyspec.stats import RequestStats

StreamCallback = Callable[[int, str], None]  # (prompt index, new text)


@dataclass
class GenerationOutput:
    """One prompt's generation: new token ids, their text, why it stopped, and statistics."""

    tokens: list[int]
    text: str
    finish_reason: str  # "eos", "stop" (a stop string), "length" (max_new_tokens or the context)
    stats: RequestStats


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
