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
from collections.abc import Hashable, Sequence

import torch

from pyspec import ops
from pyspec.batch import StepBatch
from pyspec.models.llama import LlamaModel


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

    def __init__(self, model: LlamaModel, num_pages: int, page_size: int = 16) -> None:
        self.model = model
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
        start = time.perf_counter()
        seqs = [self._seq[k] for k in keys]
        trees = None
        if any(p is not None for p in parents):
            chains = [torch.arange(-1, len(t) - 1) for t in new_tokens]
            trees = [c if p is None else p for p, c in zip(parents, chains, strict=True)]
        batch = StepBatch.build(self.cache, seqs, [list(t) for t in new_tokens], parents=trees)
        offsets = batch.qo_indptr[:-1].tolist()
        flat = torch.tensor([offsets[b] + r for b, rs in enumerate(rows) for r in rs], dtype=torch.long)
        with torch.inference_mode():
            logits = self.model(batch, self.cache, logits_rows=flat.to(batch.tokens.device)).logits
        for key, toks in zip(keys, new_tokens, strict=True):
            self._fed[key] = list(toks)
        self.passes += 1
        self.seconds += time.perf_counter() - start
        return list(logits.float().split([len(r) for r in rows]))

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
