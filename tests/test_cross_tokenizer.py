"""Drafts with another tokenizer: the re-tokenization itself on the real SmolLM2 tokenizer, how
build_stack joins levels, and the real pair SmolLM2-135M -> Qwen2.5-Coder-1.5B (greedy output
token-identical to Qwen's own), skipped when Qwen is not installed (``make qwen``).

Lossless greedy and sampled decoding through re-tokenized drafts on SmolLM2 is in
tests/test_speculative.py (the ``cross-*`` stacks)."""

import pytest
from utils import BYTES

import pyspec
from pyspec.api import encode_prompts
from pyspec.data import humaneval, mtbench
from pyspec.decoding.autoregressive import generate_autoregressive
from pyspec.decoding.hierarchy import HierarchyLevel, build_stack
from pyspec.decoding.speculative import generate_speculative
from pyspec.drafters.cross import CrossTokenizerDrafter
from pyspec.drafters.model import ModelDrafter
from pyspec.drafters.ngram import NgramDrafter


@pytest.fixture(scope="module")
def smollm2():
    return pyspec.load_model("smollm2-135m-instruct", progress=False)


def test_retokenize_continues_the_context_as_the_verifier_would(smollm2):
    """Bytes proposing the rest of a line give SmolLM2's own tokens of it, as tokenized in context."""
    tok = smollm2.tokenizer
    drafter = CrossTokenizerDrafter(NgramDrafter(), BYTES, tok)
    whole = tok("def add(a, b):\n    return a + b", add_special_tokens=False).input_ids
    for cut in (2, 5, 9):
        context = whole[:cut]
        text = tok.decode(context)
        rest = tok.decode(whole)[len(text) :]
        got = drafter.retokenize(context, list(text.encode()), list(rest.encode()))
        assert got == whole[cut:], (cut, tok.convert_ids_to_tokens(got))


def test_an_incomplete_character_is_left_out(smollm2):
    """A proposal that ends inside a UTF-8 character proposes the complete characters before it."""
    drafter = CrossTokenizerDrafter(NgramDrafter(), BYTES, smollm2.tokenizer)
    context = list(b"Caf")
    cut = list("é au lait".encode())[:1]  # the first byte of é
    assert drafter.continuation(context, cut) == ""
    assert drafter.continuation(context, list("é à".encode())[:-1]) == "é "


def test_a_proposal_that_merges_into_the_context_is_encoded_alone(smollm2):
    """When the context's last token would merge with the proposal (" hel" + "lo" -> " hello"), the
    proposal's own tokens are proposed: the context's tokens are never changed."""
    tok = smollm2.tokenizer
    drafter = CrossTokenizerDrafter(NgramDrafter(), BYTES, tok)
    context = tok("Say hel", add_special_tokens=False).input_ids
    got = drafter.retokenize(context, list(b"Say hel"), list(b"lo world"))
    assert tok.decode(context + got) == "Say hello world"
    assert got == tok("lo world", add_special_tokens=False).input_ids


def test_build_stack_wraps_levels_of_another_tokenizer(smollm2):
    """A draft whose tokenizer differs from the level above is re-tokenized; one that shares it is
    not; a tree cannot be re-tokenized; a model without a tokenizer is refused."""
    other = smollm2.first_layers(4)
    other.tokenizer = BYTES  # another tokenizer over the same ids: only the wrapping is checked here
    other.config = smollm2.config
    stack = build_stack(smollm2, ["ngram", smollm2.first_layers(8), other], [3, 3, 3])
    assert isinstance(stack, CrossTokenizerDrafter)
    assert isinstance(stack.draft, HierarchyLevel) and isinstance(stack.draft.lower, CrossTokenizerDrafter)
    assert isinstance(build_stack(smollm2, [smollm2.first_layers(8)], [3]), ModelDrafter)
    with pytest.raises(ValueError, match="no tree with another tokenizer"):
        build_stack(smollm2, [other], tree=[2, 2])
    with pytest.raises(ValueError, match="max_tokens"):
        CrossTokenizerDrafter(NgramDrafter(), BYTES, BYTES, max_tokens=0)
    with pytest.raises(TypeError, match="must be a tokenizer"):
        CrossTokenizerDrafter(NgramDrafter(), "bytes", BYTES)


def test_a_draft_out_of_cache_stops_drafting_and_loses_nothing(smollm2):
    """A draft whose caches are sized far too small (``length_ratio``) runs out of pages: a warning,
    no more drafts, and the output is still the target's own. (Its cache holds 3 pages of 16.)"""
    prompt = encode_prompts(smollm2, "Name three colours, then three more. " * 12)  # ~130 tokens
    reference = generate_autoregressive(smollm2, prompt, 12)[0].tokens
    tok = smollm2.tokenizer
    tiny = CrossTokenizerDrafter(ModelDrafter(smollm2.first_layers(4), 3), tok, tok, length_ratio=0.01)
    with pytest.warns(UserWarning, match="without its drafts"):
        out = generate_speculative(smollm2, prompt, tiny, 12)
    assert out[0].tokens == reference and tiny.exhausted


def test_smollm2_drafts_for_qwen_are_lossless(qwen, smollm2):
    """Qwen2.5-Coder-1.5B verifying SmolLM2-135M's drafts (and n-gram -> SmolLM2 -> Qwen) on a
    HumanEval and an MT-bench prompt: token-identical to Qwen's greedy output, drafts accepted."""
    prompts = encode_prompts(qwen, [humaneval()[0].text, mtbench()[0].text])
    reference = [o.tokens for o in generate_autoregressive(qwen, prompts, 24)]
    for drafts, blocks in (([smollm2], [4]), (["ngram", smollm2], [3, 4])):
        out = generate_speculative(qwen, prompts, build_stack(qwen, drafts, blocks), 24)
        assert [o.tokens for o in out] == reference, blocks
        top = out[0].stats.levels[-1]
        assert 0 < top["accepted"] <= top["drafted"], top
