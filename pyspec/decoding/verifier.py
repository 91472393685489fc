"""A model verifying the drafts of the level below: one forward pass over every sequence's tree, then
the exact acceptance rules of :mod:`pyspec.verify`, then KV compaction to the accepted path."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from pyspec.drafters.base import Draft
from pyspec.kv_cache import PAGE_SIZE
from pyspec.model_runner import ModelRunner, TargetStates, pages_needed
from pyspec.models.llama import LlamaModel
from pyspec.sampling import SamplingParams, probabilities
from pyspec.stats import LevelStats
from pyspec.verify import PAD, Verdict, verify_greedy, verify_sampled


@dataclass
class Verified:
    """One sequence's result of a verification step."""

    tokens: list[int]  # accepted draft tokens, then the recovered or bonus token
    num_accepted: int
    probs: torch.Tensor | None  # [len(tokens), vocab]: the verifier's distribution at each (sampling only)
    alternatives: list[list[int]] | None = None  # per emitted token, the verifier's next-ranked tokens there
    states: torch.Tensor | None = None  # the TargetStates asked for, at the row that drew the last token


class Verifier:
    """Runs ``model`` as the verifier of a level: call :meth:`begin`, :meth:`add` each sequence, then
    :meth:`step` once per verification. ``states``: what the drafter of the level below asks of this
    pass (:class:`~pyspec.model_runner.TargetStates`); each result then holds them at the row that
    drew its last token, the drafter's input for the next step."""

    def __init__(
        self, model: LlamaModel, name: str | None = None, states: TargetStates | None = None
    ) -> None:
        self.model, self.states = model, states
        self.stats = LevelStats(name or model.name)
        self.runner: ModelRunner | None = None

    def begin(self, max_lengths: Sequence[int], num_pages: int | None = None) -> None:
        """Starts a generation: a cache of ``num_pages`` pages (default: enough for sequences of
        ``max_lengths`` tokens)."""
        self.stats = LevelStats(self.stats.name)
        pages = num_pages or pages_needed(max_lengths, PAGE_SIZE)
        self.runner = ModelRunner(self.model, pages, PAGE_SIZE, states=self.states)

    def add(self, key: Hashable) -> None:
        self.runner.add(key)

    def release(self, key: Hashable) -> None:
        self.runner.release(key)

    def end(self) -> None:
        self.runner = None

    def step(
        self,
        keys: Sequence[Hashable],
        contexts: Sequence[Sequence[int]],
        drafts: Sequence[Draft],
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator],
        alternatives: int = 0,
        pad_inputs: bool = False,
        banned: Sequence[Callable[[int], Sequence[int]]] | None = None,
    ) -> list[Verified]:
        """Scores every sequence's context tail and draft tree in one pass and keeps what is accepted.

        ``alternatives``: also return, per emitted token, this many other tokens ranked highest by the
        verifier at that position (for a level that proposes a tree to the level above).
        ``pad_inputs``: pad every draft to the longest in the batch (padding appended after the tree,
        run through every layer and the LM head, then discarded), as batched decoding with rectangular
        inputs and logits does; for measuring what padding costs (:mod:`pyspec.decoding.engine`).
        Results are the same.
        ``banned``: per sequence, a function from the token before a scored position to the token ids
        that position may not produce (their logits become -inf before acceptance, so the verified
        distribution is the banned one; APAR's control-token rules)."""
        start = time.perf_counter()
        feeds, trees, rows, pending = [], [], [], []
        for key, ctx, d in zip(keys, contexts, drafts, strict=True):
            tail = self.runner.sync(key, ctx)
            m, n = len(tail), len(d)
            feeds.append(tail + d.tokens)
            pending.append(m)
            if d.parents == list(range(-1, n - 1)):
                trees.append(None)  # a chain continues the context: causal attention
            else:
                trees.append(
                    torch.tensor(list(range(-1, m - 1)) + [m - 1 if p < 0 else m + p for p in d.parents])
                )
            rows.append([m - 1] + [m + i for i in range(n)])
        if pad_inputs:  # every draft padded to the longest in the batch
            width = max(len(d) for d in drafts)
            for b, (f, d) in enumerate(zip(feeds, drafts, strict=True)):
                pad = width - len(d)
                self.stats.padding += pad
                if pad and trees[b] is not None:  # padding continues as a chain after the last node
                    trees[b] = torch.cat([trees[b], torch.arange(len(f) - 1, len(f) + pad - 1)])
                f.extend([f[-1]] * pad)
                rows[b].extend(range(len(f) - pad, len(f)))
        logits, states = self.runner.score(
            keys, feeds, trees, rows
        )  # per sequence [n + 1 (+ padding), vocab]
        logits = [x[: len(d) + 1] for x, d in zip(logits, drafts, strict=True)]
        if banned is not None:
            logits = [x.clone() for x in logits]  # the runner's are inference tensors
            for x, ctx, d, ban in zip(logits, contexts, drafts, banned, strict=True):
                for row, before in enumerate([ctx[-1], *d.tokens]):
                    x[row, list(ban(before))] = float("-inf")

        N = max(len(d) for d in drafts)
        tokens = torch.zeros(len(keys), N, dtype=torch.long)
        parents = torch.full((len(keys), N), PAD, dtype=torch.long)
        for b, d in enumerate(drafts):
            tokens[b, : len(d)] = torch.tensor(d.tokens, dtype=torch.long)
            parents[b, : len(d)] = torch.tensor(d.parents, dtype=torch.long)
        greedy = [b for b in range(len(keys)) if params[b].greedy]
        sampled = [b for b in range(len(keys)) if not params[b].greedy]
        paths: dict[int, list[int]] = {}
        results: dict[int, Verified] = {}
        if greedy:
            argmax = torch.zeros(len(greedy), N + 1, dtype=torch.long)
            for i, b in enumerate(greedy):
                argmax[i, : len(drafts[b]) + 1] = logits[b].argmax(-1)
            verdict = verify_greedy(argmax, tokens[greedy], parents[greedy])
            for i, b in enumerate(greedy):
                paths[b] = verdict.accepted(i)
                results[b] = self._result(drafts[b], paths[b], verdict, i, None)
        if sampled:
            vocab = logits[sampled[0]].shape[1]
            target = torch.zeros(len(sampled), N + 1, vocab)
            draft_q = (
                torch.zeros(len(sampled), N, vocab) if any(drafts[b].q is not None for b in sampled) else None
            )
            uniforms = torch.zeros(len(sampled), N + 1)
            for i, b in enumerate(sampled):
                n = len(drafts[b])
                target[i, : n + 1] = probabilities(logits[b], params[b])
                if draft_q is not None and n:
                    q = drafts[b].q
                    draft_q[i, :n] = q if q is not None else torch.nn.functional.one_hot(tokens[b, :n], vocab)
                u = torch.rand(n + 1, generator=generators[b])
                uniforms[i, :n], uniforms[i, N] = u[:n], u[n]
            verdict = verify_sampled(target, tokens[sampled], parents[sampled], draft_q, uniforms)
            for i, b in enumerate(sampled):
                paths[b] = verdict.accepted(i)
                rows_before = [0] + [node + 1 for node in paths[b]]  # the row each emitted token was drawn at
                results[b] = self._result(drafts[b], paths[b], verdict, i, target[i, rows_before])

        if alternatives:
            for b, res in results.items():
                rows_before = [0] + [node + 1 for node in paths[b]]
                ranked = logits[b][rows_before].topk(alternatives + 1, dim=-1).indices.tolist()
                res.alternatives = [
                    [t for t in r if t != tok][:alternatives]
                    for r, tok in zip(ranked, res.tokens, strict=True)
                ]
        if states is not None:
            for b, res in results.items():
                res.states = states[b][paths[b][-1] + 1 if paths[b] else 0]
        self.runner.keep(keys, [list(range(m)) + [m + v for v in paths[b]] for b, m in enumerate(pending)])
        for b, d in enumerate(drafts):
            self.stats.record(len(d), results[b].num_accepted)
        self.stats.passes += 1
        self.stats.seconds += time.perf_counter() - start
        return [results[b] for b in range(len(keys))]

    @staticmethod
    def _result(
        draft: Draft, path: list[int], verdict: Verdict, i: int, probs: torch.Tensor | None
    ) -> Verified:
        tokens = [draft.tokens[v] for v in path] + [int(verdict.next_token[i])]
        return Verified(tokens, len(path), probs)
