"""Profiling for the planner: the cost of drafting passes and of whole verification steps against
new tokens, batch size and context length, and acceptance between every pair of candidate drafts
and the target on calibration prompts (gain tables per block size, n-gram proposal lengths,
positional acceptance for trees).

The result is the profile dict :func:`planner.plan.make_plan` reads (JSON-serialisable), with a
hardware fingerprint (:func:`pyspec.hardware.hardware`) so that a plan made elsewhere is noticed.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from planner.hierarchy import gain_table
from pyspec.batch import StepBatch
from pyspec.decoding.autoregressive import GREEDY, generate_autoregressive
from pyspec.decoding.engine import BatchEngine
from pyspec.decoding.hierarchy import same_vocabulary
from pyspec.drafters.base import Draft, Drafter
from pyspec.drafters.ngram import lookup
from pyspec.hardware import hardware
from pyspec.kv_cache import PAGE_SIZE
from pyspec.model_runner import pages_needed
from pyspec.models.llama import LlamaModel
from pyspec.models.loading import ModelNotFoundError, gguf_file, load_model
from pyspec.sampling import SamplingParams, probabilities
from pyspec.spec import resolve_candidate

DEFAULT_SIZES = (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32)


def forward_seconds(
    model: LlamaModel,
    sizes: Sequence[int],
    batch_size: int,
    context: int,
    repeats: int = 5,
    score_all: bool = False,
) -> dict:
    """Median seconds of one forward pass with n new tokens per sequence (a chain after ``context``
    committed tokens), for each n in ``sizes``: ``{"sizes": [...], "seconds": [...]}``. Logits for
    every new token with ``score_all`` (a verification pass), else for each sequence's last (a
    drafting pass); on a CPU each scored row costs a vocabulary-sized product."""
    cache = model.new_cache(num_pages=pages_needed([context + max(sizes)] * batch_size, PAGE_SIZE))
    seqs = [cache.add_sequence() for _ in range(batch_size)]
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, model.config.vocab_size, (batch_size, context), generator=gen).tolist()
    with torch.inference_mode():
        batch = StepBatch.build(cache, seqs, prefix)
        model(batch, cache)
        batch.commit(cache)
        times: dict[int, list[float]] = {n: [] for n in sizes}
        for _ in range(repeats + 1):  # sizes in turn, so that a slow moment hits all of them; first: warm-up
            for n in sizes:
                batch = StepBatch.build(cache, seqs, [[1] * n] * batch_size)
                rows = torch.arange(n * batch_size) if score_all else None
                start = time.perf_counter()
                model(batch, cache, logits_rows=rows)
                times[n].append(time.perf_counter() - start)
                for s in seqs:
                    cache.rollback(s, context)
    return {"sizes": list(sizes), "seconds": [statistics.median(times[n][1:]) for n in sizes]}


RUN_HORIZON = 32  # longest run of accepted tokens measured
TREE_DEPTH, TREE_RANKS = 8, 8  # positional acceptance for trees: depths x candidate ranks
TREE_SUPPORT = 20.0  # expected blocks reaching a depth below which its estimate is not trusted


class _Rejected(Drafter):
    """Proposes ``n`` copies of a token the target never continues with (so every step verifies
    exactly n drafts and emits one token): a fixed-size speculative step, for timing the loop."""

    def __init__(self, n: int, token: int) -> None:
        super().__init__(f"fixed({n})")
        self.n, self.token, self.max_draft = n, token, n

    def propose(self, keys, contexts, params, generators, budgets) -> list[Draft]:
        return [Draft.chain([self.token] * min(self.n, b)) for b in budgets]


def verify_step_seconds(
    model: LlamaModel, sizes: Sequence[int], batch_size: int, context: int, repeats: int = 5
) -> dict:
    """Median seconds of one whole decoding step of the target verifying n - 1 drafts per sequence
    (n new tokens), for each n in ``sizes``, through the real loop (:class:`BatchEngine`: drafting
    call, verification pass scoring every row, acceptance, KV compaction, bookkeeping), sizes in
    turn after ``context`` tokens. n = 1 is a plain decoding step. ``{"sizes", "seconds"}``."""
    steps = len(sizes) * (repeats + 1) + 1
    for seed in range(1, 6):  # a random prompt may stop early (EOS): then another one
        drafter = _Rejected(max(sizes) - 1, model.config.vocab_size - 1)
        engine = BatchEngine(
            model, drafter, max_batch=batch_size, max_length=context + steps + max(sizes) + 2
        )
        gen = torch.Generator().manual_seed(seed)
        for prompt in torch.randint(
            0, model.config.vocab_size, (batch_size, context), generator=gen
        ).tolist():
            engine.submit(prompt, max_new_tokens=steps + 1)
        drafter.n = 0
        engine.step()  # the prefill
        times: dict[int, list[float]] = {n: [] for n in sizes}
        for _ in range(repeats + 1):  # the first round is a warm-up
            for n in sizes:
                drafter.n = n - 1
                start = time.perf_counter()
                engine.step()
                times[n].append(time.perf_counter() - start)
        if not engine.done:  # every sequence ran every step
            break
    else:
        raise RuntimeError("could not time verification steps: every random prompt stopped early")
    return {"sizes": list(sizes), "seconds": [statistics.median(times[n][1:]) for n in sizes]}


def _logits(model: LlamaModel, sequence: list[int], start: int) -> torch.Tensor:
    """[len(sequence) - start, vocab]: the model's logits for token t given tokens < t."""
    cache = model.new_cache(num_pages=pages_needed([len(sequence)], PAGE_SIZE))
    seq = cache.add_sequence()
    batch = StepBatch.build(cache, [seq], [sequence])
    with torch.inference_mode():
        return model(batch, cache, logits_rows=torch.arange(start - 1, len(sequence) - 1)).logits.float()


class _Replay:
    """Replays speculative steps along a text, for every block size T at once: a block starting at
    position t gains K tokens with ``P(K >= k + 1) = prod_{d < k} m[t, d]`` (``m[t, d]``: the chance
    that the d-th drafted token is accepted given the ones before were), and the next block starts
    at t + K. Gains are averaged over the positions where blocks actually start (a probability-
    weighted forward pass over positions), not over all positions: along a long stretch the drafter
    gets right, a step covers T + 1 positions at once, and averaging over every position would count
    that stretch T + 1 times over. Greedy, this is the decoding loop's own sequence of steps."""

    def __init__(self, horizon: int = RUN_HORIZON) -> None:
        self.horizon = horizon
        self.gains = np.zeros((horizon + 1, horizon + 2))  # [T, k]: visit-weighted P(K = k)
        self.lengths = np.zeros((horizon + 1, horizon + 1))  # [T, l]: visit-weighted proposal lengths
        self.weight = np.zeros(horizon + 1)
        self.first = []  # m[t, 0] at every position: the plain acceptance rate

    def add(self, m: np.ndarray, proposed: np.ndarray | None = None) -> None:
        """``m``: [positions, horizon], 0 past the end of the text or of a proposal; ``proposed``:
        [positions], a lookup's proposal length at each position."""
        n = len(m)
        self.first += m[1:, 0].tolist()
        for T in range(1, self.horizon + 1):
            reach = np.concatenate([np.ones((n, 1)), np.cumprod(m[:, :T], axis=1)], axis=1)  # P(K > k)
            dist = np.zeros((n, T + 2))
            dist[:, 1 : T + 1] = reach[:, :T] - reach[:, 1 : T + 1]
            dist[:, T + 1] = reach[:, T]
            visit = np.zeros(n + T + 2)
            visit[1] = 1.0  # position 0 is the prefill's token; the first block starts after it
            for t in range(1, n - T):  # blocks that end inside the text
                v = visit[t]
                if v == 0:
                    continue
                visit[t : t + T + 2] += v * dist[t]
                self.gains[T] += v * np.pad(dist[t], (0, self.horizon - T))
                self.weight[T] += v
                if proposed is not None:
                    self.lengths[T, min(int(proposed[t]), T)] += v

    def tables(self, rate: float) -> tuple[list, list]:
        """Gain rows ``[T][k]`` (k = 0..T+1) and proposal-length rows ``[T][l]`` (l = 0..T); block
        sizes never replayed (texts too short) fall back to i.i.d. acceptance at ``rate``."""
        iid = gain_table(rate, self.horizon)
        gains, lengths = [[0.0, 1.0]], [[1.0]]
        for T in range(1, self.horizon + 1):
            w = self.weight[T]
            gains.append((self.gains[T, : T + 2] / w if w > 0 else iid[T, : T + 2]).tolist())
            lengths.append((self.lengths[T, : T + 1] / w if w > 0 else np.eye(T + 1)[T]).tolist())
        return gains, lengths


def _shifted(values: np.ndarray, horizon: int) -> np.ndarray:
    """[n, horizon]: row t holds values[t], values[t + 1], ... (0 past the end)."""
    n = len(values)
    out = np.zeros((n, horizon))
    for d in range(horizon):
        out[: max(n - d, 0), d] = values[d:]
    return out


@dataclass
class _View:
    """A text (a prompt and the target's continuation) in one model's tokens: ``ids``, where the
    continuation starts, and the character where each continuation token ends."""

    ids: list[int]
    start: int
    ends: np.ndarray  # [n] ends of the continuation's tokens, in characters of the continuation

    @classmethod
    def of(cls, tokenizer, prompt: list[int], continuation: list[int]) -> _View:
        ends = [len(tokenizer.decode(continuation[: k + 1])) for k in range(len(continuation))]
        return cls(list(prompt) + list(continuation), len(prompt), np.array(ends, dtype=np.int64))

    @classmethod
    def retokenized(cls, target_tokenizer, tokenizer, prompt: list[int], continuation: list[int]) -> _View:
        """The same text in another tokenizer's ids (prompt and continuation encoded apart, so that
        the continuation starts on a token boundary)."""

        def encode(ids):
            return tokenizer(target_tokenizer.decode(ids), add_special_tokens=False).input_ids

        return cls.of(tokenizer, encode(prompt), encode(continuation))

    @property
    def n(self) -> int:
        return len(self.ends)


def _cross_mass(draft: _View, right: np.ndarray, verifier: _View, p_text: np.ndarray) -> np.ndarray:
    """[n, RUN_HORIZON] acceptance of a draft with another tokenizer, drafting greedily from every
    position of the verifier's text: a chain drafted after the draft's token k - 1 is the text
    until the first token k' >= k its argmax gets wrong (``right [n_draft]``), so it covers the
    verifier's tokens that end before that character (a context ending inside a draft token counts
    from the start of that token); a covered token is accepted with the verifier's probability of it
    (``p_text [n]``), the rest are not."""
    starts = np.concatenate([[0], draft.ends[:-1]])
    reach = np.zeros(draft.n + 1, dtype=np.int64)
    reach[draft.n] = draft.ends[-1] if draft.n else 0
    for k in range(draft.n - 1, -1, -1):
        reach[k] = reach[k + 1] if right[k] else starts[k]
    context_ends = np.concatenate([[0], verifier.ends[:-1]])  # where the text stands at each position
    reach_at = reach[np.searchsorted(draft.ends, context_ends, side="right")]
    ends = _shifted(verifier.ends.astype(float), RUN_HORIZON)
    ends[ends == 0] = np.inf  # past the end of the text
    return np.where(ends <= reach_at[:, None], _shifted(p_text, RUN_HORIZON), 0.0)


def acceptance(
    target: LlamaModel,
    candidates: Sequence[str],
    prompts: Sequence[Sequence[int]],
    params: SamplingParams = GREEDY,
    new_tokens: int = 128,
) -> dict:
    """Acceptance between every pair of models (candidates, then the target) on the target's own
    continuations of ``prompts`` (teacher forcing), as three tables:

    - ``"gains"[j][i][T][k]``: the probability that level i, verifying a block of T tokens drafted
      by level j, gains k tokens (accepted + its own), T = 0..32, from a replay of the steps along
      each text (see :class:`_Replay`), with per-position acceptance ``sum_x min(p_j(x), p_i(x))``
      (greedy: the argmaxes agree), for the n-gram drafter ``p_i`` of each token it proposes (0
      where it proposes nothing), and for a draft with another tokenizer ``p_i`` of each text token
      its greedy chain covers (:func:`_cross_mass`). ``"alpha"[j][i]``: the plain per-position rate
      (for display). Pairs below the target are measured on the target's text too (an
      approximation), in their own tokens.
    - ``"lookup_lengths"[T][l]``: the probability that the n-gram drafter, asked for T tokens,
      proposes l, at the positions where blocks start.
    - ``"tree"[name][d][r]``: for each draft model sharing the target's vocabulary, the probability
      that its rank-r candidate at depth d + 1 of a tree is the target's token, given the path above
      was accepted along top candidates (greedy: ranks by logits; sampling: acceptance probability
      of deterministic candidates, p(x)), averaged over all start positions.
    """
    models = [resolve_candidate(target, c) for c in candidates] + [target]
    outputs = generate_autoregressive(target, prompts, new_tokens, [params] * len(prompts))
    m = len(models)
    # models sharing the target's vocabulary read its tokens; the others, the text re-tokenized
    own = [isinstance(x, str) or same_vocabulary(x, target) for x in models]
    replays = {(j, i): _Replay() for j in range(m) for i in range(j + 1, m)}
    cross = not all(own)
    tree = {
        c: (np.zeros((TREE_DEPTH, TREE_RANKS)), np.zeros(TREE_DEPTH))
        for c, x, same in zip(candidates, models, own, strict=False)
        if same and not isinstance(x, str)
    }
    for prompt, out in tqdm(list(zip(prompts, outputs, strict=True)), desc="acceptance", leave=False):
        if len(out.tokens) < 2:
            continue
        if cross:  # character offsets are needed to line up two tokenizations
            base = _View.of(target.tokenizer, list(prompt), out.tokens)
        else:
            base = _View(list(prompt) + out.tokens, len(prompt), np.zeros(len(out.tokens), dtype=np.int64))
        views = [
            base if same else _View.retokenized(target.tokenizer, x.tokenizer, list(prompt), out.tokens)
            for x, same in zip(models, own, strict=True)
        ]
        logits = [
            None if isinstance(x, str) else _logits(x, v.ids, v.start)
            for x, v in zip(models, views, strict=True)
        ]
        dists = [None if lg is None else probabilities(lg, params) for lg in logits]
        proposals: dict[int, list] = {}  # per view (by model index), the n-gram's proposal at each position
        for (j, i), replay in replays.items():
            vi, vj = views[i], views[j]
            if dists[i] is None or vi.n < 2:
                continue
            if dists[j] is None:  # n-gram, over the verifier's tokens: p_i of each proposed token
                if i not in proposals:
                    proposals[i] = [lookup(vi.ids[: vi.start + t], RUN_HORIZON) for t in range(vi.n)]
                mass = np.zeros((vi.n, RUN_HORIZON))
                for t, prop in enumerate(proposals[i]):
                    d = np.arange(min(len(prop), vi.n - t))
                    mass[t, d] = dists[i][t + d, prop[: len(d)]].numpy()
                replay.add(mass, np.array([len(x) for x in proposals[i]]))
            elif vj is vi:
                replay.add(_shifted(torch.minimum(dists[j], dists[i]).sum(-1).double().numpy(), RUN_HORIZON))
            elif vj.n >= 1:  # another tokenizer: the draft's greedy chain, re-tokenized
                text_i = torch.tensor(vi.ids[vi.start :])
                right = (logits[j].argmax(-1) == torch.tensor(vj.ids[vj.start :])).numpy()
                p_text = dists[i].gather(1, text_i[:, None])[:, 0].double().numpy()
                replay.add(_cross_mass(vj, right, vi, p_text))
        n = len(out.tokens)
        for c, (num, den) in tree.items():
            j = list(candidates).index(c)
            score = logits[j] if params.greedy else dists[j]
            ranked = score.topk(TREE_RANKS, dim=-1).indices  # [n, ranks]
            accept = dists[-1].gather(1, ranked).double().numpy()  # p_target of each candidate
            for d in range(min(TREE_DEPTH, n)):
                starts = n - d  # blocks starting at t = 0..n-d-1 reach position t + d
                weight = np.ones(starts)  # P(the top candidates at t..t+d-1 were accepted)
                for e in range(d):
                    weight *= accept[e : e + starts, 0]
                num[d] += (weight[:, None] * accept[d : d + starts]).sum(0)
                den[d] += weight.sum()
    alpha = np.eye(m).tolist()
    gains = [[[[0.0, 1.0]] for _ in range(m)] for _ in range(m)]
    lookup_lengths = None
    for (j, i), replay in replays.items():
        alpha[j][i] = float(np.mean(replay.first)) if replay.first else 0.0
        gains[j][i], lengths = replay.tables(alpha[j][i])
        if candidates[j : j + 1] == ["ngram"] and i == m - 1:
            lookup_lengths = lengths
    for j in range(m):  # unused pairs (a level never verifies itself or one above): a well-formed table
        for i in range(j + 1):
            gains[j][i] = gain_table(0.0, RUN_HORIZON).tolist()
    trees = {}
    for c, (num, den) in tree.items():
        rows = [list(num[0] / max(den[0], 1e-12))]
        for d in range(1, TREE_DEPTH):  # a depth seen in fewer than TREE_SUPPORT blocks: the one above
            rows.append(list(num[d] / den[d]) if den[d] >= TREE_SUPPORT else rows[-1])
        trees[c] = rows
    return {"alpha": alpha, "gains": gains, "lookup_lengths": lookup_lengths, "tree": trees}


def profile(
    target: LlamaModel,
    candidates: Sequence[str],
    prompts: Sequence[Sequence[int]],
    batch_sizes: Sequence[int] = (1,),
    sizes: Sequence[int] = DEFAULT_SIZES,
    contexts: Sequence[int] = (256, 1024),
    params: SamplingParams = GREEDY,
    repeats: int = 5,
) -> dict:
    """Everything :func:`planner.plan.make_plan` needs, measured here (see the module docstring).
    Latency is measured after each of ``contexts`` committed tokens: ``"latency"`` holds the first
    (the default bucket), ``"latency_by_context"`` all of them."""
    by_context = latency(target, candidates, batch_sizes, sizes, contexts, repeats)
    formats = target_formats(target, batch_sizes, sizes, contexts, repeats, by_context)
    weights = min(formats, key=lambda f: _total_seconds(formats[f])) if formats else target.weights_format
    if formats:  # plans are costed with the fastest exact format's steps (the tokens are the same)
        name = target.name
        for ctx, per_batch in formats[weights].items():
            for b, curve in per_batch.items():
                by_context[ctx][b][name] = curve
    return {
        "hardware": hardware(),
        "dtype": str(target.embed_tokens.dtype).removeprefix("torch."),
        "weights": weights,
        "target_formats": formats,
        "target": target.name,
        "candidates": list(candidates),
        "context": contexts[0],
        "latency": by_context[str(contexts[0])],
        "latency_by_context": by_context,
        "sampling": {"temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p},
        **acceptance(target, candidates, prompts, params),
    }


def _total_seconds(per_context: dict) -> float:
    return sum(sum(c["seconds"]) for per_batch in per_context.values() for c in per_batch.values())


def target_formats(
    target: LlamaModel,
    batch_sizes: Sequence[int],
    sizes: Sequence[int],
    contexts: Sequence[int],
    repeats: int,
    measured: dict,
) -> dict:
    """The target's verification steps in each exact weight format it can load in, ``{format: {context:
    {batch size: curve}}}``: ``"float32"`` (dequantised) and ``"packed"`` (GGUF blocks, bitwise the
    same logits) for a GGUF target; ``measured`` holds its own format's curves already. Empty when the
    target has one format only (a Hugging Face folder, bfloat16, or q8 compute: another target)."""
    own, source = target.weights_format, target.source
    if own not in ("float32", "packed") or source is None:
        return {}
    try:
        gguf_file(source)
    except ModelNotFoundError:
        return {}
    name = target.name
    other = _other_format(source, own)
    formats = {own: {ctx: {b: per_batch[name] for b, per_batch in measured[ctx].items()} for ctx in measured}}
    formats["packed" if own == "float32" else "float32"] = {
        str(ctx): {str(b): verify_step_seconds(other, sizes, b, ctx, repeats) for b in batch_sizes}
        for ctx in tqdm(contexts, desc="target formats", leave=False)
    }
    return formats


@functools.cache
def _other_format(source: str, own: str) -> LlamaModel:
    return load_model(source, packed=own == "float32", progress=False)


def latency(
    target: LlamaModel,
    candidates: Sequence[str],
    batch_sizes: Sequence[int] = (1,),
    sizes: Sequence[int] = DEFAULT_SIZES,
    contexts: Sequence[int] = (256, 1024),
    repeats: int = 5,
) -> dict:
    """Cost curves ``{context: {batch size: {model: {"sizes", "seconds"}}}}``: whole verification
    steps of the target, forward passes of each draft model, the n-gram's lookup; weights' values
    do not matter (random weights time the real shapes)."""
    name = target.name
    by_context: dict = {str(ctx): {} for ctx in contexts}
    jobs = [(b, c, ctx) for b in batch_sizes for c in list(candidates) + [name] for ctx in contexts]
    for b, c, ctx in tqdm(jobs, desc="latency"):
        model = target if c == name else resolve_candidate(target, c)
        if model == "ngram":
            start = time.perf_counter()
            for _ in range(20):
                lookup(list(range(ctx)) * 2, 4)
            per_sequence = (time.perf_counter() - start) / 20
            curve = {"sizes": [1], "seconds": [b * per_sequence]}
        elif c == name:  # the target: whole verification steps of the real loop
            curve = verify_step_seconds(model, sizes, b, ctx, repeats)
        else:
            curve = forward_seconds(model, sizes, b, ctx, repeats)
        by_context[str(ctx)].setdefault(str(b), {})[c] = curve
    return by_context
