"""Verification rules in a small-vocabulary world where every distribution is known exactly.

A synthetic target and draft give a distribution for every prefix over V = 4 tokens (fixed random
tables). Many independent samples run the speculative procedure (drafting trees from the draft,
verifying against the target, vectorised over the samples) until each has emitted two tokens; the
empirical joint distribution of those two tokens must converge to the target's exact joint.
"""

import pytest
import torch

from pyspec.verify import PAD, children_table, draw, verify_greedy, verify_sampled

V = 4
MAX_LEN = 4  # longest prefix with a table entry


def _offset(length: int) -> int:
    return sum(V**i for i in range(length))


def _tables(seed: int, sharp: float) -> torch.Tensor:
    """[num_prefixes, V] distributions; prefix (t_1..t_l) has row offset(l) + code(t)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(_offset(MAX_LEN + 1), V, generator=gen) * sharp, -1)


TARGET = _tables(0, 1.5)
DRAFT = _tables(1, 1.5)


def _row(length: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    offsets = torch.tensor([_offset(n) for n in range(MAX_LEN + 1)])
    return offsets[length] + code


def _exact_joint() -> torch.Tensor:
    first = TARGET[_offset(0)]
    return torch.stack([first[a] * TARGET[_offset(1) + a] for a in range(V)]).reshape(-1)  # [V * V]


SHAPES = {
    "chain": [-1, 0, 1],
    "tree": [-1, -1, 0, 0, 1],
}


def _run(num: int, parents: list[int], mode: str, seed: int) -> torch.Tensor:
    """First two emitted tokens of ``num`` independent runs (as a * V + b)."""
    gen = torch.Generator().manual_seed(seed)
    N = len(parents)
    depth = [_depth(parents, i) + 1 for i in range(N)]
    first = _step(
        torch.zeros(num, dtype=torch.long), torch.zeros(num, dtype=torch.long), parents, depth, mode, gen
    )
    second = torch.where(first[1] >= 0, first[1], -1)
    need = second < 0
    again = _step(torch.ones(int(need.sum()), dtype=torch.long), first[0][need], parents, depth, mode, gen)
    second[need] = again[0]
    return first[0] * V + second


def _step(ctx_len, ctx_code, parents, depth, mode, gen):
    """One verification step per sample; returns its first two emitted tokens (-1: only one)."""
    B, N = ctx_len.numel(), len(parents)
    tokens = torch.zeros(B, N, dtype=torch.long)
    codes = torch.zeros(B, N, dtype=torch.long)
    q = torch.zeros(B, N, V)
    for i, p in enumerate(parents):
        parent_code = ctx_code if p < 0 else codes[:, p]
        dist = DRAFT[_row(ctx_len + depth[i] - 1, parent_code)]  # [B, V]
        if mode == "sampled":
            tokens[:, i] = torch.multinomial(dist, 1, generator=gen).squeeze(1)
            q[:, i] = dist
        else:  # deterministic: the draft's rank-th most likely token, rank = index among siblings
            rank = sum(1 for j in range(i) if parents[j] == p)
            tokens[:, i] = dist.argsort(-1, descending=True)[:, rank]
        codes[:, i] = parent_code * V + tokens[:, i]
    rows = torch.stack(
        [_row(ctx_len, ctx_code)] + [_row(ctx_len + depth[i], codes[:, i]) for i in range(N)], 1
    )
    uniforms = torch.rand(B, N + 1, generator=gen)
    v = verify_sampled(
        TARGET[rows], tokens, torch.tensor([parents] * B), q if mode == "sampled" else None, uniforms
    )
    path_tok = tokens.gather(1, v.path.clamp(min=0))  # [B, N]
    one = torch.where(v.num_accepted >= 1, path_tok[:, 0], v.next_token)
    two = torch.where(v.num_accepted >= 2, path_tok[:, 1], torch.where(v.num_accepted == 1, v.next_token, -1))
    return one, two


def _depth(parents: list[int], i: int) -> int:
    d = 0
    while parents[i] >= 0:
        i, d = parents[i], d + 1
    return d


def _tv(samples: torch.Tensor, exact: torch.Tensor) -> float:
    empirical = torch.bincount(samples, minlength=exact.numel()).double() / samples.numel()
    return 0.5 * float((empirical - exact.double()).abs().sum())


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("mode", ["sampled", "deterministic"])
def test_emitted_tokens_follow_the_target(shape, mode):
    """Total variation to the exact joint of the first two tokens shrinks like 1/sqrt(samples)."""
    exact = _exact_joint()
    tvs = {n: _tv(_run(n, SHAPES[shape], mode, seed=n), exact) for n in (100, 1000, 10_000, 100_000)}
    assert tvs[100_000] < 0.012, tvs
    assert tvs[100_000] < tvs[1000] and tvs[10_000] < tvs[100], tvs


def test_the_draft_alone_is_far_from_the_target():
    """The test above can fail: the draft's own joint is far from the target's."""
    first = DRAFT[_offset(0)]
    draft_joint = torch.stack([first[a] * DRAFT[_offset(1) + a] for a in range(V)]).reshape(-1)
    assert 0.5 * float((draft_joint - _exact_joint()).abs().sum()) > 0.1


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
