"""Verification rules where every distribution is known exactly.

A *world* gives the target's and the draft's distribution after every context, and the context each
token leads to. Many independent samples run the speculative procedure (drafting a chain or tree from
the draft, verifying against the target, vectorised over the samples) until each has emitted two
tokens; the empirical joint of those two tokens must converge to the target's exact joint. Two
worlds: a synthetic one over 4 tokens, and real SmolLM2 distributions (target and an early-exit draft)
after a real prompt, restricted to the tokens reachable under top-k sampling.
"""

from dataclasses import dataclass

import pytest
import torch

from pyspec.verify import PAD, children_table, draw, verify_greedy, verify_sampled


@dataclass
class World:
    """Row c: distributions after context c; ``child[c, t]`` is the context after token t (the last row
    is a catch-all for contexts never reached by accepted tokens: any distribution works there)."""

    target: torch.Tensor  # [C, V]
    draft: torch.Tensor  # [C, V]
    child: torch.Tensor  # [C, V] int64
    root: int = 0

    def exact_joint(self) -> torch.Tensor:
        """[V * V]: probability that the target's first two tokens are (a, b)."""
        first = self.target[self.root]
        return (first[:, None] * self.target[self.child[self.root]]).reshape(-1)


def synthetic_world(V: int = 4, depth: int = 4) -> World:
    """Random distributions for every prefix of up to ``depth`` tokens."""
    offset = [sum(V**i for i in range(n)) for n in range(depth + 2)]
    C = offset[depth + 1] + 1
    gen = torch.Generator().manual_seed(0)
    target = torch.softmax(torch.randn(C, V, generator=gen) * 1.5, -1)
    draft = torch.softmax(torch.randn(C, V, generator=gen) * 1.5, -1)
    child = torch.full((C, V), C - 1, dtype=torch.long)
    for n in range(depth):
        codes = torch.arange(V**n)
        child[offset[n] + codes] = offset[n + 1] + codes[:, None] * V + torch.arange(V)
    return World(target, draft, child)


SHAPES = {
    "chain": [-1, 0, 1],
    "tree": [-1, -1, 0, 0, 1],
}


def _depth(parents: list[int], i: int) -> int:
    d = 0
    while parents[i] >= 0:
        i, d = parents[i], d + 1
    return d


def _step(world: World, ctx: torch.Tensor, parents: list[int], mode: str, gen: torch.Generator):
    """One verification step per sample from contexts ``ctx [B]``; its first two emitted tokens (-1:
    it emitted only one)."""
    B, N = ctx.numel(), len(parents)
    tokens = torch.zeros(B, N, dtype=torch.long)
    node_ctx = torch.zeros(B, N, dtype=torch.long)
    q = torch.zeros(B, N, world.draft.shape[1])
    for i, p in enumerate(parents):
        parent_ctx = ctx if p < 0 else node_ctx[:, p]
        dist = world.draft[parent_ctx]  # [B, V]
        if mode == "sampled":
            tokens[:, i] = torch.multinomial(dist, 1, generator=gen).squeeze(1)
            q[:, i] = dist
        else:  # deterministic: the draft's rank-th most likely token, rank = index among siblings
            rank = sum(1 for j in range(i) if parents[j] == p)
            tokens[:, i] = dist.argsort(-1, descending=True)[:, rank]
        node_ctx[:, i] = world.child[parent_ctx, tokens[:, i]]
    rows = torch.cat([ctx[:, None], node_ctx], 1)
    uniforms = torch.rand(B, N + 1, generator=gen)
    v = verify_sampled(
        world.target[rows], tokens, torch.tensor([parents] * B), q if mode == "sampled" else None, uniforms
    )
    path_tok = tokens.gather(1, v.path.clamp(min=0))  # [B, N]
    one = torch.where(v.num_accepted >= 1, path_tok[:, 0], v.next_token)
    two = torch.where(v.num_accepted >= 2, path_tok[:, 1], torch.where(v.num_accepted == 1, v.next_token, -1))
    return one, two


def _run(world: World, num: int, parents: list[int], mode: str, seed: int) -> torch.Tensor:
    """First two emitted tokens of ``num`` independent runs (as a * V + b)."""
    gen = torch.Generator().manual_seed(seed)
    first, second = _step(world, torch.full((num,), world.root), parents, mode, gen)
    need = second < 0
    second[need] = _step(world, world.child[world.root, first[need]], parents, mode, gen)[0]
    return first * world.target.shape[1] + second


def _tv(samples: torch.Tensor, exact: torch.Tensor) -> float:
    empirical = torch.bincount(samples, minlength=exact.numel()).double() / samples.numel()
    return 0.5 * float((empirical - exact.double()).abs().sum())


def _check_convergence(world: World, parents: list[int], mode: str) -> dict:
    exact = world.exact_joint()
    tvs = {n: _tv(_run(world, n, parents, mode, seed=n), exact) for n in (100, 1000, 10_000, 100_000)}
    assert tvs[100_000] < 0.012, tvs
    assert tvs[100_000] < tvs[1000] and tvs[10_000] < tvs[100], tvs
    return tvs


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("mode", ["sampled", "deterministic"])
def test_emitted_tokens_follow_the_target(shape, mode):
    """Total variation to the exact joint of the first two tokens shrinks like 1/sqrt(samples)."""
    _check_convergence(synthetic_world(), SHAPES[shape], mode)


def test_the_draft_alone_is_far_from_the_target():
    """The test above can fail: the draft's own joint is far from the target's."""
    world = synthetic_world()
    draft_joint = World(world.draft, world.draft, world.child).exact_joint()
    assert 0.5 * float((draft_joint - world.exact_joint()).abs().sum()) > 0.1


def real_world(model, draft, prompt: list[int], top_k: int = 3, depth: int = 3) -> World:
    """SmolLM2's distributions (temperature 1, top-k) after ``prompt`` and after every continuation of
    up to ``depth`` tokens the target can sample, over the tokens either model can emit there."""
    from pyspec.batch import StepBatch
    from pyspec.sampling import SamplingParams, probabilities

    params = SamplingParams(temperature=1.0, top_k=top_k)

    def rows(m, contexts: list[tuple[int, ...]]) -> torch.Tensor:
        """Distributions after the prompt and after each context (a tree of continuations)."""
        cache = m.new_cache(num_pages=32, page_size=16)
        seq = cache.add_sequence()
        batch = StepBatch.build(cache, [seq], [prompt])
        with torch.inference_mode():
            first = m(batch, cache).logits
        batch.commit(cache)
        nodes = contexts[1:]
        if not nodes:
            return probabilities(first, params)
        parents = torch.tensor([contexts.index(c[:-1]) - 1 for c in nodes])
        batch = StepBatch.build(cache, [seq], [[c[-1] for c in nodes]], parents=[parents])
        with torch.inference_mode():
            rest = m(batch, cache, logits_rows=torch.arange(len(nodes))).logits
        return probabilities(torch.cat([first, rest]), params)

    contexts: list[tuple[int, ...]] = [()]
    for d in range(depth):
        target = rows(model, contexts)
        contexts += [
            c + (t,)
            for c, p in zip(contexts, target, strict=True)
            if len(c) == d
            for t in p.nonzero()[:, 0].tolist()
        ]
    target, drafted = rows(model, contexts), rows(draft, contexts)
    vocab = sorted(set((target > 0).nonzero()[:, 1].tolist()) | set((drafted > 0).nonzero()[:, 1].tolist()))
    C, index = len(contexts) + 1, {t: i for i, t in enumerate(vocab)}
    uniform = torch.full((1, len(vocab)), 1.0 / len(vocab))
    child = torch.full((C, len(vocab)), C - 1, dtype=torch.long)
    ids = {c: i for i, c in enumerate(contexts)}
    for c, i in ids.items():
        for t, u in index.items():
            child[i, u] = ids.get(c + (t,), C - 1)
    return World(torch.cat([target[:, vocab], uniform]), torch.cat([drafted[:, vocab], uniform]), child)


@pytest.fixture(scope="module")
def smollm2_world():
    import pyspec
    from pyspec.api import encode_prompts

    model = pyspec.load_model("smollm2-135m-instruct", progress=False)
    return real_world(model, model.first_layers(20), encode_prompts(model, ["Pick a colour and say why."])[0])


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("mode", ["sampled", "deterministic"])
def test_emitted_tokens_follow_the_target_at_a_real_context(smollm2_world, shape, mode):
    """The same convergence with SmolLM2-135M as the target and its first 20 layers as the draft."""
    world = smollm2_world
    draft_joint = World(world.draft, world.draft, world.child).exact_joint()
    assert 0.5 * float((draft_joint - world.exact_joint()).abs().sum()) > 0.1  # the test can fail
    _check_convergence(world, SHAPES[shape], mode)


def test_greedy_keeps_the_longest_matching_path():
    # tree: 0 and 1 are roots; 2 under 0; 3 under 2; 4 under 1
    parents = torch.tensor([[-1, -1, 0, 2, 1]])
    tokens = torch.tensor([[3, 5, 6, 8, 9]])
    argmax = torch.tensor([[5, 0, 0, 0, 0, 9]])  # after context: 5 (node 1); after node 1 (row 2): 0
    argmax[0, 2] = 9  # after node 1 the target wants 9 = node 4
    v = verify_greedy(argmax, tokens, parents)
    assert v.accepted(0) == [1, 4] and int(v.next_token[0]) == int(argmax[0, 5])


def test_greedy_equals_sampled_with_one_hot_target():
    gen = torch.Generator().manual_seed(3)
    B, N, vocab = 64, 6, 5
    parents = torch.tensor([[-1, 0, 0, 1, 2, -1]] * B)
    tokens = torch.randint(0, vocab, (B, N), generator=gen)
    argmax = torch.randint(0, vocab, (B, N + 1), generator=gen)
    greedy = verify_greedy(argmax, tokens, parents)
    sampled = verify_sampled(
        torch.nn.functional.one_hot(argmax, vocab).float(),
        tokens,
        parents,
        None,
        torch.rand(B, N + 1, generator=gen),
    )
    assert torch.equal(greedy.path, sampled.path) and torch.equal(greedy.next_token, sampled.next_token)


def test_padding_nodes_are_never_visited():
    parents = torch.tensor([[-1, PAD, PAD], [-1, 0, 1]])
    tokens = torch.tensor([[1, 1, 1], [1, 1, 1]])
    argmax = torch.ones(2, 4, dtype=torch.long)
    v = verify_greedy(argmax, tokens, parents)
    assert v.num_accepted.tolist() == [1, 3]


def test_bad_trees_are_refused():
    with pytest.raises(ValueError, match="parents must come first"):
        children_table(torch.tensor([[1, -1]]))
    with pytest.raises(ValueError, match="rows"):
        verify_greedy(
            torch.zeros(1, 2, dtype=torch.long),
            torch.zeros(1, 3, dtype=torch.long),
            torch.tensor([[-1, 0, 1]]),
        )


def test_draw_never_picks_zero_probability():
    probs = torch.tensor([[0.0, 0.3, 0.0, 0.7, 0.0]] * 3)
    assert draw(probs, torch.tensor([0.0, 0.5, 1.0 - 1e-12])).tolist() == [1, 3, 3]
