"""rotary_embedding: the Llama/Qwen2 rotate-half convention at explicit per-token positions."""

import pytest
import torch
from utils import DEVICES

from pyspec import ops, reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("head_dim", [64, 110, 2])
@pytest.mark.parametrize("base", [10000.0, 1000000.0])
def test_matches_reference_fp32(device, head_dim, base):
    gen = torch.Generator().manual_seed(head_dim)
    x = torch.randn(37, 5, head_dim, generator=gen).to(device)
    positions = torch.randint(0, 32768, (37,), generator=gen).to(device)
    inv_freq = ops.rope_inv_freq(head_dim, base, device)
    torch.testing.assert_close(
        ops.rotary_embedding(x, positions, inv_freq),
        reference.rotary_embedding(x, positions, inv_freq),
        atol=3e-6,
        rtol=1e-5,
    )


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16(device):
    x = torch.randn(9, 3, 64).to(device, torch.bfloat16)
    positions = torch.arange(9, device=device) * 100
    inv_freq = ops.rope_inv_freq(64, 10000.0, device)
    out = ops.rotary_embedding(x, positions, inv_freq)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(
        out.float(), reference.rotary_embedding(x.float(), positions, inv_freq), atol=2e-2, rtol=1e-2
    )


def test_scores_depend_only_on_relative_position():
    """The defining property of rotary embeddings: <R(m) q, R(n) k> depends on m - n only."""
    q, k = torch.randn(1, 1, 64, dtype=torch.float32), torch.randn(1, 1, 64)
    inv_freq = ops.rope_inv_freq(64, 10000.0)

    def score(m, n):
        return (
            ops.rotary_embedding(q, torch.tensor([m]), inv_freq)
            * ops.rotary_embedding(k, torch.tensor([n]), inv_freq)
        ).sum()

    torch.testing.assert_close(score(10, 3), score(107, 100), atol=1e-4, rtol=1e-4)
    assert torch.equal(ops.rotary_embedding(q, torch.tensor([0]), inv_freq), q)


def test_tree_positions_are_committed_length_plus_depth():
    """Two sibling nodes at the same depth get the same rotation; a chain's positions increase."""
    from pyspec.tree import depths

    parents = torch.tensor([-1, 0, 0, 1])
    positions = 40 + depths(parents)
    x = torch.randn(1, 2, 16).expand(4, 2, 16).contiguous()
    out = ops.rotary_embedding(x, positions, ops.rope_inv_freq(16, 10000.0))
    assert torch.equal(out[1], out[2]) and not torch.equal(out[0], out[1])
