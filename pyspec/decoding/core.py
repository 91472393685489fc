"""The one decoding core: per-request state and the step cycle under every decoding loop.

A step runs **propose -> verify -> emit -> release** over the sequences running now:

- *propose*: each sequence's drafter (the :class:`~pyspec.decoding.draft_policy.DraftPolicy` choice
  for the number of running sequences; none: plain decoding) drafts a tree below its context. A
  drafter that reads the target's own pass (Medusa heads, hidden transfer) declares
  :attr:`~pyspec.drafters.base.Drafter.target_states` and receives, as an argument, the states the
  target's last pass left at the sequence's last token;
- *verify*: one target pass over every sequence's tree, the exact acceptance rules
  (:class:`~pyspec.decoding.verifier.Verifier`); with empty drafts this is plain decoding;
- *emit*: each sequence appends its accepted tokens and decides whether it has finished
  (:meth:`Request.emit`; APAR's streams fork here);
- *release*: finished sequences free their KV pages in every level.

:func:`generate_autoregressive` is the drafter-less case of :func:`decode_batch`,
:func:`generate_speculative` adds a drafter, :class:`~pyspec.decoding.engine.BatchEngine` adds
admission and pre-emption, :func:`~pyspec.decoding.apar.generate_apar` adds forks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from pyspec.decoding.draft_policy import DraftPolicy
from pyspec.decoding.output import GenerationOutput, StreamCallback, TextTracker
from pyspec.decoding.verifier import Verified, Verifier
from pyspec.drafters.base import Draft, Drafter
from pyspec.kv_cache import PAGE_SIZE
from pyspec.model_runner import TargetStates, pages_needed
from pyspec.models.llama import LlamaModel
from pyspec.sampling import SamplingParams
from pyspec.stats import LevelCounts, RequestStats

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


def per_prompt(sampling: SamplingParams | Sequence[SamplingParams], n: int) -> list[SamplingParams]:
    """One sampling setting per prompt: ``sampling`` for all, or a list of ``n``."""
    params = list(sampling) if isinstance(sampling, Sequence) else [sampling] * n
    if len(params) != n:
        raise ValueError(f"{len(params)} sampling settings for {n} prompts")
    return params


class RunningSequence(Protocol):
    """What the step cycle needs of a running sequence (a :class:`Request`, or an APAR stream)."""

    key: Hashable
    params: SamplingParams
    generator: torch.Generator

    @property
    def context(self) -> list[int]: ...  # the prompt and every token so far

    @property
    def budget(self) -> int: ...  # the deepest draft worth verifying (tokens left, less the bonus)

    @property
    def pinned(self) -> bool: ...  # keeps the batch-size-1 drafter whatever the load

    def emit(self, tokens: list[int], now: float) -> bool: ...  # appends; True when finished


@dataclass(eq=False)
class Request:
    """One request's state while it waits, runs, or after it has finished: its prompt, sampling
    settings and generator, token limit, text (stop strings, streaming), why and when it finished.

    Example:
        >>> r = Request.create(model, 0, [1, 2, 3], GREEDY, 8)  # doctest: +SKIP
        >>> r.emit([5, 6], time.perf_counter()), r.context  # doctest: +SKIP
        (False, [1, 2, 3, 5, 6])
    """

    key: Hashable
    prompt: list[int]
    params: SamplingParams
    limit: int  # new tokens at most
    text: TextTracker
    generator: torch.Generator
    eos: frozenset[int]
    submitted: float
    finish: str | None = None  # "eos", "stop", "length", "cancelled", "rejected"
    passes: int = 0
    first_token: float | None = None  # when its first step ended (the prompt's prefill)
    first_tokens: int = 0  # its tokens after that step
    finished: float | None = None
    preemptions: int = 0
    error: str | None = None

    @classmethod
    def create(
        cls,
        model: LlamaModel,
        key: Hashable,
        prompt: Sequence[int],
        params: SamplingParams,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        stream: StreamCallback | None = None,
        max_length: int | None = None,
        submitted: float | None = None,
    ) -> Request:
        """A request of ``prompt`` (checked token ids) for at most ``max_new_tokens`` tokens, fewer
        when ``max_length`` (default the model's context) leaves less room."""
        room = (max_length or model.config.max_position_embeddings) - len(prompt)
        r = cls(
            key,
            list(prompt),
            params,
            min(max_new_tokens, room),
            TextTracker(model.tokenizer, tuple(stop), key, stream),
            params.generator(),
            frozenset(model.config.eos_token_ids),
            time.perf_counter() if submitted is None else submitted,
        )
        if r.limit <= 0:
            r.finish, r.finished = "length", r.submitted
        return r

    @property
    def tokens(self) -> list[int]:
        return self.text.tokens

    @property
    def context(self) -> list[int]:
        return self.prompt + self.text.tokens

    @property
    def budget(self) -> int:
        return self.limit - len(self.text.tokens) - 1

    @property
    def pinned(self) -> bool:
        """A seeded sampled request: its draws depend on the drafts, so it keeps one drafter."""
        return not self.params.greedy and self.params.seed is not None

    def emit(self, tokens: list[int], now: float) -> bool:
        """Appends ``tokens`` (one step's) up to the first that ends the request; True if one did."""
        self.passes += 1
        for token in tokens:
            if self.text.add(token):
                self.finish = "stop"
            elif token in self.eos:
                self.finish = "eos"
            elif len(self.text.tokens) >= self.limit:
                self.finish = "length"
            if self.finish:
                break
        if self.first_token is None:
            self.first_token, self.first_tokens = now, len(self.text.tokens)
        if self.finish:
            self.finished = now
        return self.finish is not None

    def end(self, reason: str, now: float, error: str | None = None) -> None:
        """Ends the request from outside the step (cancelled, rejected), its tokens so far kept."""
        self.finish, self.finished, self.error = reason, now, error

    def output(self, levels: list[dict] | None = None, peak_pages: int = 0) -> GenerationOutput:
        """Its text (the rest streamed now), tokens, finish reason and :class:`RequestStats`."""
        self.text.finish()
        finished = self.finished if self.finished is not None else time.perf_counter()
        stats = RequestStats(
            prompt_tokens=len(self.prompt),
            new_tokens=len(self.text.tokens),
            target_passes=self.passes,
            seconds=finished - self.submitted,
            ttft_seconds=(self.first_token or finished) - self.submitted,
            first_tokens=self.first_tokens,
            preemptions=self.preemptions,
            error=self.error,
            levels=list(levels or []),
            peak_pages=peak_pages,
        )
        return GenerationOutput(list(self.text.tokens), self.text.text, self.finish, stats)


class DecodeCore:
    """The step cycle over a changing set of sequences: the target's :class:`Verifier`, the policy's
    drafters, and what the target's last pass left for drafters that read it.

    ``lengths``: the longest each of the sequences running at once may get (prompt and new tokens);
    they size the draft models' caches and, with a step's draft, the target's (``num_pages``
    overrides the target's).

    Example:
        >>> core = DecodeCore(target, DraftPolicy.fixed(None), [64])  # doctest: +SKIP
        >>> r = Request.create(target, 0, ids, GREEDY, 16); core.add(r.key)  # doctest: +SKIP
        >>> while not r.finish: core.step([r])  # doctest: +SKIP
    """

    def __init__(
        self,
        target: LlamaModel,
        policy: DraftPolicy,
        lengths: Sequence[int],
        num_pages: int | None = None,
    ) -> None:
        for d in policy.drafters:
            if d.vocab_size not in (None, target.config.vocab_size):
                raise ValueError(
                    f"the drafter's vocabulary has {d.vocab_size} tokens, the target's "
                    f"{target.config.vocab_size}"
                )
        self.target, self.policy = target, policy
        self.states = target_states_of(policy)
        self.step_tokens = step_tokens(policy)
        extra = self.step_tokens - 1  # the verifier's token has a slot of its context's length
        self.num_pages = num_pages or pages_needed([n + extra for n in lengths], PAGE_SIZE)
        self.verifier = Verifier(target, target.name, states=self.states)
        self.verifier.begin([], num_pages=self.num_pages)
        self.cache = self.verifier.runner.cache
        self._begun: list[Drafter] = []
        for d in policy.drafters:
            d.begin(lengths)
            self._begun.append(d)
        self.target_states: dict[Hashable, tuple[int, torch.Tensor]] = {}  # key -> (context length, states)
        self.choices: dict[str, int] = {}  # steps run per policy choice (its label)
        self.levels: dict[str, LevelCounts] = {}  # speculation per verifying level, by its name
        self._level_seen: dict[int, tuple[int, int, int]] = {}
        self.peak_pages = 0

    # Sequences -------------------------------------------------------------------------------------

    def add(self, key: Hashable) -> None:
        """A sequence joins (empty caches)."""
        self.verifier.add(key)
        for d in self.policy.drafters:
            d.add(key)

    def fork(self, parent: Hashable, child: Hashable) -> None:
        """A sequence joins with ``parent``'s target KV shared (APAR); draft caches start empty."""
        self.verifier.runner.fork(parent, child)
        for d in self.policy.drafters:
            d.add(child)

    def release(self, key: Hashable) -> None:
        """A sequence leaves: its pages in every level are freed."""
        self.verifier.release(key)
        for d in self.policy.drafters:
            d.release(key)
        self.target_states.pop(key, None)

    def end(self) -> None:
        """Frees every level's per-generation state."""
        for d in self._begun:
            d.end()
        self._begun = []
        self.verifier.end()

    # The step --------------------------------------------------------------------------------------

    def step(
        self,
        seqs: Sequence[RunningSequence],
        trim: Callable[[Draft], Draft] | None = None,
        banned: Sequence[Callable[[int], Sequence[int]]] | None = None,
        pad_inputs: bool = False,
    ) -> tuple[list[Verified], list[RunningSequence]]:
        """One propose -> verify -> emit -> release cycle for ``seqs``; returns the verification
        results (in order) and the sequences that finished (already released).

        ``trim``: applied to every draft before verification (APAR drops nodes a stream cannot
        accept); ``banned``, ``pad_inputs``: as :meth:`Verifier.step`."""
        keys = [s.key for s in seqs]
        contexts = [s.context for s in seqs]
        params, gens = [s.params for s in seqs], [s.generator for s in seqs]
        drafts = self._propose(seqs, keys, contexts, params, gens)
        if trim is not None:
            drafts = [trim(d) for d in drafts]
        label = self.policy.label(len(seqs))
        self.choices[label] = self.choices.get(label, 0) + 1
        results = self.verifier.step(
            keys, contexts, drafts, params, gens, banned=banned, pad_inputs=pad_inputs
        )
        self._count_levels(drafts, results)
        now = time.perf_counter()
        finished = []
        for s, ctx, res in zip(seqs, contexts, results, strict=True):
            if res.states is not None:  # the next context: this one, the accepted and the bonus token
                self.target_states[s.key] = (len(ctx) + len(res.tokens), res.states)
            if s.emit(res.tokens, now):
                finished.append(s)
        self.peak_pages = max(self.peak_pages, self.cache.stats()["used_pages"])  # before any release
        for s in finished:
            self.release(s.key)
        return results, finished

    def level_stats(self) -> list[dict]:
        """Per level of the batch-size-1 stack, bottom first (the target last): its passes, time and
        the acceptance of the drafts it verified (shared by the whole batch)."""
        drafter = self.policy.for_batch(1)
        below = drafter.levels() if drafter is not None else []
        return [s.as_dict() for s in below + [self.verifier.stats]]

    def _propose(self, seqs, keys, contexts, params, gens) -> list[Draft]:
        chosen = [self.policy.for_batch(1 if s.pinned else len(seqs)) for s in seqs]
        drafts = [Draft() for _ in seqs]
        for drafter in self.policy.drafters:
            rows = [i for i, d in enumerate(chosen) if d is drafter]
            if not rows:
                continue
            budgets = [seqs[i].budget for i in rows]
            pick = [[x[i] for i in rows] for x in (keys, contexts, params, gens)]
            if drafter.target_states is not None:
                states = [self.target_states.get(keys[i]) for i in rows]
                proposals = drafter.propose(*pick, budgets, target_states=states)
            else:
                proposals = drafter.propose(*pick, budgets)
            for i, draft in zip(rows, proposals, strict=True):
                drafts[i] = draft
        return drafts

    def _count_levels(self, drafts: list[Draft], results: list[Verified]) -> None:
        """Adds this step's speculation to :attr:`levels`: the target's verification from the
        results, the levels inside a hierarchy from their statistics' growth."""
        top = self.levels.setdefault(self.verifier.stats.name, LevelCounts())
        for d, res in zip(drafts, results, strict=True):
            if len(d):
                top.drafts += 1
                top.draft_tokens += len(d)
                top.accepted_tokens += res.num_accepted
        for drafter in self.policy.drafters:
            for stats in drafter.levels():
                now = (stats.verify_steps, stats.drafted, stats.accepted)
                seen = self._level_seen.get(id(stats), (0, 0, 0))
                if now != seen:
                    counts = self.levels.setdefault(stats.name, LevelCounts())
                    counts.drafts += now[0] - seen[0]
                    counts.draft_tokens += now[1] - seen[1]
                    counts.accepted_tokens += now[2] - seen[2]
                    self._level_seen[id(stats)] = now


def target_states_of(policy: DraftPolicy) -> TargetStates | None:
    """What the policy's drafters ask of the target's pass (at most one kind)."""
    wanted = {id(d.target_states): d.target_states for d in policy.drafters if d.target_states is not None}
    if len(wanted) > 1:
        raise ValueError("the drafters of one policy ask the target's pass for different states")
    return next(iter(wanted.values()), None)


def step_tokens(policy: DraftPolicy) -> int:
    """Cache slots a step may add past a sequence's context: the largest draft, the uncommitted
    pseudo nodes of hidden transfer, and the verifier's own token."""
    states = target_states_of(policy)
    return policy.max_draft + 1 + (states.scratch(policy.max_draft) if states else 0)


MARGIN = 16  # cache room past prompt + max_new_tokens


def decode_batch(
    target: LlamaModel,
    prompts: Sequence[Sequence[int]],
    drafter: Drafter | None = None,
    max_new_tokens: int = 128,
    sampling: SamplingParams | Sequence[SamplingParams] = GREEDY,
    stop_strings: Sequence[str] = (),
    stream: StreamCallback | None = None,
) -> list[GenerationOutput]:
    """Decodes every prompt (token ids) together, each sequence at its own length, with ``drafter``
    proposing (None: plain decoding) and ``target`` verifying; finished sequences leave the batch.
    What :func:`generate_autoregressive` and :func:`generate_speculative` run."""
    check_prompts(target, prompts, max_new_tokens)
    params = per_prompt(sampling, len(prompts))
    start = time.perf_counter()
    requests = [
        Request.create(target, i, p, params[i], max_new_tokens, stop_strings, stream, submitted=start)
        for i, p in enumerate(prompts)
    ]
    core = DecodeCore(
        target, DraftPolicy.fixed(drafter), [len(r.prompt) + r.limit + MARGIN for r in requests]
    )
    active = [r for r in requests if r.finish is None]
    try:
        for r in active:
            core.add(r.key)
        while active:
            _, finished = core.step(active)
            active = [r for r in active if r not in finished]
    finally:
        core.end()
    levels = core.level_stats() if drafter is not None else []
    return [r.output(levels, core.peak_pages) for r in requests]
