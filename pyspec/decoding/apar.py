"""APAR decoding (docs/papers.md §3): a fine-tuned model forks its answer into streams decoded in parallel.

Every stream is one sequence of the ragged batch. When a stream emits ``[Fork]``, a child stream
starts that shares the parent's KV pages (:meth:`pyspec.model_runner.ModelRunner.fork`: reference
counts, copy-on-write for the shared, partly filled page), is fed ``[Fork]`` and a forced
``[Child]``, and decodes in the next step next to its parent, which goes on with its next item. A
stream never sees its siblings' text. ``[Child]`` is never produced; ``[Fork]`` is banned right after
``[Fork]``/``[Child]`` and at the maximum depth. When the request already has ``max_streams`` streams
running, a new child waits (holding only references to its parent's pages) and joins the batch, in
fork order, as soon as a stream finishes. (docs/papers.md bans ``[Fork]`` when the batch is full instead;
that ban depends on how far the other streams have got, so speculation, which changes that, would
change the answer. Here every ban depends on the stream's own context only.) Finished streams leave
the batch and free their pages. The answer is reassembled from the paragraph
tree: each stream's text with every ``[Fork]`` replaced by its child's text.

How long an answer is, is decided the same way whatever the schedule:

- a child ends where its item ends: at its first line break after some text (the main stream
  writes the line breaks between items; the line break is not part of the answer), at its end
  token, or after ``max_child_tokens`` tokens;
- ``max_new_tokens`` bounds the whole answer: the reassembled answer is the unbounded tree's answer
  cut after ``max_new_tokens`` tokens in reading order (``[Fork]`` and end tokens not counted). A
  stream stops, and a waiting child is dropped, as soon as the tokens known to come before its next
  token in reading order (its own, its children's so far and what comes before the stream) reach
  the bound: those tokens only grow, so nothing it could still write would be in the answer.

Within each stream decoding is exact: plain decoding samples from the model's (banned) distribution,
and with a ``drafter`` (speculative APAR) the drafts are verified by the exact rules of
:mod:`pyspec.verify` against that same distribution, so the output is token-identical to plain APAR
for greedy decoding; ``max_streams`` and the drafter change only when streams run, never the answer.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from pyspec.decoding.core import GREEDY, DecodeCore, check_prompts, per_prompt, step_tokens
from pyspec.decoding.draft_policy import DraftPolicy
from pyspec.drafters.base import Draft, Drafter
from pyspec.kv_cache import PAGE_SIZE
from pyspec.model_runner import pages_needed
from pyspec.models.llama import LlamaModel
from pyspec.sampling import SamplingParams
from pyspec.stats import RequestStats

TextCallback = Callable[[int, str], None]  # (request index, new text in reading order)


@dataclass(eq=False)
class Stream:
    """One branch of an answer: the context the model sees and what it generated; a sequence of the
    decoding core's step (:class:`~pyspec.decoding.core.RunningSequence`)."""

    owner: _Request = field(repr=False)
    index: int  # 0: the main stream
    parent: int | None
    depth: int
    context: list[int]  # prompt, ancestors up to the fork ([Fork], [Child]), then its own tokens
    start: int  # where its own tokens begin in ``context``
    cap: int  # the most tokens of its own
    children: list[int] = field(default_factory=list)  # stream indices, in fork order
    fork_at: list[int] = field(default_factory=list)  # per child: the answer tokens before its [Fork]
    answer_tokens: int = 0  # own tokens in the answer: not [Fork], an end token or the item's line break
    has_text: bool = False  # a child wrote something other than white space
    tail: str = ""  # an item's last token's text before its line break (none in byte-level BPE)
    finish: str | None = None  # "stop" (end token), "item" (a child's line break), "length", "cut"
    waiting: bool = False  # forked, waiting for a free stream
    pinned = False  # one drafter whatever the load

    @property
    def request(self) -> int:
        return self.owner.index

    @property
    def key(self) -> tuple[int, int]:
        return (self.owner.index, self.index)

    @property
    def tokens(self) -> list[int]:
        return self.context[self.start :]

    @property
    def params(self) -> SamplingParams:
        return self.owner.params

    @property
    def generator(self) -> torch.Generator:
        return self.owner.generator

    @property
    def budget(self) -> int:
        return self.cap - len(self.tokens) - 1

    def emit(self, tokens: list[int], now: float) -> bool:
        """Appends a step's tokens; a ``[Fork]`` starts a child; True when the stream has finished."""
        r = self.owner
        for token in tokens:
            self.context.append(token)
            if token == r.fork_id:
                self.fork_at.append(self.answer_tokens)
                r.fork(self)
            elif token in r.eos:
                self.finish = "stop"
            elif self.parent is not None and self._ends_item(r.texts[token]):
                self.finish = "item"
            else:
                self.answer_tokens += 1
            if not self.finish and len(self.tokens) >= self.cap:
                self.finish = "length"
            if self.finish:
                break
        return self.finish is not None

    def _ends_item(self, text: str) -> bool:
        """A child's item ends at its first line break after some text."""
        head, newline, _ = text.partition("\n")
        if newline and (self.has_text or head.strip()):
            self.tail = head
            return True
        self.has_text = self.has_text or bool(text.strip())
        return False

    def answer(self) -> list[int]:
        """Its tokens that belong to the answer, ``[Fork]`` kept as the place of each child."""
        out = [t for t in self.tokens if t not in self.owner.eos]
        return out[:-1] if self.finish == "item" else out


@dataclass
class AparOutput:
    """A request's reassembled answer, its streams and statistics.

    ``finish_reason``: ``"length"`` when the answer was cut at ``max_new_tokens`` or a stream at
    ``max_child_tokens`` (or the model's context), else ``"stop"``.
    ``stats`` (:class:`~pyspec.stats.RequestStats`):
    ``prompt_tokens``, ``target_passes`` (steps while the request ran, the prompt's included),
    ``new_tokens`` (generated by all streams, beyond the cut included), ``answer_tokens`` (in the
    answer), ``mat`` (generated tokens per step), ``levels`` (speculative APAR: per level, as in
    :func:`generate_speculative`), ``forks``, ``max_live_streams``, ``peak_pages`` (most KV pages in
    use during a step, for the whole batch), ``seconds``.
    """

    text: str
    streams: list[dict]  # per stream: parent, depth, tokens, context (what the model saw), text, finish
    finish_reason: str
    stats: RequestStats


class _Request:
    """One prompt's streams and what they share: sampling, limits, the control tokens, the core."""

    def __init__(
        self,
        index: int,
        prompt: list[int],
        params: SamplingParams,
        limits: tuple[int, int, int],
        core: DecodeCore,
        control: tuple[int, int],
        eos: set[int],
        texts: Sequence[str],
    ) -> None:
        self.index, self.params, self.generator = index, params, params.generator()
        self.max_tokens, self.max_child_tokens, self.context_length = limits
        self.core, self.eos, self.texts = core, eos, texts
        self.fork_id, self.child_id = control
        main_cap = min(self.max_tokens, self.context_length - len(prompt))
        self.streams = [Stream(self, 0, None, 0, list(prompt), len(prompt), main_cap)]
        self.steps = self.max_live = 0
        self.emitted = ""

    def fork(self, parent: Stream) -> None:
        """Creates a child of ``parent``, whose last token is ``[Fork]``: it shares the parent's KV
        and waits for :meth:`admit`."""
        context = parent.context + [self.child_id]
        cap = min(self.max_child_tokens, self.context_length - len(context))
        s = Stream(self, len(self.streams), parent.index, parent.depth + 1, context, len(context), cap)
        s.waiting = True
        self.streams.append(s)
        parent.children.append(s.index)
        self.core.fork(parent.key, s.key)
        if cap < 1:  # no room left in the model's context
            self.stop(s, "length")

    def live(self) -> list[Stream]:
        """The running streams."""
        return [s for s in self.streams if s.finish is None and not s.waiting]

    def admit(self, max_streams: int) -> None:
        """Starts waiting children, in fork order, while fewer than ``max_streams`` run."""
        running = len(self.live())
        for s in self.streams:
            if running >= max_streams:
                break
            if s.waiting and s.finish is None:
                s.waiting = False
                running += 1

    def stop(self, s: Stream, reason: str) -> None:
        """Ends a running or waiting stream that the step did not end, freeing its pages."""
        s.finish, s.waiting = reason, False
        self.core.release(s.key)

    def cut(self) -> None:
        """Stops every unfinished stream whose next token lies beyond ``max_tokens`` in reading order."""
        self._cut(self.streams[0], 0)

    def _cut(self, s: Stream, start: int) -> int:
        """``start``: the answer tokens known to come before ``s``; returns those of its subtree so far."""
        at, prev = start, 0
        for before_fork, child in zip(s.fork_at, s.children, strict=True):
            at += before_fork - prev
            prev = before_fork
            at += self._cut(self.streams[child], at)
        at += s.answer_tokens - prev
        if s.finish is None and at >= self.max_tokens:
            self.stop(s, "cut")
        return at - start

    def segments(self, index: int = 0) -> Iterator[tuple[Stream, list[int], bool]]:
        """The answer in reading order: (stream, its answer tokens up to its next fork or its end,
        whether this is its last piece)."""
        s = self.streams[index]
        piece, forks = [], iter(s.children)
        for tok in s.answer():
            if tok == self.fork_id:
                yield s, piece, False
                piece = []
                yield from self.segments(next(forks))
            else:
                piece.append(tok)
        yield s, piece, True

    def text(self, decode: Callable[[list[int]], str], settled_only: bool) -> tuple[str, int]:
        """The answer's text (cut at ``max_tokens``) and its tokens. With ``settled_only``, stops at
        the first stream still running (its text so far included, minus an unfinished character)."""
        out, left = [], self.max_tokens
        for s, piece, last in self.segments():
            piece = piece[:left]
            left -= len(piece)
            running = s.finish is None or s.waiting
            text = decode(piece)
            if last and s.finish == "item" and left > 0:
                text += s.tail
            out.append(text.rstrip("\ufffd") if running and last else text)
            if left <= 0 or (settled_only and running and last):
                break
        return "".join(out), self.max_tokens - left


def generate_apar(
    model: LlamaModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 256,
    sampling: SamplingParams | Sequence[SamplingParams] = GREEDY,
    max_streams: int = 8,
    max_depth: int = 1,
    drafter: Drafter | None = None,
    num_pages: int | None = None,
    stream: TextCallback | None = None,
    max_child_tokens: int | None = None,
) -> list[AparOutput]:
    """Decodes every prompt (token ids) with APAR; all streams of all requests share one ragged batch.

    ``model`` must know ``[Fork]`` and ``[Child]`` (:func:`pyspec.models.adapters.load_apar_model`).
    ``max_new_tokens`` bounds each whole answer (all its streams, in reading order);
    ``max_child_tokens`` (default ``max_new_tokens``) bounds each child, which also ends at its item's
    line break; ``max_streams`` bounds the streams of a request running at once (further children
    wait for a free one); ``max_depth`` bounds the nesting of forks (``max_depth=0``: no forks, the
    same model decoding sequentially). ``drafter``: speculative APAR, each stream drafting for itself.
    ``stream(request, text)`` receives the answer as it settles, in reading order (a head's text is
    released once its child's text before it is complete). Raises :class:`pyspec.OutOfPagesError`
    when ``num_pages`` cannot hold the streams.

    Example:
        >>> model = load_apar_model()  # doctest: +SKIP
        >>> ids = encode_prompts(model, "Give me five tips to sleep better.")  # doctest: +SKIP
        >>> out = generate_apar(model, ids, max_new_tokens=128)  # doctest: +SKIP
        >>> out[0].stats.forks, out[0].stats.answer_tokens, out[0].text  # doctest: +SKIP
    """
    fork, child = _control_tokens(model)
    check_prompts(model, prompts, max_new_tokens)
    max_child_tokens = max_new_tokens if max_child_tokens is None else max_child_tokens
    if max_streams < 1 or max_depth < 0 or max_child_tokens < 1:
        raise ValueError(
            "max_streams and max_child_tokens must be >= 1 and max_depth >= 0, got "
            f"{max_streams}, {max_child_tokens}, {max_depth}"
        )
    params = per_prompt(sampling, len(prompts))
    context = model.config.max_position_embeddings
    policy = DraftPolicy.fixed(drafter)
    # a stream's context: the prompt, its ancestors' tokens and its own, plus a step; per request,
    # room for max_streams running streams and the finished main stream whose pages waiting
    # children hold, plus one copy-on-write page per possible fork ([Fork] is never repeated)
    own = max_new_tokens + max_depth * max_child_tokens + 2 * (max_depth + 1)
    rooms = [min(context, len(p) + own) for p in prompts]
    lengths = [r + policy.max_draft + 1 for r in rooms for _ in range(max_streams + 1)]
    forks = len(prompts) * (own // 2 + 1)
    pages = num_pages or forks + pages_needed(
        [r + step_tokens(policy) for r in rooms for _ in range(max_streams + 1)], PAGE_SIZE
    )
    core = DecodeCore(model, policy, lengths, pages)
    eos, texts = set(model.config.eos_token_ids), token_texts(model.tokenizer)
    limits = (max_new_tokens, max_child_tokens, context)
    requests = [
        _Request(i, list(p), params[i], limits, core, (fork, child), eos, texts)
        for i, p in enumerate(prompts)
    ]
    decode = functools.partial(model.tokenizer.decode, skip_special_tokens=True)
    start, first_step = time.perf_counter(), None
    try:
        for r in requests:
            core.add(r.streams[0].key)
        while True:
            for r in requests:
                r.admit(max_streams)
            live = [s for r in requests for s in r.live()]
            if not live:
                break
            bans = [_ban(fork, child, s.depth < max_depth) for s in live]
            core.step(live, trim=lambda d: trim_draft(d, fork, child), banned=bans)
            first_step = first_step or time.perf_counter() - start
            for r in {s.request for s in live}:
                requests[r].steps += 1
                requests[r].cut()
            for r in requests:
                r.max_live = max(r.max_live, len(r.live()))
            if stream is not None:
                for r in requests:
                    _emit(r, decode, stream)
    finally:
        core.end()
    seconds = time.perf_counter() - start
    levels = core.level_stats() if drafter is not None else []
    return [_output(model, r, decode, core, seconds, first_step or 0.0, levels) for r in requests]


def trim_draft(draft: Draft, fork: int, child: int) -> Draft:
    """Drops draft nodes a stream cannot accept: ``[Child]`` (never produced) and anything below a
    ``[Fork]`` (a fork ends what one step can emit, so each stream forks at most once a step).

    Example:
        >>> trim_draft(Draft.chain([5, 7, 6, 8]), fork=7, child=9).tokens
        [5, 7]
    """
    keep, index = [], {}
    for i, (tok, par) in enumerate(zip(draft.tokens, draft.parents, strict=True)):
        if tok == child or (par >= 0 and (par not in index or draft.tokens[par] == fork)):
            continue
        index[i] = len(keep)
        keep.append(i)
    if len(keep) == len(draft):
        return draft
    parents = [-1 if draft.parents[i] < 0 else index[draft.parents[i]] for i in keep]
    q = None if draft.q is None else draft.q[keep]
    return Draft([draft.tokens[i] for i in keep], parents, q)


@functools.lru_cache(maxsize=4)
def token_texts(tokenizer) -> tuple[str, ...]:
    """Every token id's text alone (where a child's item ends is read from it).

    Example:
        >>> texts = token_texts(model.tokenizer)  # doctest: +SKIP
        >>> [i for i, t in enumerate(texts) if "\\n" in t][:3]  # doctest: +SKIP
    """
    return tuple(tokenizer.batch_decode([[i] for i in range(len(tokenizer))]))


def _control_tokens(model: LlamaModel) -> tuple[int, int]:
    ids = model.control_tokens
    if ids is None:
        raise ValueError(
            f"{model.name} has no [Fork]/[Child] tokens: APAR needs a model "
            "fine-tuned for it (pyspec.models.adapters.load_apar_model)"
        )
    return ids


def _ban(fork: int, child: int, may_fork: bool) -> Callable[[int], list[int]]:
    no_fork, child_only = [child, fork], [child]

    def banned(before: int) -> list[int]:
        return no_fork if (not may_fork or before in (fork, child)) else child_only

    return banned


def _emit(r: _Request, decode: Callable[[list[int]], str], stream: TextCallback) -> None:
    text, _ = r.text(decode, settled_only=True)
    if len(text) > len(r.emitted) and text.startswith(r.emitted):
        stream(r.index, text[len(r.emitted) :])
        r.emitted = text


def _output(
    model: LlamaModel,
    r: _Request,
    decode: Callable[[list[int]], str],
    core: DecodeCore,
    seconds: float,
    ttft: float,
    levels: list[dict],
) -> AparOutput:
    streams = [
        {
            "parent": s.parent,
            "depth": s.depth,
            "tokens": s.tokens,
            "context": s.context,
            "text": model.tokenizer.decode(s.answer(), skip_special_tokens=False) + s.tail,
            "finish": s.finish,
        }
        for s in r.streams
    ]
    text, answer_tokens = r.text(decode, settled_only=False)
    if r.streams[0].finish is None:
        raise AssertionError("decoding ended with the main stream running")
    cut = answer_tokens >= r.max_tokens or any(s.finish == "length" for s in r.streams)
    stats = RequestStats(
        prompt_tokens=r.streams[0].start,
        new_tokens=sum(len(s.tokens) for s in r.streams),
        target_passes=r.steps,
        seconds=seconds,
        ttft_seconds=ttft,
        levels=levels,
        peak_pages=core.peak_pages,
        forks=len(r.streams) - 1,
        max_live_streams=r.max_live,
        answer_tokens=answer_tokens,
    )
    return AparOutput(text, streams, "length" if cut else "stop", stats)
