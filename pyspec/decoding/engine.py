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

from pyspec.decoding.core import GREEDY, DecodeCore, Request, check_prompts, step_tokens
from pyspec.decoding.draft_policy import DraftPolicy
from pyspec.decoding.output import GenerationOutput, StreamCallback
from pyspec.drafters.base import Drafter
from pyspec.kv_cache import PAGE_SIZE
from pyspec.model_runner import pages_needed
from pyspec.models.llama import LlamaModel
from pyspec.prompts import check_text, encode_prompts
from pyspec.sampling import SamplingParams
from pyspec.stats import LevelCounts

PADDING = ("none", "inputs", "kv", "both")


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
        self.target, self.padding, self.when_full = target, padding, when_full
        self.max_batch, self.max_length = max_batch, min(max_length, target.config.max_position_embeddings)
        # draft caches: always room for max_batch sequences of max_length and a draft
        self.step_tokens = step_tokens(self.policy)  # cache slots a step may add past a context
        num_pages = num_pages or pages_needed([self.max_length + self.step_tokens] * max_batch, PAGE_SIZE)
        room = self.max_length + self.policy.max_draft + 1
        self.core = DecodeCore(target, self.policy, [room] * max_batch, num_pages)
        self.num_pages, self.cache = self.core.num_pages, self.core.cache
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.done: dict[int, Request] = {}
        self._holes: dict[int, int] = {}  # request -> the cache sequence of its padding KV ("kv" padding)
        self._next_id = 0
        self.stats = {"steps": 0, "peak_pages": 0, "preemptions": 0, "rejected": 0, "padding_tokens": 0}

    @property
    def choices(self) -> dict[str, int]:
        """Steps run per policy choice (its label)."""
        return self.core.choices

    @property
    def levels(self) -> dict[str, LevelCounts]:
        """Speculation per verifying level, by its name (vLLM's ``spec_decode`` counts)."""
        return self.core.levels

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
        if self._pages(len(prompt) + max_new_tokens + self.step_tokens) > self.num_pages:
            raise ValueError(
                f"a request of {len(prompt)} + {max_new_tokens} tokens needs more than the whole KV pool "
                f"({self.num_pages} pages of {PAGE_SIZE})"
            )
        self._next_id += 1
        request = Request.create(
            self.target, self._next_id, prompt, sampling, max_new_tokens, stop, stream, self.max_length
        )
        if request.finish is not None:  # no room for a new token
            self.done[request.key] = request
        else:
            self.waiting.append(request)
        return request.key

    def run(self) -> dict[int, GenerationOutput]:
        """Steps until every submitted request has finished; returns all finished outputs by id."""
        while self.waiting or self.running:
            self.step()
        return self.outputs()

    def outputs(self) -> dict[int, GenerationOutput]:
        """Finished requests so far, by id, with their statistics (:class:`~pyspec.stats.RequestStats`:
        new tokens, target passes, MAT, seconds from submission to finish, time to first token,
        pre-emptions, and ``error`` if rejected)."""
        return {rid: r.output() for rid, r in sorted(self.done.items())}

    def pop(self, rid: int) -> GenerationOutput:
        """A finished request's output, forgotten by the engine (a server's memory stays flat)."""
        return self.done.pop(rid).output()

    def cancel(self, rid: int) -> bool:
        """Ends a waiting or running request now (``finish_reason="cancelled"``, its tokens so far
        kept) and frees its pages; False if it already finished or is unknown."""
        r = next((x for x in [*self.running, *self.waiting] if x.key == rid), None)
        if r is None:
            return False
        if r in self.running:
            self._drop(r)
        else:
            self.waiting.remove(r)
        r.end("cancelled", time.perf_counter())
        self.done[r.key] = r
        return True

    def expire(self, max_wait_seconds: float) -> list[int]:
        """Rejects the requests that have waited longer than ``max_wait_seconds`` without ever
        running (the batch or the KV pool was full), with the reason in ``stats.error``; returns
        their ids. Pre-empted requests keep their place: they have started."""
        now, expired = time.perf_counter(), []
        for r in list(self.waiting):
            if r.first_token is None and now - r.submitted > max_wait_seconds:
                self.waiting.remove(r)
                r.end(
                    "rejected",
                    now,
                    f"waited {now - r.submitted:.1f} s for room ({len(self.running)} running of at "
                    f"most {self.max_batch}, {self.cache.stats()['free_pages']} of {self.num_pages} "
                    "KV pages free)",
                )
                self.stats["rejected"] += 1
                self.done[r.key] = r
                expired.append(r.key)
        return expired

    # One step --------------------------------------------------------------------------------------

    def step(self) -> list[int]:
        """Admits waiting requests, runs one draft-and-verify step for every running sequence, and
        returns the ids of the requests that finished in it."""
        self._admit()
        if not self.running:
            return []
        self._make_room()
        batch = list(self.running)
        padding = self.core.verifier.stats.padding
        results, finished = self.core.step(batch, pad_inputs=self.padding in ("inputs", "both"))
        self.stats["padding_tokens"] += self.core.verifier.stats.padding - padding
        self.stats["steps"] += 1
        if self.padding in ("kv", "both"):
            longest = max(len(res.tokens) for res in results)
            for r, res in zip(batch, results, strict=True):
                if r.finish is None:
                    self._pad_kv(r, longest - len(res.tokens))
        for r in finished:
            self._retire(r)
        self.stats["peak_pages"] = max(self.stats["peak_pages"], self.cache.stats()["used_pages"])
        return [r.key for r in finished]

    # Internals -------------------------------------------------------------------------------------

    def _pages(self, tokens: int) -> int:
        return -(-tokens // PAGE_SIZE)

    def _step_pages(self, r: Request) -> int:
        """Pages ``r`` may need beyond what it holds for one more step: its context, the largest
        draft (padding included) and a spare for the verifier's token."""
        held = self._pages(self.core.verifier.runner.cache_length(r.key))
        return max(0, self._pages(len(r.context) + self.step_tokens) - held) + 1

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.max_batch:
            r = self.waiting[0]
            growth = sum(self._step_pages(x) for x in self.running)
            need = self._pages(len(r.context) + self.step_tokens) + 1
            if self.running and self.cache.stats()["free_pages"] < growth + need:
                return  # wait for pages to free up
            self.waiting.popleft()
            self.core.add(r.key)
            self.running.append(r)

    def _make_room(self) -> None:
        """Pre-empts or rejects the most recently admitted sequences until the step fits the pool."""
        while self.cache.stats()["free_pages"] < sum(self._step_pages(r) for r in self.running):
            r = self.running[-1]
            if len(self.running) == 1:  # alone, it fits by construction but for its padding slots
                self._release_holes(r)
                return
            self._drop(r)
            if self.when_full == "preempt":
                r.preemptions += 1
                self.stats["preemptions"] += 1
                self.waiting.appendleft(r)
            else:
                r.end(
                    "rejected",
                    time.perf_counter(),
                    f"KV cache out of pages: {self.num_pages} pages of {PAGE_SIZE} cannot hold the "
                    f"{len(self.running) + 1} running sequences' next step",
                )
                self.stats["rejected"] += 1
                self.done[r.key] = r

    def _pad_kv(self, r: Request, slots: int) -> None:
        """Holds ``slots`` more padding KV slots for ``r`` (aligned to the longest acceptance)."""
        if slots <= 0:
            return
        holes = self._holes.get(r.key)
        if holes is None:
            holes = self._holes[r.key] = self.cache.add_sequence()
        free = self.cache.stats()["free_pages"]
        length = self.cache.length(holes)
        if self._pages(length + slots) - self._pages(length) > free:
            return  # a padded cache would be full here; the run measures the pages it could hold
        self.cache.reserve(holes, slots)
        self.cache.commit(holes, slots)

    def _release_holes(self, r: Request) -> None:
        holes = self._holes.pop(r.key, None)
        if holes is not None:
            self.cache.release(holes)

    def _drop(self, r: Request) -> None:
        """Frees everything a running ``r`` holds and takes it out of the batch."""
        self.running.remove(r)
        self.core.release(r.key)
        self._release_holes(r)

    def _retire(self, r: Request) -> None:
        """``r`` finished in the step (the core released its caches)."""
        self.running.remove(r)
        self._release_holes(r)
        self.done[r.key] = r
