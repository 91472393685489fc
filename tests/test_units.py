"""Unit tests on tiny random-weight models, one component at a time (in the style of vLLM's
rejection-sampler tests): the :class:`Verifier` on hand-built drafts (greedy and sampled acceptance,
KV bookkeeping), a :class:`HierarchyLevel` over a stub drafter, :func:`build_stack`'s refusals, and
the :class:`BatchEngine`'s admission, cancellation, pre-emption and input checks.

The weights are random: only shapes and exactness matter here, never what the model says. Every
expected token is computed from the model itself, by a plain full-context forward pass per token
(:func:`next_logits`, no cache reuse, no drafts, no compaction), never hard-coded."""

from __future__ import annotations

import pytest
import torch
from utils import null_total_variations, total_variation

from pyspec.decoding.autoregressive import generate_autoregressive
from pyspec.decoding.engine import BatchEngine
from pyspec.decoding.hierarchy import HierarchyLevel, build_stack
from pyspec.decoding.speculative import generate_speculative
from pyspec.decoding.verifier import Verifier
from pyspec.drafters.base import Draft, Drafter
from pyspec.drafters.ngram import NgramDrafter
from pyspec.model_runner import ModelRunner
from pyspec.models.config import ModelConfig
from pyspec.models.llama import LlamaModel
from pyspec.sampling import SamplingParams, probabilities

VOCAB = 48
GREEDY = SamplingParams()
PROMPTS = [[5, 17, 3, 40, 22], [9, 1], [30, 30, 12, 7, 44, 2, 19, 8, 11, 26, 4]]


def tiny_model(seed: int = 0, num_layers: int = 2) -> LlamaModel:
    """A 2-layer Llama of vocabulary 48 with random weights (norms left at 1)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_layers=num_layers,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
    )
    model = LlamaModel(cfg)
    for name, p in model.named_parameters():
        if "norm" not in name:
            p.copy_(torch.randn_like(p) * 0.3)
    model.name = f"tiny{seed}"
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def next_logits(model: LlamaModel, context: list[int]) -> torch.Tensor:
    """The model's logits ``[vocab]`` after ``context``: one pass over the whole context in a fresh cache."""
    runner = ModelRunner(model, num_pages=len(context) // 4 + 2, page_size=4)
    runner.add(0)
    return runner.run([0], [list(context)], [None], [[len(context) - 1]])[0][0]


def greedy_continuation(model: LlamaModel, context: list[int], n: int) -> list[int]:
    """The model's ``n`` greedy tokens after ``context``, one full-context pass per token."""
    out = []
    for _ in range(n):
        out.append(int(next_logits(model, list(context) + out).argmax()))
    return out


def wrong(token: int) -> int:
    """A token other than ``token``."""
    return (token + 1) % VOCAB


def verifier_for(model: LlamaModel, keys, length: int = 64) -> Verifier:
    v = Verifier(model, "target")
    v.begin([length] * len(keys))
    for k in keys:
        v.add(k)
    return v


def verify_one(model, context, draft, params=GREEDY, seed=0):
    """One verification step of one sequence in a fresh verifier."""
    v = verifier_for(model, [0])
    return v.step([0], [context], [draft], [params], [torch.Generator().manual_seed(seed)])[0]


# Verifier, greedy ----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_greedy_chain_accepts_exactly_the_correct_prefix(model, k):
    """A 4-token chain right for its first k tokens: k accepted, then the argmax at the first mismatch."""
    ctx = PROMPTS[0]
    g = greedy_continuation(model, ctx, 5)
    draft = g[:k] + [wrong(g[k])] + g[k + 1 : 4]  # the tokens after the mismatch do not matter
    res = verify_one(model, ctx, Draft.chain(draft))
    assert res.num_accepted == k
    assert res.tokens == g[: k + 1]


def test_greedy_chain_all_correct_gets_a_bonus(model):
    """A chain equal to the greedy continuation: all accepted, plus the argmax after it (the bonus)."""
    ctx = PROMPTS[2]
    g = greedy_continuation(model, ctx, 5)
    res = verify_one(model, ctx, Draft.chain(g[:4]))
    assert res.num_accepted == 4
    assert res.tokens == g


def test_greedy_empty_draft_emits_the_argmax(model):
    """No draft: one token, the model's argmax after the context (plain decoding)."""
    for ctx in PROMPTS:
        res = verify_one(model, ctx, Draft())
        assert (res.num_accepted, res.tokens) == (0, greedy_continuation(model, ctx, 1))


def test_greedy_tree_accepts_the_matching_second_branch(model):
    """A tree of two branches whose first is wrong at its root: the second branch's right prefix is
    accepted, then the argmax after it."""
    ctx = PROMPTS[0]
    g = greedy_continuation(model, ctx, 3)
    # branch 1: wrong(g0) -> g1 (right token, wrong parent); branch 2: g0 -> g1 -> wrong(g2)
    draft = Draft([wrong(g[0]), g[1], g[0], g[1], wrong(g[2])], [-1, 0, -1, 2, 3])
    res = verify_one(model, ctx, draft)
    assert res.num_accepted == 2
    assert res.tokens == g


def test_greedy_ragged_batch_equals_each_sequence_alone(model):
    """Three sequences of different lengths with different drafts (chain, tree, none) in one step:
    each result is the one it gets alone."""
    g = [greedy_continuation(model, p, 4) for p in PROMPTS]
    drafts = [
        Draft.chain(g[0][:2] + [wrong(g[0][2])]),
        Draft([wrong(g[1][0]), g[1][0], g[1][1]], [-1, -1, 1]),
        Draft(),
    ]
    v = verifier_for(model, [0, 1, 2])
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    together = v.step([0, 1, 2], PROMPTS, drafts, [GREEDY] * 3, gens)
    assert [r.tokens for r in together] == [g[0][:3], g[1][:3], g[2][:1]]
    assert [r.tokens for r in together] == [
        verify_one(model, p, d).tokens for p, d in zip(PROMPTS, drafts, strict=True)
    ]


# Verifier, sampled ---------------------------------------------------------------------------------


def test_sampled_draft_with_the_targets_distribution_is_always_accepted(model):
    """q equal to the target's p at every position: every draft token is accepted (min(1, p/q) = 1)."""
    params = SamplingParams(temperature=1.0)
    n, depth = 16, 3
    contexts, drafts, gen = [], [], torch.Generator().manual_seed(1)
    for i in range(n):
        ctx, tokens, q = PROMPTS[i % 3], [], []
        for _ in range(depth):
            p = probabilities(next_logits(model, ctx + tokens)[None], params)[0]
            q.append(p)
            tokens.append(int(torch.multinomial(p, 1, generator=gen)))
        contexts.append(ctx)
        drafts.append(Draft.chain(tokens, torch.stack(q)))
    v = verifier_for(model, range(n))
    gens = [torch.Generator().manual_seed(100 + i) for i in range(n)]
    results = v.step(list(range(n)), contexts, drafts, [params] * n, gens)
    assert [r.num_accepted for r in results] == [depth] * n
    assert [r.tokens[:depth] for r in results] == [d.tokens for d in drafts]
    assert all(len(r.tokens) == depth + 1 for r in results)


def test_sampled_token_outside_top_k_is_always_rejected(model):
    """A one-hot draft at a token top-k gives probability 0: rejected at every seed, and the
    recovered token is one of the top k."""
    params = SamplingParams(temperature=1.0, top_k=4)
    ctx = PROMPTS[0]
    logits = next_logits(model, ctx)
    top = set(logits.topk(4).indices.tolist())
    draft = Draft.chain([int(logits.argmin())])  # q = None: a deterministic candidate, q one-hot
    n = 16
    v = verifier_for(model, range(n))
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    results = v.step(list(range(n)), [ctx] * n, [draft] * n, [params] * n, gens)
    assert all(r.num_accepted == 0 and len(r.tokens) == 1 for r in results)
    assert {r.tokens[0] for r in results} <= top


def test_sampled_banned_token_is_always_rejected(model):
    """A one-hot draft at the argmax, banned at that position: rejected at every seed, and never emitted."""
    params = SamplingParams(temperature=1.0)
    ctx = PROMPTS[1]
    best = int(next_logits(model, ctx).argmax())
    n = 16
    v = verifier_for(model, range(n))
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    ban = [lambda before: [best]] * n
    results = v.step(list(range(n)), [ctx] * n, [Draft.chain([best])] * n, [params] * n, gens, banned=ban)
    assert all(r.num_accepted == 0 and len(r.tokens) == 1 for r in results)
    assert best not in {r.tokens[0] for r in results}


def test_sampled_first_token_follows_the_target_distribution(model):
    """A draft from a distribution far from the target's (half its mass where p = 0): the first
    emitted token (accepted or recovered) follows p, within what exact sampling gets in 400 draws."""
    params = SamplingParams(temperature=1.0, top_k=6)
    ctx = PROMPTS[2]
    p = probabilities(next_logits(model, ctx)[None], params)[0]
    exact = {i: float(x) for i, x in enumerate(p) if x > 0}
    order = p.argsort(descending=True).tolist()
    q = torch.zeros(VOCAB)
    q[order[3:9]] = 1 / 6  # three tokens of the top 6 (the least likely) and three outside it
    n, gen = 400, torch.Generator().manual_seed(7)
    tokens = torch.multinomial(q, n, replacement=True, generator=gen).tolist()
    v = verifier_for(model, range(n), length=len(ctx) + 2)
    gens = [torch.Generator().manual_seed(1000 + i) for i in range(n)]
    drafts = [Draft.chain([t], q[None]) for t in tokens]
    results = v.step(list(range(n)), [ctx] * n, drafts, [params] * n, gens)
    null = null_total_variations(exact, n)
    bound = null[int(0.99 * len(null))]
    assert total_variation(tokens, exact) > bound  # the drafts alone fail the check: it has power
    tv = total_variation([r.tokens[0] for r in results], exact)
    assert tv < bound, (tv, null[len(null) // 2])
    assert 0 < sum(r.num_accepted for r in results) < n  # both paths ran


# Verifier bookkeeping ------------------------------------------------------------------------------


def test_verifier_keeps_exactly_the_accepted_path_and_counts_it(model):
    """After a step each cache holds the context and the accepted tokens (a tree path compacted in
    place), the stats count drafted and accepted tokens, the next step continues from that KV, and
    release frees every page."""
    a, b = PROMPTS[0], PROMPTS[2]
    ga, gb = greedy_continuation(model, a, 5), greedy_continuation(model, b, 5)
    drafts = [
        Draft.chain(ga[:2] + [wrong(ga[2])]),  # 2 of 3 accepted
        Draft([wrong(gb[0]), gb[0], gb[1], gb[2]], [-1, -1, 1, 2]),  # the second branch, 3 of 4
    ]
    v = verifier_for(model, ["a", "b"])
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    results = v.step(["a", "b"], [a, b], drafts, [GREEDY] * 2, gens)
    assert [r.num_accepted for r in results] == [2, 3]
    assert [v.runner.cache_length(k) for k in "ab"] == [len(a) + 2, len(b) + 3]
    assert (v.stats.drafted, v.stats.accepted, v.stats.verify_steps, v.stats.passes) == (7, 5, 2, 1)

    # the next step feeds only the bonus token over the kept KV (compacted for b): its distribution is
    # the full-context pass's (sampled, so that the probabilities are compared, not just an argmax
    # that random weights rarely move)
    contexts = [a + results[0].tokens, b + results[1].tokens]
    assert contexts == [a + ga[:3], b + gb[:4]]
    sampled = SamplingParams(temperature=1.0)
    again = v.step(["a", "b"], contexts, [Draft(), Draft()], [sampled] * 2, gens)
    for r, ctx in zip(again, contexts, strict=True):
        exact = probabilities(next_logits(model, ctx)[None], sampled)
        assert len(r.tokens) == 1 and torch.allclose(r.probs, exact, rtol=0, atol=1e-6)
    assert [v.runner.cache_length(k) for k in "ab"] == [len(c) for c in contexts]
    assert (v.stats.drafted, v.stats.accepted, v.stats.verify_steps, v.stats.passes) == (7, 5, 4, 2)
    assert v.stats.accepted_hist == [2, 0, 1, 1]

    assert v.runner.cache.stats()["used_pages"] > 0
    v.release("a")
    v.release("b")
    assert v.runner.cache.stats()["used_pages"] == 0


# Hierarchy levels ----------------------------------------------------------------------------------


class ChainStub(Drafter):
    """Proposes ``propose(context)`` cut to the budget and to ``max_draft`` tokens, and records budgets."""

    def __init__(self, propose, max_draft: int) -> None:
        super().__init__("stub")
        self._chain, self.max_draft, self.budgets = propose, max_draft, []

    def propose(self, keys, contexts, params, generators, budgets):
        self.budgets.append(list(budgets))
        return [
            Draft.chain(self._chain(list(c))[: min(self.max_draft, b)])
            for c, b in zip(contexts, budgets, strict=True)
        ]


def stubs(model):
    """A lower level that is always right (the middle model's own greedy tokens) and one always wrong."""
    right = ChainStub(lambda c: greedy_continuation(model, c, 2), max_draft=2)
    wrong_ = ChainStub(lambda c: [wrong(t) for t in greedy_continuation(model, c, 2)], max_draft=2)
    return {"right": right, "wrong": wrong_}


def level_for(model, lower, block_size, keys):
    level = HierarchyLevel(lower, model, block_size)
    level.begin([64] * len(keys))
    for k in keys:
        level.add(k)
    return level


@pytest.mark.parametrize("lower", ["right", "wrong"])
def test_level_proposes_its_models_greedy_block(model, lower):
    """Whatever the level below proposes, the level returns exactly min(block, budget) tokens, its own
    model's greedy continuation; verifying the lower drafts took one pass per 3 (right) or 1 (wrong)
    tokens."""
    stub = stubs(model)[lower]
    level = level_for(model, stub, 5, [0, 1, 2])
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    drafts = level.propose([0, 1, 2], PROMPTS, [GREEDY] * 3, gens, [10, 3, 0])
    assert [len(d) for d in drafts] == [5, 3, 0]
    for d, p in zip(drafts, PROMPTS, strict=True):
        assert d.tokens == greedy_continuation(model, p, len(d))
        assert d.parents == list(range(-1, len(d) - 1)) and d.q is None  # greedy: a chain, no q
    passes = level.levels()[-1].passes
    assert passes == (2 if lower == "right" else 5)  # the 5-token block: ceil(5 / 3) or 5 verifications
    assert all(b[0] >= 0 for b in stub.budgets)


def exact_q(model, context, tokens, params):
    """The model's distributions ``[len(tokens), vocab]`` before each of ``tokens`` after ``context``."""
    return torch.cat(
        [probabilities(next_logits(model, context + tokens[:i])[None], params) for i in range(len(tokens))]
    )


def test_level_rolls_back_what_the_level_above_rejected(model):
    """A second proposal after the level above kept 2 tokens and then a different one: the block and
    its distributions are those of the new context (the level's cache rolled back past the rejected
    tokens; compared as probabilities, which random weights move where an argmax rarely does)."""
    level = level_for(model, stubs(model)["wrong"], 4, [0])
    gen = [torch.Generator().manual_seed(0)]
    ctx = PROMPTS[0]
    first = level.propose([0], [ctx], [GREEDY], gen, [10])[0]
    assert first.tokens == greedy_continuation(model, ctx, 4)
    ctx2 = ctx + first.tokens[:2] + [wrong(first.tokens[2])]
    sampled = SamplingParams(temperature=1.0)
    second = level.propose([0], [ctx2], [sampled], gen, [10])[0]
    assert len(second) == 4
    assert torch.allclose(second.q, exact_q(model, ctx2, second.tokens, sampled), rtol=0, atol=1e-6)


def test_level_sampled_block_carries_its_distributions(model):
    """Sampling: the block comes with q [block, vocab], the level's model's distribution before each
    token, which gives that token positive probability."""
    level = level_for(model, stubs(model)["wrong"], 3, [0])
    params = SamplingParams(temperature=1.0, top_k=8, seed=3)
    draft = level.propose([0], [PROMPTS[1]], [params], [params.generator()], [10])[0]
    assert len(draft) == 3 and draft.q is not None and draft.q.shape == (3, VOCAB)
    assert torch.allclose(draft.q, exact_q(model, PROMPTS[1], draft.tokens, params), rtol=0, atol=1e-6)
    assert all(draft.q[i, t] > 0 for i, t in enumerate(draft.tokens))


def test_build_stack_refuses_bad_stacks(model):
    """No drafts, n-gram above the bottom, a block size count unlike the draft count, a block of 0."""
    draft = model.first_layers(1)
    with pytest.raises(ValueError, match="no drafts"):
        build_stack(model, [])
    with pytest.raises(ValueError, match="bottom level"):
        build_stack(model, [draft, "ngram"], [2, 2])
    with pytest.raises(ValueError, match="1 block sizes for 2 drafts"):
        build_stack(model, ["ngram", draft], [4])
    with pytest.raises(ValueError, match="block_size"):
        HierarchyLevel(NgramDrafter(2), draft, 0)
    assert isinstance(build_stack(model, ["ngram", draft], [2, 3]), HierarchyLevel)


# Batch engine --------------------------------------------------------------------------------------

LIMITS = [12, 20, 7]  # new tokens per request: they finish at different steps


SAMPLING = {
    "greedy": [GREEDY] * 3,
    # seeded sampling compares whole distributions' draws, which random weights move where an argmax
    # rarely does (a wrong KV slot shows here first)
    "sampled": [SamplingParams(temperature=1.0, seed=s) for s in (11, 12, 13)],
}


@pytest.fixture(scope="module")
def plain(model):
    """Each prompt decoded alone, greedy."""
    return [generate_autoregressive(model, [p], n)[0].tokens for p, n in zip(PROMPTS, LIMITS, strict=True)]


def drafter_for(model, kind):
    if kind == "none":
        return None
    if kind == "ngram":
        return build_stack(model, ["ngram"], [3])
    return build_stack(model, ["ngram", model.first_layers(1)], [2, 3])


def alone(model, kind, limits, sampling):
    """Each request decoded alone with the same drafter and sampling settings (no engine)."""
    out = []
    for p, n, s in zip(PROMPTS, limits, sampling, strict=True):
        drafter = drafter_for(model, kind)
        if drafter is None:
            out.append(generate_autoregressive(model, [p], n, s)[0].tokens)
        else:
            out.append(generate_speculative(model, [p], drafter, n, s)[0].tokens)
    return out


@pytest.mark.parametrize("sampling", list(SAMPLING))
@pytest.mark.parametrize("kind", ["none", "ngram", "hierarchy"])
def test_engine_outputs_equal_single_request_decoding(model, plain, kind, sampling):
    """3 requests of different lengths at max_batch=2 (one waits): each output is the request's
    output decoded alone (greedy: plain decoding's), and every page is free at the end."""
    params = SAMPLING[sampling]
    engine = BatchEngine(model, drafter_for(model, kind), max_batch=2, max_length=64)
    ids = [engine.submit(p, s, n) for p, s, n in zip(PROMPTS, params, LIMITS, strict=True)]
    engine.step()
    assert (len(engine.running), len(engine.waiting)) == (2, 1)
    out = engine.run()
    assert [out[i].tokens for i in ids] == alone(model, kind, LIMITS, params)
    if sampling == "greedy":
        assert [out[i].tokens for i in ids] == plain
    assert [out[i].finish_reason for i in ids] == ["length"] * 3
    assert engine.cache.stats()["used_pages"] == 0


def test_engine_cancel_frees_the_pages(model, plain):
    """Cancelling a running and a waiting request ends them at once ("cancelled", tokens so far kept)
    and frees the running one's pages; the other request is unaffected."""
    engine = BatchEngine(model, None, max_batch=2, max_length=64)
    ids = [engine.submit(p, GREEDY, n) for p, n in zip(PROMPTS, LIMITS, strict=True)]
    engine.step()
    engine.step()
    used = engine.cache.stats()["used_pages"]
    assert engine.cancel(ids[0]) and engine.cancel(ids[2])
    assert engine.cache.stats()["used_pages"] < used
    assert not engine.cancel(ids[0]) and not engine.cancel(12345)
    out = engine.run()
    assert [out[i].finish_reason for i in ids] == ["cancelled", "length", "cancelled"]
    assert out[ids[0]].tokens == plain[0][:2] and out[ids[2]].tokens == []
    assert out[ids[1]].tokens == plain[1]
    assert engine.cache.stats()["used_pages"] == 0


LONG = [50, 50, 50]  # 3 requests of ~4 pages each in a pool of 7: they cannot all run to the end


def long_plain(model):
    return [generate_autoregressive(model, [p], n)[0].tokens for p, n in zip(PROMPTS, LONG, strict=True)]


@pytest.mark.parametrize("sampling", list(SAMPLING))
def test_engine_preempts_when_the_pool_is_full_and_outputs_stay_exact(model, sampling):
    """A KV pool too small for all requests at once: some are pre-empted (recomputed later) and every
    output still equals its single-request output."""
    params = SAMPLING[sampling]
    engine = BatchEngine(model, drafter_for(model, "ngram"), max_batch=3, max_length=80, num_pages=7)
    ids = [engine.submit(p, s, n) for p, s, n in zip(PROMPTS, params, LONG, strict=True)]
    out = engine.run()
    assert engine.stats["preemptions"] > 0
    assert sum(out[i].stats.preemptions for i in ids) == engine.stats["preemptions"]
    assert [out[i].tokens for i in ids] == alone(model, "ngram", LONG, params)
    if sampling == "greedy":
        assert [out[i].tokens for i in ids] == long_plain(model)
    assert engine.cache.stats()["used_pages"] == 0


def test_engine_rejects_when_full_with_a_reason(model):
    """``when_full="reject"``: a request that no longer fits ends as "rejected" with the reason in its
    stats, its tokens a prefix of its output; the others finish exactly."""
    engine = BatchEngine(model, None, max_batch=3, max_length=80, num_pages=7, when_full="reject")
    ids = [engine.submit(p, GREEDY, n) for p, n in zip(PROMPTS, LONG, strict=True)]
    out = engine.run()
    reference = long_plain(model)
    rejected = [j for j, i in enumerate(ids) if out[i].finish_reason == "rejected"]
    assert rejected and engine.stats["rejected"] == len(rejected)
    for j, i in enumerate(ids):
        o = out[i]
        if j in rejected:
            assert o.stats.error and "out of pages" in o.stats.error
            assert o.tokens == reference[j][: len(o.tokens)]
        else:
            assert (o.finish_reason, o.tokens) == ("length", reference[j])


@pytest.mark.parametrize("prompt", [[], [VOCAB], [-1], [3, VOCAB + 5, 4]])
def test_engine_submit_refuses_bad_input_and_queues_nothing(model, prompt):
    """An empty prompt or ids outside the vocabulary: ValueError, nothing queued or finished."""
    engine = BatchEngine(model, None, max_batch=2, max_length=64)
    with pytest.raises(ValueError):
        engine.submit(prompt, GREEDY, 4)
    assert not engine.waiting and not engine.running
    assert engine.run() == {}
