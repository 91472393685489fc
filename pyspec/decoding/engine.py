"""A continuous-batching engine for speculative decoding without padding (EMS-SD, docs/papers.md §4).

Requests join and leave between steps. Each step, every running sequence drafts (n-gram, draft
models, a hierarchy, or nothing: plain decoding), the target verifies all drafts in one pass over
the sequences' new tokens concatenated (no input padding), each sequence accepts its own number of
tokens and its KV cache grows by exactly that (no KV padding).

For measuring what padding costs, ``padding`` switches on what padded batched decoding does:

- ``"inputs"``: every sequence's draft is padded to the longest in the batch for the target's
  verification pass (the padding runs through every layer and the LM head, then is discarded);
- ``"kv"``: after each step every sequence is aligned to the longest acceptance: the others hold
  padding KV slots (masked in a real padded cache) until they finish. Emulated for memory: the slots
  take pages of the same pool, so peak KV and running out of pages are real, but attention over
  them (which a rectangular cache computes and masks) is not run, so this understates its time;
- ``"both"``: the padded baseline; ``"none"``: EMS-SD.

Outputs never depend on the batch: each sequence's tokens equal its single-sequence output (greedy
and seeded sampling alike; the kernels are row-invariant and every request has its own generator).

When the target's KV pool cannot hold the next step, ``when_full="preempt"`` moves the most
recently admitted sequence back to the queue (its tokens kept; it resumes later by recomputing its
KV, with the same output) and ``"reject"`` ends it with ``finish_reason="rejected"`` and the reason
in its stats. New requests wait until their prompt fits; :meth:`BatchEngine.expire` rejects those
that waited too long, :meth:`BatchEngine.cancel` ends a request at once and frees its pages.

The drafter can be a :class:`~pyspec.decoding.draft_policy.DraftPolicy`: each step runs the choice
for the number of running sequences (a plan's per-batch-size choice: speculation at low load, plain
decoding at high load). A seeded sampled request always runs the batch-size-1 choice, so that its
draws, which depend on the drafts, equal its single-request output at any load; greedy tokens never
depend on the drafts.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pyspec.decoding.autoregressive import GREEDY, check_prompts
from pyspec.decoding.draft_policy import DraftPolicy
from pyspec.decoding.output import GenerationOutput, StreamCallback, TextTracker, add_token
from pyspec.decoding.verifier import Verifier
from pyspec.drafters.base import Draft, Drafter
from pyspec.model_runner import pages_needed
from pyspec.models.llama import LlamaModel
from pyspec.prompts import check_text, encode_prompts
from pyspec.sampling import SamplingParams

PADDING = ("none", "inputs", "kv", "both")
PAGE_SIZE = 16


@dataclass
class _Request:
    """A request's state while it waits, runs or after it finished."""

    id: int
    prompt: list[int]
    params: SamplingParams
    limit: int  # new tokens at most
    text: TextTracker
    generator: torch.Generator
    submitted: float
    finish: str | None = None
    passes: int = 0
    first_token: float | None = None
    finished: float | None = None
    holes: int | None = None  # the cache sequence holding its padding KV slots ("kv" padding)
    preemptions: int = 0
    error: str | None = None

    @property
    def context(self) -> list[int]:
        return self.prompt + self.text.tokens

    @property
    def pinned(self) -> bool:
        """A seeded sampled request: its draws depend on the drafts, so it keeps one drafter."""
        return not self.params.greedy and self.params.seed is not None


@dataclass
class LevelCounts:
    """Speculation at one verifying level, summed over steps and sequences (vLLM's ``spec_decode``):
    verifications of a non-empty draft, draft tokens proposed to it, and how many it accepted."""

    drafts: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0

    @property
    def mean_accepted_per_pass(self) -> float:
        """Tokens emitted per verification of a draft: accepted ones plus the verifier's own."""
        return 1 + self.accepted_tokens / self.drafts if self.drafts else 0.0


class BatchEngine:
    """Serves requests with continuous batching; see the module docstring.

    Example:
        >>> engine = BatchEngine(target, build_stack(target, ["ngram"], [4]), max_batch=8)  # doctest: +SKIP
        >>> ids = [engine.submit(p, max_new_tokens=64) for p in prompts]  # doctest: +SKIP
        >>> outputs = engine.run()  # {request id: GenerationOutput}  # doctest: +SKIP
    """

    def __init__(
        self,
        target: LlamaModel,
        drafter: Drafter | DraftPolicy | None = None,
        max_batch: int = 8,
        max_length: int = 2048,
        num_pages: int | None = None,
        padding: str = "none",
        when_full: str = "preempt",
    ) -> None:
        if padding not in PADDING:
            raise ValueError(f"padding must be one of {PADDING}, got {padding!r}")
        if when_full not in ("preempt", "reject"):
            raise ValueError(f"when_full must be 'preempt' or 'reject', got {when_full!r}")
        if max_batch < 1 or max_length < 2:
            raise ValueError("max_batch must be >= 1 and max_length >= 2")
        self.policy = drafter if isinstance(drafter, DraftPolicy) else DraftPolicy.fixed(drafter)
        for d in self.policy.drafters:
            if d.vocab_size not in (None, target.config.vocab_size):
                raise ValueError(
                    f"the drafter's vocabulary has {d.vocab_size} tokens, the target's "
                    f"{target.config.vocab_size}"
                )
        self.target, self.padding, self.when_full = target, padding, when_full
        self.max_batch, self.max_length = max_batch, min(max_length, target.config.max_position_embeddings)
        self.max_draft = self.policy.max_draft
        room = self.max_length + self.max_draft + 1
        self.num_pages = num_pages or pages_needed([room] * max_batch, PAGE_SIZE)
        self.verifier = Verifier(target, getattr(target, "name", "target"))
        self.verifier.begin([], num_pages=self.num_pages)
        for d in self.policy.drafters:
            d.begin([room] * max_batch)  # draft caches: always room for max_batch sequences
        self.cache = self.verifier.runner.cache
        self.eos = set(target.config.eos_token_ids)
        self.waiting: deque[_Request] = deque()
        self.running: list[_Request] = []
        self.done: dict[int, _Request] = {}
        self._next_id = 0
        self.stats = {"steps": 0, "peak_pages": 0, "preemptions": 0, "rejected": 0, "padding_tokens": 0}
        self.choices: dict[str, int] = {}  # steps run per policy choice (its label)
        self.levels: dict[str, LevelCounts] = {}  # speculation per verifying level, by its name
        self._level_seen: dict[int, tuple[int, int, int]] = {}

    # Requests --------------------------------------------------------------------------------------

    def submit(
        self,
        prompt: Sequence[int] | str,
        sampling: SamplingParams = GREEDY,
        max_new_tokens: int = 128,
        stop: Sequence[str] = (),
        stream: StreamCallback | None = None,
    ) -> int:
        """Queues a request and returns its id; it joins the batch at a later step. ``prompt``: token
        ids, or a text (a user turn in the chat template, as :func:`pyspec.generate` encodes it).
        ``stream(id, text)`` receives its new text as steps produce it (the rest when it finishes).
        Bad input (an empty prompt, invalid Unicode, ids outside the vocabulary, no room in the
        context or the KV pool) raises ValueError and queues nothing.

        Example:
            >>> engine = BatchEngine(model, drafter=None)  # doctest: +SKIP
            >>> rid = engine.submit("Name three rivers.", max_new_tokens=32)  # doctest: +SKIP
            >>> engine.run()[rid].text  # doctest: +SKIP
        """
        if isinstance(prompt, str):
            prompt = encode_prompts(self.target, prompt)[0]
        for j, s in enumerate(stop):
            check_text(s, f"stop string {j}")
        check_prompts(self.target, [prompt], max_new_tokens)
        if len(prompt) + 1 > self.max_length:
            raise ValueError(f"the prompt has {len(prompt)} tokens but max_length is {self.max_length}")
        if self._pages(len(prompt) + max_new_tokens + self.max_draft + 1) > self.num_pages:
            raise ValueError(
                f"a request of {len(prompt)} + {max_new_tokens} tokens needs more than the whole KV pool "
                f"({self.num_pages} pages of {PAGE_SIZE})"
            )
        self._next_id += 1
        request = _Request(
            self._next_id,
            list(prompt),
            sampling,
            min(max_new_tokens, self.max_length - len(prompt)),
            TextTracker(self.target.tokenizer, tuple(stop), self._next_id, stream),
            sampling.generator(),
            time.perf_counter(),
        )
        if request.limit == 0:
            request.finish, request.finished = "length", request.submitted
            self.done[request.id] = request
        else:
            self.waiting.append(request)
        return request.id

    def run(self) -> dict[int, GenerationOutput]:
        """Steps until every submitted request has finished; returns all finished outputs by id."""
        while self.waiting or self.running:
            self.step()
        return self.outputs()

    def outputs(self) -> dict[int, GenerationOutput]:
        """Finished requests so far, by id, with their statistics: new tokens, target passes, MAT,
        latency (submission to finish), time to first token, preemptions, and ``error`` if rejected."""
        return {rid: self._output(r) for rid, r in sorted(self.done.items())}

    def pop(self, rid: int) -> GenerationOutput:
        """A finished request's output, forgotten by the engine (a server's memory stays flat)."""
        return self._output(self.done.pop(rid))

    def cancel(self, rid: int) -> bool:
        """Ends a waiting or running request now (``finish_reason="cancelled"``, its tokens so far
        kept) and frees its pages; False if it already finished or is unknown."""
        r = next((x for x in [*self.running, *self.waiting] if x.id == rid), None)
        if r is None:
            return False
        if r in self.running:
            self._drop(r)
        else:
            self.waiting.remove(r)
        r.finish, r.finished = "cancelled", time.perf_counter()
        self.done[r.id] = r
        return True

    def expire(self, max_wait_seconds: float) -> list[int]:
        """Rejects the requests that have waited longer than ``max_wait_seconds`` without ever
        running (the batch or the KV pool was full), with the reason in ``stats["error"]``; returns
        their ids. Pre-empted requests keep their place: they have started."""
        now, expired = time.perf_counter(), []
        for r in list(self.waiting):
            if r.first_token is None and now - r.submitted > max_wait_seconds:
                self.waiting.remove(r)
                r.finish, r.finished = "rejected", now
                r.error = (
                    f"waited {now - r.submitted:.1f} s for room ({len(self.running)} running of at most "
                    f"{self.max_batch}, {self.cache.stats()['free_pages']} of {self.num_pages} KV pages free)"
                )
                self.stats["rejected"] += 1
                self.done[r.id] = r
                expired.append(r.id)
        return expired

    def _output(self, r: _Request) -> GenerationOutput:
        n = len(r.text.tokens)
        stats = {
            "prompt_tokens": len(r.prompt),
            "new_tokens": n,
            "target_passes": r.passes,
            "mat": n / r.passes if r.passes else 0.0,
            "latency_seconds": r.finished - r.submitted,
            "ttft_seconds": (r.first_token or r.finished) - r.submitted,
            "preemptions": r.preemptions,
        }
        if r.error:
            stats["error"] = r.error
        r.text.finish()
        return GenerationOutput(list(r.text.tokens), r.text.text, r.finish, stats)

    # One step --------------------------------------------------------------------------------------

    def step(self) -> list[int]:
        """Admits waiting requests, runs one draft-and-verify step for every running sequence, and
        returns the ids of the requests that finished in it."""
        self._admit()
        if not self.running:
            return []
        self._make_room()
        batch = list(self.running)
        keys = [r.id for r in batch]
        contexts = [r.context for r in batch]
        params, gens = [r.params for r in batch], [r.generator for r in batch]
        budgets = [r.limit - len(r.text.tokens) - 1 for r in batch]
        chosen = [self.policy.for_batch(1 if r.pinned else len(batch)) for r in batch]
        drafts = [Draft() for _ in batch]
        for drafter in self.policy.drafters:
            rows = [i for i, d in enumerate(chosen) if d is drafter]
            if rows:
                pick = [[x[i] for i in rows] for x in (keys, contexts, params, gens, budgets)]
                for i, draft in zip(rows, drafter.propose(*pick), strict=True):
                    drafts[i] = draft
        label = self.policy.label(len(batch))
        self.choices[label] = self.choices.get(label, 0) + 1
        padding = self.verifier.stats.padding
        results = self.verifier.step(
            keys, contexts, drafts, params, gens, pad_inputs=self.padding in ("inputs", "both")
        )
        self.stats["padding_tokens"] += self.verifier.stats.padding - padding
        self.stats["steps"] += 1
        self._count_levels(drafts, results)
        now = time.perf_counter()
        longest = max(len(res.tokens) for res in results)
        finished = []
        for r, res in zip(batch, results, strict=True):
            r.passes += 1
            for token in res.tokens:
                r.finish = add_token(r.text, token, self.eos, r.limit)
                if r.finish is not None:
                    break
            r.first_token = r.first_token or now
            if self.padding in ("kv", "both") and r.finish is None:
                self._pad_kv(r, longest - len(res.tokens))
            if r.finish is not None:
                finished.append(r.id)
                self._retire(r, now)
        self._note_pages()
        return finished

    # Internals -------------------------------------------------------------------------------------

    def _pages(self, tokens: int) -> int:
        return -(-tokens // PAGE_SIZE)

    def _count_levels(self, drafts: list[Draft], results: list) -> None:
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

    def _step_pages(self, r: _Request) -> int:
        """Pages ``r`` may need beyond what it holds for one more step: its context, the largest
        draft (padding included) and a spare for the verifier's token."""
        held = self._pages(self.verifier.runner.cache_length(r.id))
        return max(0, self._pages(len(r.context) + self.max_draft + 1) - held) + 1

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.max_batch:
            r = self.waiting[0]
            growth = sum(self._step_pages(x) for x in self.running)
            need = self._pages(len(r.context) + self.max_draft + 1) + 1
            if self.running and self.cache.stats()["free_pages"] < growth + need:
                return  # wait for pages to free up
            self.waiting.popleft()
            self.verifier.add(r.id)
            for d in self.policy.drafters:
                d.add(r.id)
            self.running.append(r)

    def _make_room(self) -> None:
        """Pre-empts or rejects the most recently admitted sequences until the step fits the pool."""
        while self.cache.stats()["free_pages"] < sum(self._step_pages(r) for r in self.running):
            r = self.running[-1]
            if len(self.running) == 1:  # alone, it fits by construction but for its padding slots
                if r.holes is not None:
                    self.cache.release(r.holes)
                    r.holes = None
                return
            self._drop(r)
            if self.when_full == "preempt":
                r.preemptions += 1
                self.stats["preemptions"] += 1
                self.waiting.appendleft(r)
            else:
                r.finish = "rejected"
                r.error = (
                    f"KV cache out of pages: {self.num_pages} pages of {PAGE_SIZE} cannot hold the "
                    f"{len(self.running) + 1} running sequences' next step"
                )
                self.stats["rejected"] += 1
                r.finished = time.perf_counter()
                self.done[r.id] = r

    def _pad_kv(self, r: _Request, slots: int) -> None:
        """Holds ``slots`` more padding KV slots for ``r`` (aligned to the longest acceptance)."""
        if slots <= 0:
            return
        if r.holes is None:
            r.holes = self.cache.add_sequence()
        free = self.cache.stats()["free_pages"]
        length = self.cache.length(r.holes)
        if self._pages(length + slots) - self._pages(length) > free:
            return  # a padded cache would be full here; the run measures the pages it could hold
        self.cache.reserve(r.holes, slots)
        self.cache.commit(r.holes, slots)

    def _drop(self, r: _Request) -> None:
        """Frees everything ``r`` holds and takes it out of the batch."""
        self.running.remove(r)
        self.verifier.release(r.id)
        for d in self.policy.drafters:
            d.release(r.id)
        if r.holes is not None:
            self.cache.release(r.holes)
            r.holes = None

    def _retire(self, r: _Request, now: float) -> None:
        self._drop(r)
        r.finished = now
        self.done[r.id] = r

    def _note_pages(self) -> None:
        used = self.cache.stats()["used_pages"]
        self.stats["peak_pages"] = max(self.stats["peak_pages"], used)
