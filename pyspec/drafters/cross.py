"""Drafts from a model with another tokenizer, re-tokenized into the verifier's tokens.

Each step, the verifier's context (its token ids) is decoded to text and encoded with the draft's
tokenizer; the draft stack proposes a continuation in its own tokens; the continuation's text is
encoded with the verifier's tokenizer after the context's last tokens (the last position both agree
on) and handed up as *deterministic candidates* (``q = None``). The verifier accepts a candidate x
with probability p(x) and, after a rejection, samples from p with x removed and renormalised
(:mod:`pyspec.verify`), which keeps greedy and sampled output exactly the verifier's whatever the
candidates are. The draft rolls its own KV cache back to the text the verifier accepted
(:meth:`ModelRunner.sync` on the re-encoded context).

The draft always proposes its most likely continuation (greedy): a deterministic candidate is
accepted with probability p(x), which the draft's mode maximises better than a draw from it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Hashable, Sequence

import torch

from pyspec.drafters.base import Draft, Drafter
from pyspec.kv_cache import OutOfPagesError
from pyspec.sampling import SamplingParams
from pyspec.stats import LevelStats

GREEDY = SamplingParams()
ANCHOR = 2  # context tokens re-encoded with a proposal, so that it tokenizes as it would in context
REPLACEMENT = "\ufffd"  # what a decoder prints for an incomplete UTF-8 character


class CrossTokenizerDrafter(Drafter):
    """Wraps ``draft`` (any drafter in ``draft_tokenizer``'s ids) to propose chains in
    ``tokenizer``'s ids; at most ``max_tokens`` candidates per step (default: twice the draft's
    largest proposal). ``name`` labels its statistics (the re-tokenization's time).

    ``length_ratio`` bounds the draft's tokens per verifier token, to size the draft's caches; a
    text that needs more runs out of the draft's pages, and decoding goes on without its drafts
    (with a warning), never with an error.

    Example:
        >>> small = load_model("smollm2-135m-instruct")  # doctest: +SKIP
        >>> big = load_model("qwen2.5-coder-1.5b-instruct")  # doctest: +SKIP
        >>> draft = ModelDrafter(small, block_size=6)  # doctest: +SKIP
        >>> drafter = CrossTokenizerDrafter(draft, small.tokenizer, big.tokenizer)  # doctest: +SKIP
        >>> generate_speculative(big, [ids], drafter)  # doctest: +SKIP
    """

    def __init__(
        self,
        draft: Drafter,
        draft_tokenizer,
        tokenizer,
        max_tokens: int | None = None,
        length_ratio: float = 2.0,
        name: str | None = None,
    ) -> None:
        for label, tok in (("draft_tokenizer", draft_tokenizer), ("tokenizer", tokenizer)):
            if not (callable(getattr(tok, "decode", None)) and callable(tok)):
                raise TypeError(
                    f"{label} must be a tokenizer (callable, with decode), got {type(tok).__name__}"
                )
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if length_ratio <= 0:
            raise ValueError(f"length_ratio must be > 0, got {length_ratio}")
        super().__init__(name or f"retokenize({type(draft_tokenizer).__name__}->{type(tokenizer).__name__})")
        self.draft, self.draft_tokenizer, self.tokenizer = draft, draft_tokenizer, tokenizer
        self.length_ratio = length_ratio
        # one draft token gives about one verifier token, a long one (a run of spaces) a few
        self.max_tokens = max_tokens or 2 * draft.max_draft
        self.max_draft = self.max_tokens
        self.exhausted = False  # the draft ran out of cache: no more drafts this generation
        self.vocab_size = None  # proposals are already in the verifier's ids

    def levels(self) -> list[LevelStats]:
        return self.draft.levels() + [self.stats]

    def begin(self, max_lengths: Sequence[int]) -> None:
        super().begin(max_lengths)
        self.exhausted = False
        self.draft.begin([math.ceil(n * self.length_ratio) + self.draft.max_draft for n in max_lengths])

    def add(self, key: Hashable) -> None:
        self.draft.add(key)

    def release(self, key: Hashable) -> None:
        self.draft.release(key)

    def end(self) -> None:
        self.draft.end()

    def propose(
        self,
        keys: Sequence[Hashable],
        contexts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator],
        budgets: Sequence[int],
    ) -> list[Draft]:
        if self.exhausted:
            return [Draft() for _ in keys]
        start = time.perf_counter()
        texts = [self.tokenizer.decode(list(c)) for c in contexts]
        draft_contexts = [self.encode_draft(t) for t in texts]
        drafted = time.perf_counter()
        try:
            proposals = self.draft.propose(
                keys, draft_contexts, [GREEDY] * len(keys), generators, [max(b, 0) for b in budgets]
            )
        except OutOfPagesError as e:
            warnings.warn(
                f"{self.stats.name}: the draft's text is longer than length_ratio={self.length_ratio} "
                f"allows ({e}); decoding goes on without its drafts",
                stacklevel=2,
            )
            self.exhausted = True
            return [Draft() for _ in keys]
        back = time.perf_counter()
        drafts = []
        for ctx, dctx, proposal, budget in zip(contexts, draft_contexts, proposals, budgets, strict=True):
            tokens = self.retokenize(list(ctx), dctx, proposal.tokens) if budget > 0 else []
            drafts.append(Draft.chain(tokens[: min(budget, self.max_tokens)]))
        self.stats.passes += 1
        self.stats.seconds += (drafted - start) + (time.perf_counter() - back)
        return drafts

    def encode_draft(self, text: str) -> list[int]:
        """The draft tokenizer's ids of ``text`` (special tokens written in it are recognised)."""
        return self.draft_tokenizer(text, add_special_tokens=False).input_ids

    def retokenize(self, context: list[int], draft_context: list[int], proposal: list[int]) -> list[int]:
        """The verifier's tokens for the text of ``proposal`` (draft ids) after ``draft_context``.

        The text is encoded together with the decoded last ``ANCHOR`` context tokens; when those come
        back unchanged, what follows them is the proposal as the verifier would tokenize it in context,
        otherwise (the text would merge into the context's last token) the text is encoded alone.

        Example:
            >>> tok = load_model("smollm2-135m-instruct").tokenizer  # doctest: +SKIP
            >>> d = CrossTokenizerDrafter(NgramDrafter(), tok, tok)  # doctest: +SKIP
            >>> ids = tok("def add(a, b):").input_ids  # doctest: +SKIP
            >>> d.retokenize(ids[:3], ids[:3], ids[3:]) == ids[3:]  # doctest: +SKIP
            True
        """
        text = self.continuation(draft_context, proposal)
        if not text:
            return []
        anchor = context[-ANCHOR:]
        head = self.tokenizer.decode(anchor)
        ids = self.tokenizer(head + text, add_special_tokens=False).input_ids
        if ids[: len(anchor)] == anchor:
            return ids[len(anchor) :]
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def continuation(self, draft_context: list[int], proposal: list[int]) -> str:
        """The text ``proposal`` adds after ``draft_context``, without a trailing incomplete character."""
        if not proposal:
            return ""
        anchor = draft_context[-ANCHOR:]
        head = self.draft_tokenizer.decode(anchor)
        full = self.draft_tokenizer.decode(anchor + proposal)
        if not full.startswith(head):  # a decoder that rewrites across tokens: decode everything
            head = self.draft_tokenizer.decode(draft_context)
            full = self.draft_tokenizer.decode(draft_context + proposal)
            if not full.startswith(head):
                return ""
        return full[len(head) :].rstrip(REPLACEMENT)
