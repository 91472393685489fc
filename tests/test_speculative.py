"""Speculative decoding on the real SmolLM2-135M-Instruct: greedy output token-identical to
autoregressive decoding for every mode, sampling that follows the target's distribution.

Until trained drafts exist, the same-vocabulary drafts are built from the target itself: its first
layers plus its head (``first_layers``), which accept some tokens and reject many, so both paths of
the verification are exercised. The n-gram drafter needs no weights. Drafts with another tokenizer go
through UTF-8 bytes (``utils.ByteTokenizer``, a real if minimal tokenizer): SmolLM2's ids are
re-tokenized to bytes and back, or an n-gram lookup runs over the bytes.
"""

import pytest
import torch
from utils import BYTES, null_total_variations, total_variation

import pyspec
from pyspec.api import encode_prompts
from pyspec.data import humaneval, mtbench
from pyspec.decoding.autoregressive import generate_autoregressive
from pyspec.decoding.hierarchy import build_stack
from pyspec.decoding.speculative import generate_speculative
from pyspec.drafters.cross import CrossTokenizerDrafter
from pyspec.drafters.model import ModelDrafter, TreeShape
from pyspec.drafters.ngram import NgramDrafter
from pyspec.models.config import ModelConfig
from pyspec.models.llama import LlamaModel
from pyspec.sampling import SamplingParams

NEW_TOKENS = 40


def via_bytes(model, draft, block):
    """``draft``'s chains re-tokenized SmolLM2 -> bytes -> SmolLM2 (two cross-tokenizer hops)."""
    to_bytes = CrossTokenizerDrafter(ModelDrafter(draft, block), model.tokenizer, BYTES, max_tokens=4 * block)
    return CrossTokenizerDrafter(to_bytes, BYTES, model.tokenizer)


@pytest.fixture(scope="module")
def model():
    return pyspec.load_model("smollm2-135m-instruct", progress=False)


@pytest.fixture(scope="module")
def prompts(model):
    """Two MT-bench questions (chat) and two HumanEval completions (raw code): mixed lengths."""
    chat = encode_prompts(model, [p.text for p in mtbench()[8:10]])
    code = [model.tokenizer(p.text).input_ids for p in humaneval()[:2]]
    return chat + code


@pytest.fixture(scope="module")
def reference(model, prompts):
    return [o.tokens for o in generate_autoregressive(model, prompts, NEW_TOKENS)]


STACKS = {
    "ngram": lambda m: build_stack(m, ["ngram"], [5]),
    "chain": lambda m: build_stack(m, [m.first_layers(22)], [3]),
    "tree": lambda m: build_stack(m, [m.first_layers(22)], tree=TreeShape.branching([3, 2, 1])),
    "tree-sampled-children": lambda m: build_stack(
        m, [m.first_layers(22)], tree=TreeShape.branching([2, 2]), tree_sampling="sample"
    ),
    "2-level": lambda m: build_stack(m, ["ngram", m.first_layers(22)], [3, 4]),
    "3-level": lambda m: build_stack(m, ["ngram", m.first_layers(12), m.first_layers(24)], [2, 3, 4]),
    "2-level-tree": lambda m: build_stack(m, ["ngram", m.first_layers(22)], [3, 4], tree=[3, 2, 1]),
    "cross-bytes-ngram": lambda m: CrossTokenizerDrafter(NgramDrafter(12, max_ngram=8), BYTES, m.tokenizer),
    "cross-via-bytes": lambda m: via_bytes(m, m.first_layers(22), 3),
}


@pytest.mark.parametrize("stack", list(STACKS))
def test_greedy_is_token_identical_to_autoregressive(model, prompts, reference, stack):
    """A batch of mixed MT-bench and HumanEval prompts: every sequence equals its autoregressive
    output, and the drafts were really used (some accepted, some rejected)."""
    out = generate_speculative(model, prompts, STACKS[stack](model), NEW_TOKENS)
    assert [o.tokens for o in out] == reference
    target = out[0].stats.levels[-1]
    assert 0 < target["accepted"] < target["drafted"], target
    assert sum(o.stats.target_passes for o in out) < sum(len(o.tokens) for o in out)


def test_a_bfloat16_draft_changes_no_token(model, prompts, reference):
    """A registry draft with ``@bf16`` runs in bfloat16 (the real SmolLM2 weights, rounded): its
    drafts differ from the fp32 target's own choices now and then, and the output does not."""
    from pyspec.spec import resolve_candidate

    draft = resolve_candidate(model, "smollm2-135m-instruct@bf16")
    assert draft.embed_tokens.dtype == torch.bfloat16 and draft.name == "smollm2-135m-instruct@bf16"
    out = generate_speculative(model, prompts, build_stack(model, [draft], [4]), NEW_TOKENS)
    assert [o.tokens for o in out] == reference
    target = out[0].stats.levels[-1]
    assert target["accepted"] > 0.5 * target["drafted"], target
    with pytest.raises(ValueError, match="@bf16"):
        resolve_candidate(model, "smollm2-135m-instruct@fp8")


def test_stops_like_autoregressive(model):
    """End of sequence, stop strings and the length limit cut the output where plain decoding does."""
    kw = dict(max_new_tokens=64, stop=["\n"])
    prompts = ["Say hello.", "Name three rivers in Europe, one per line."]
    for drafts in (["ngram"], [model.first_layers(22)]):
        spec = pyspec.generate(model, prompts, drafts=drafts, **kw)
        plain = pyspec.generate(model, prompts, **kw)
        assert [(o.tokens, o.text, o.finish_reason) for o in spec] == [
            (o.tokens, o.text, o.finish_reason) for o in plain
        ]
        short = pyspec.generate(model, prompts[1], drafts=drafts, max_new_tokens=3)[0]
        assert short.finish_reason == "length" and len(short.tokens) == 3


def _exact_two_token_joint(model, prompt, params):
    """Exact distribution of the first two sampled tokens: p(a) * p(b | a) over a's support."""
    from pyspec.batch import StepBatch
    from pyspec.sampling import probabilities

    cache = model.new_cache(num_pages=64, page_size=16)
    seq = cache.add_sequence()
    batch = StepBatch.build(cache, [seq], [prompt])
    with torch.inference_mode():
        first = probabilities(model(batch, cache).logits[0], params)
    batch.commit(cache)
    support = first.nonzero().flatten().tolist()
    parents = torch.full((len(support),), -1)  # every first token as a sibling right after the prompt
    batch = StepBatch.build(cache, [seq], [support], parents=[parents])
    with torch.inference_mode():
        second = probabilities(model(batch, cache, logits_rows=torch.arange(len(support))).logits, params)
    return {
        (a, b): float(first[a] * second[i, b])
        for i, a in enumerate(support)
        for b in second[i].nonzero()[:, 0].tolist()
    }


SAMPLED_STACKS = {
    "chain": lambda m: build_stack(m, [m.first_layers(16)], [3]),
    "tree": lambda m: build_stack(m, [m.first_layers(16)], tree=TreeShape.branching([2, 2])),
    "tree-sampled-children": lambda m: build_stack(
        m, [m.first_layers(16)], tree=TreeShape.branching([2, 2]), tree_sampling="sample"
    ),
    "2-level": lambda m: build_stack(m, [m.first_layers(8), m.first_layers(16)], [2, 3]),
    "2-level-tree": lambda m: build_stack(m, [m.first_layers(8), m.first_layers(16)], [2, 3], tree=[2, 2]),
    "cross-via-bytes": lambda m: via_bytes(m, m.first_layers(16), 3),
}


@pytest.mark.parametrize("stack", list(SAMPLED_STACKS))
def test_sampling_end_to_end_matches_the_target(model, stack):
    """Seeded sequences of one real prompt sampled through the whole loop (drafter, verifier, KV
    rollback; temperature 1, top-k 4): the empirical joint of their first two tokens is as close to
    the target's exact joint as plain sampling with as many draws gets (below its 99th percentile),
    and the draft's own joint is not. tests/test_verify.py checks convergence up to 1e5 samples."""
    prompt = model.tokenizer("My favourite colour is").input_ids
    params = SamplingParams(temperature=1.0, top_k=4)
    exact = _exact_two_token_joint(model, prompt, params)
    n = 300
    seeded = [SamplingParams(1.0, 4, 1.0, seed=s) for s in range(n)]
    out = generate_speculative(model, [prompt] * n, SAMPLED_STACKS[stack](model), 2, seeded)
    tv_spec = total_variation([tuple(o.tokens) for o in out], exact)
    null = null_total_variations(exact, n)
    draft_exact = _exact_two_token_joint(model.first_layers(16), prompt, params)
    tv_draft = 0.5 * sum(abs(draft_exact.get(k, 0) - exact.get(k, 0)) for k in set(exact) | set(draft_exact))
    assert tv_spec < null[int(0.99 * len(null))], (tv_spec, null[len(null) // 2])
    assert tv_draft > null[-1], tv_draft


def test_seeded_speculative_sampling_is_deterministic(model):
    kw = dict(
        max_new_tokens=24, temperature=0.8, top_p=0.95, drafts=[model.first_layers(16)], block_sizes=[3]
    )
    a = pyspec.generate(model, ["Tell me a joke.", "Write a limerick."], seed=11, **kw)
    b = pyspec.generate(model, ["Tell me a joke.", "Write a limerick."], seed=11, **kw)
    c = pyspec.generate(model, ["Tell me a joke.", "Write a limerick."], seed=12, **kw)
    assert [o.tokens for o in a] == [o.tokens for o in b] != [o.tokens for o in c]


def test_mixed_greedy_and_sampled_batch(model, prompts, reference):
    """Greedy sequences stay token-identical when sampled sequences share their batch."""
    params = [
        SamplingParams(),
        SamplingParams(0.9, 0, 0.9, seed=1),
        SamplingParams(),
        SamplingParams(1.0, 20),
    ]
    out = generate_speculative(
        model, prompts, build_stack(model, ["ngram", model.first_layers(22)], [3, 3]), NEW_TOKENS, params
    )
    assert out[0].tokens == reference[0] and out[2].tokens == reference[2]


def test_a_draft_with_another_vocabulary_is_refused(model):
    """Random weights: only the vocabulary size matters here."""
    cfg = ModelConfig(
        vocab_size=1000, hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=2, intermediate_size=128
    )
    other = LlamaModel(cfg)
    other.name = "other-vocab"
    with pytest.raises(ValueError, match="vocabulary of 1000 tokens but the target"):
        pyspec.generate(model, "Hi", drafts=[other])
    with pytest.raises(ValueError, match="bottom level"):
        pyspec.generate(model, "Hi", drafts=[model.first_layers(4), "ngram"])
    with pytest.raises(ValueError, match="n-gram drafter proposes chains"):
        pyspec.generate(model, "Hi", drafts=["ngram"], tree=[2, 2])
    with pytest.raises(ValueError, match="per-depth widths"):
        pyspec.generate(model, "Hi", drafts=["ngram", model.first_layers(4)], tree=TreeShape.chain(2))


def test_a_large_tree_fits_the_cache(model, prompts, reference):
    """84 draft nodes per step: the caches are sized from the drafter's largest proposal."""
    stack = build_stack(model, [model.first_layers(6)], tree=TreeShape.branching([4, 4, 4]))
    out = generate_speculative(model, prompts[:1], stack, 16)
    assert out[0].tokens == reference[0][:16]


def test_cli_compares_with_plain_decoding(capsys):
    from pyspec.cli import main

    args = ["generate", "--draft", "ngram", "--compare", "--max-new-tokens", "24", "--prompt", "Say hello."]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "speculative (ngram > smollm2-135m-instruct)" in err and "outputs identical" in err
