"""Autoregressive generation on real SmolLM2: stops, streaming, seeds, batches without padding."""

import pytest
import torch

import pyspec
from pyspec.sampling import SamplingParams, probabilities, sample

PROMPTS = ["Write a haiku about tea.", "Name three rivers in Europe, one per line.", "Say hello."]


@pytest.fixture(scope="module")
def model():
    return pyspec.load_model("smollm2-135m-instruct", progress=False)


def test_batch_equals_each_prompt_alone(model):
    """Prompts of different lengths decoded together give exactly what each gives alone."""
    together = pyspec.generate(model, PROMPTS, max_new_tokens=24)
    for prompt, out in zip(PROMPTS, together, strict=True):
        alone = pyspec.generate(model, prompt, max_new_tokens=24)[0]
        assert alone.tokens == out.tokens


def test_stop_string_and_streaming(model):
    streamed = {}
    out = pyspec.generate(
        model,
        PROMPTS[1],
        max_new_tokens=48,
        stop=["\n"],
        stream=lambda i, text: streamed.setdefault(i, []).append(text),
    )[0]
    assert out.finish_reason == "stop" and "\n" not in out.text and out.text
    assert "".join(streamed[0]) == out.text
    full = pyspec.generate(model, PROMPTS[1], max_new_tokens=48)[0]
    assert full.text.startswith(out.text + "\n")


def test_eos_and_length(model):
    out = pyspec.generate(model, PROMPTS[2], max_new_tokens=64)[0]
    assert out.finish_reason == "eos" and out.tokens[-1] in model.config.eos_token_ids
    short = pyspec.generate(model, PROMPTS[2], max_new_tokens=3)[0]
    assert short.finish_reason == "length" and short.tokens == out.tokens[:3]
    none = pyspec.generate(model, PROMPTS[2], max_new_tokens=0)[0]
    assert none.tokens == [] and none.finish_reason == "length"


def test_seeded_sampling_is_reproducible(model):
    kw = dict(max_new_tokens=16, temperature=0.9, top_p=0.95, top_k=50)
    a = pyspec.generate(model, PROMPTS[:2], seed=7, **kw)
    b = pyspec.generate(model, PROMPTS[:2], seed=7, **kw)
    c = pyspec.generate(model, PROMPTS[:2], seed=8, **kw)
    assert [o.tokens for o in a] == [o.tokens for o in b]
    assert [o.tokens for o in a] != [o.tokens for o in c]


def test_sampling_follows_the_distribution():
    """Empirical frequencies of seeded draws converge to probabilities() (total variation shrinks)."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    params = SamplingParams(temperature=0.8, top_k=5, top_p=0.9, seed=0)
    p = probabilities(logits, params)
    assert p[-1] == 0 and abs(p.sum().item() - 1) < 1e-6  # top-k and top-p both cut
    gen = params.generator()
    distances = []
    for n in (100, 10000):
        counts = torch.bincount(torch.tensor([sample(logits, params, gen) for _ in range(n)]), minlength=6)
        distances.append(0.5 * (counts / n - p).abs().sum().item())
    assert distances[1] < 0.02 and distances[1] < distances[0]


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    p = probabilities(logits, SamplingParams(temperature=1.0, top_p=0.8))
    torch.testing.assert_close(p, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    greedy = probabilities(logits, SamplingParams())
    assert greedy.tolist() == [1.0, 0.0, 0.0, 0.0]
