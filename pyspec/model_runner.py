"""A model with its own paged KV cache during one generation, kept in step with each sequence's tokens.

Every model of a speculative stack (target, draft models, levels of a hierarchy) owns one runner.
The runner remembers which tokens of each sequence have committed KV. Before a pass,
:meth:`ModelRunner.sync` rolls the cache back to the longest prefix it shares with the sequence's
current context (what a verifier rejected disappears) and returns the tokens still to feed; after a
pass, :meth:`ModelRunner.keep` commits the new tokens that were kept and compacts them in place
(:func:`pyspec.ops.kv_compact`) when they are a tree path rather than a prefix.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from pyspec import ops
from pyspec.batch import StepBatch
from pyspec.kv_cache import PAGE_SIZE
from pyspec.models.llama import LlamaModel


@dataclass(frozen=True, eq=False)
class TargetStates:
    """What a drafter asks of the pass that verifies its drafts (vLLM's ``target_hidden_states``):
    per scored row, the states it drafts the next step from. One object per drafter: compared by
    identity.

    Without ``transfer``: the row's final normalised hidden state ``[hidden]`` (Medusa heads read it).
    With ``transfer`` (hidden transfer, docs/papers.md §1): after ``layer`` layers, ``transfer`` maps
    the scored rows' states ``[R, hidden]`` to ``num_future`` pseudo states each ``[R, k, hidden]``;
    they join the rest of the pass as a chain of nodes below their row in the tree mask (attending to
    the context, the row's ancestors and each other; nothing attends to them), and the row's states
    are their final normalised states ``[k, hidden]``. Pseudo nodes sit after the real ones and are
    never kept, so their KV is never committed and the real rows' logits are those of a pass without
    them.
    """

    transfer: Callable[[torch.Tensor], torch.Tensor] | None = None
    layer: int = -1
    num_future: int = 0

    def scratch(self, max_draft: int) -> int:
        """KV slots per sequence the pseudo nodes of a pass over ``max_draft`` draft tokens take."""
        return self.num_future * (max_draft + 1) if self.transfer is not None else 0


class ModelRunner:
    """Runs ``model`` over ragged batches of chains and trees with one cache for all sequences.

    Example (random weights, for shapes only):
        >>> from pyspec.models.config import ModelConfig
        >>> cfg = ModelConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
        ...                   intermediate_size=32)
        >>> runner = ModelRunner(LlamaModel(cfg), num_pages=8, page_size=4)
        >>> runner.add("a")
        >>> runner.sync("a", [1, 2, 3])  # nothing cached yet
        [1, 2, 3]
        >>> [logits.shape for logits in runner.run(["a"], [[1, 2, 3]], [None], [[2]])]
        [torch.Size([1, 32])]
        >>> runner.keep(["a"], [[0, 1, 2]])
        >>> runner.sync("a", [1, 2, 3, 4])  # 1, 2, 3 are cached
        [4]
        >>> runner.sync("a", [1, 9, 5])  # rolls back to [1]
        [9, 5]
    """

    def __init__(
        self,
        model: LlamaModel,
        num_pages: int,
        page_size: int = PAGE_SIZE,
        states: TargetStates | None = None,
    ) -> None:
        if (
            states is not None
            and states.transfer is not None
            and not 1 <= states.layer < model.config.num_layers
        ):
            raise ValueError(
                f"hidden transfer at layer {states.layer} for a model of {model.config.num_layers}"
            )
        self.model, self.states = model, states
        self.cache = model.new_cache(num_pages=num_pages, page_size=page_size)
        self._seq: dict[Hashable, int] = {}
        self._cached: dict[Hashable, list[int]] = {}  # tokens whose KV is committed
        self._fed: dict[Hashable, list[int]] = {}  # new tokens of the last run
        self.passes = 0
        self.seconds = 0.0

    def add(self, key: Hashable) -> None:
        """Starts tracking a sequence (empty cache)."""
        if key in self._seq:
            raise KeyError(f"sequence {key!r} is already running")
        self._seq[key] = self.cache.add_sequence()
        self._cached[key] = []

    def fork(self, parent: Hashable, child: Hashable) -> None:
        """Starts ``child`` with ``parent``'s committed KV: pages shared, not copied; the first write
        into a shared, partly filled page copies it (APAR, :mod:`pyspec.decoding.apar`)."""
        if child in self._seq:
            raise KeyError(f"sequence {child!r} is already running")
        self._seq[child] = self.cache.fork(self._seq[parent])
        self._cached[child] = list(self._cached[parent])

    def release(self, key: Hashable) -> None:
        """Frees a finished sequence's pages."""
        self.cache.release(self._seq.pop(key))
        del self._cached[key]
        self._fed.pop(key, None)

    def cache_length(self, key: Hashable) -> int:
        """Tokens of sequence ``key`` with committed KV."""
        return len(self._cached[key])

    def sync(self, key: Hashable, context: Sequence[int]) -> list[int]:
        """Rolls the cache back to the longest prefix shared with ``context`` (keeping its last token
        out, so that a pass always scores it) and returns the tokens of ``context`` to feed next."""
        cached = self._cached[key]
        n = min(len(cached), len(context) - 1)
        if cached[:n] != list(context[:n]):
            n = next(i for i in range(n) if cached[i] != context[i])
        if n < len(cached):
            self.cache.rollback(self._seq[key], n)
            del cached[n:]
        return list(context[n:])

    def run(
        self,
        keys: Sequence[Hashable],
        new_tokens: Sequence[Sequence[int]],
        parents: Sequence[torch.Tensor | None],
        rows: Sequence[Sequence[int]],
    ) -> list[torch.Tensor]:
        """One forward pass. Sequence b feeds ``new_tokens[b]`` after its cached tokens, as a chain
        (``parents[b] is None``) or a tree; returns, per sequence, the logits ``[len(rows[b]), vocab]``
        of the rows asked for (indices into its new tokens). Nothing is committed until :meth:`keep`."""
        return self.score(keys, new_tokens, parents, rows)[0]

    def score(
        self,
        keys: Sequence[Hashable],
        new_tokens: Sequence[Sequence[int]],
        parents: Sequence[torch.Tensor | None],
        rows: Sequence[Sequence[int]],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """:meth:`run`, and per sequence the :class:`TargetStates` of the rows asked for
        (``[len(rows[b]), hidden]`` or ``[len(rows[b]), k, hidden]``; None without ``states``)."""
        start = time.perf_counter()
        seqs = [self._seq[k] for k in keys]
        trees = None
        if any(p is not None for p in parents):
            chains = [torch.arange(-1, len(t) - 1) for t in new_tokens]
            trees = [c if p is None else p for p, c in zip(parents, chains, strict=True)]
        batch = StepBatch.build(self.cache, seqs, [list(t) for t in new_tokens], parents=trees)
        offsets = batch.qo_indptr[:-1].tolist()
        flat = torch.tensor([offsets[b] + r for b, rs in enumerate(rows) for r in rs], dtype=torch.long)
        flat = flat.to(batch.tokens.device)
        states = None
        with torch.inference_mode():
            if self.states is None:
                logits = self.model(batch, self.cache, logits_rows=flat).logits
            elif self.states.transfer is None:
                out = self.model(batch, self.cache, logits_rows=flat, hidden_layers=(-1,))
                logits, states = out.logits, out.hidden[-1][flat]  # [R, hidden]
            else:
                final, states = self._forward_transfer(seqs, new_tokens, trees, rows, batch, flat)
                logits = self.model.head(final)
        for key, toks in zip(keys, new_tokens, strict=True):
            self._fed[key] = list(toks)
        self.passes += 1
        self.seconds += time.perf_counter() - start
        sizes = [len(r) for r in rows]
        return list(logits.float().split(sizes)), None if states is None else list(states.split(sizes))

    def _forward_transfer(self, seqs, new_tokens, trees, rows, real: StepBatch, flat: torch.Tensor):
        """Hidden transfer's pass: the layers below t run the real tokens only; then k pseudo nodes
        per scored row join (a chain below the row, after the sequence's real nodes) and the rest of
        the layers run both. Returns the scored rows' final states ``[R, hidden]`` and their pseudo
        nodes' ``[R, k, hidden]``."""
        m, k, t = self.model, self.states.num_future, self.states.layer
        feeds, full_trees = [], []
        for b, (toks, rs) in enumerate(zip(new_tokens, rows, strict=True)):
            n = len(toks)
            tree = torch.arange(-1, n - 1) if trees is None else trees[b]
            below = [[r] + [n + j * k + i for i in range(k - 1)] for j, r in enumerate(rs)]
            full_trees.append(
                torch.cat([tree, torch.tensor([p for c in below for p in c], dtype=torch.long)])
            )
            feeds.append(list(toks) + [0] * (k * len(rs)))
        full = StepBatch.build(self.cache, seqs, feeds, parents=full_trees)  # same slots for the real nodes
        starts = full.qo_indptr[:-1].tolist()
        device = real.tokens.device
        to_full = torch.tensor(
            [starts[b] + j for b, toks in enumerate(new_tokens) for j in range(len(toks))], device=device
        )
        pseudo = torch.tensor(
            [starts[b] + len(new_tokens[b]) + j for b, rs in enumerate(rows) for j in range(k * len(rs))],
            device=device,
        )
        x = m.run_layers(real, self.cache, m.embed(real.tokens), stop=t)[0]
        y = x.new_zeros(full.num_tokens, x.shape[1])
        y[to_full] = x
        y[pseudo] = self.states.transfer(x[flat]).reshape(-1, x.shape[1])
        x = ops.rms_norm(m.run_layers(full, self.cache, y, start=t)[0], m.norm, m.config.rms_norm_eps)
        return x[to_full[flat]], x[pseudo].view(len(flat), k, -1)

    def keep(self, keys: Sequence[Hashable], kept: Sequence[Sequence[int]]) -> None:
        """Commits, per sequence, the new tokens of the last run at indices ``kept`` (increasing); the
        others' KV is dropped. A kept tree path is moved next to the prefix in one compaction call."""
        compact = []
        for key, idx in zip(keys, kept, strict=True):
            fed = self._fed.pop(key)
            if list(idx) != list(range(len(idx))):
                compact.append((key, list(idx)))
            else:
                self.cache.commit(self._seq[key], len(idx))
            self._cached[key].extend(fed[i] for i in idx)
        if compact:
            seqs = [self._seq[k] for k, _ in compact]
            table, lens = self.cache.tables(seqs)
            nodes = [i for _, idx in compact for i in idx]
            indptr = torch.tensor([0] + torch.tensor([len(i) for _, i in compact]).cumsum(0).tolist())
            device = self.cache.k.device
            ops.kv_compact(
                self.cache.k,
                self.cache.v,
                lens,
                table,
                indptr.to(device=device, dtype=torch.int32),
                torch.tensor(nodes, dtype=torch.int32, device=device),
            )
            for seq, length in zip(seqs, lens.tolist(), strict=True):
                self.cache.set_length(seq, length)
        for key in keys:  # free the pages past what was kept
            seq = self._seq[key]
            self.cache.rollback(seq, self.cache.length(seq))


def pages_needed(lengths: Sequence[int], page_size: int) -> int:
    """Pages for sequences of at most these lengths, one spare each for copy-on-write."""
    return sum(-(-n // page_size) + 1 for n in lengths) + 1
