"""APAR: the ShareGPT recipe, the fine-tuned model, and forked decoding with shared-prefix KV.

The model is the real SmolLM2-135M-Instruct with the shipped APAR adapter merged. Within a stream
decoding must be exact: every stream's tokens are the greedy choices of the model over that stream's
own context (prompt, parent up to the fork, ``[Fork]``, ``[Child]``) under APAR's bans, recomputed
here without any cache sharing; sampled, the streams' tokens follow the model's exact banned law.
"""

from __future__ import annotations

import json

import pytest
import torch
from utils import null_total_variations, total_variation

from pyspec.api import encode_prompts
from pyspec.batch import StepBatch
from pyspec.decoding.apar import Stream, generate_apar, trim_draft
from pyspec.decoding.hierarchy import build_stack
from pyspec.drafters.base import Draft, Drafter
from pyspec.kv_cache import OutOfPagesError
from pyspec.models.adapters import CHILD, FORK, adapter_dir, load_apar_model
from pyspec.sampling import SamplingParams, probabilities
from pyspec.training.apar_data import Recipe, is_clean, reply_tree
from pyspec.training.apar_own import OwnReplies, own_conversations, own_prompts
from pyspec.training.sharegpt import conversations

STRUCTURED = [
    "Give me a numbered list of five tips for learning a new language, with a short explanation each.",
    "What are the main causes of climate change? Answer as a numbered list.",
]


MAX_STREAMS = 3  # below the forks of an answer: children wait for a free stream
ANSWER = 64  # max_new_tokens: the whole answer's bound


@pytest.fixture(scope="module")
def model():
    return load_apar_model()


@pytest.fixture(scope="module")
def outputs(model):
    ids = encode_prompts(model, STRUCTURED)
    return ids, generate_apar(model, ids, max_new_tokens=ANSWER, max_streams=MAX_STREAMS)


# The recipe -----------------------------------------------------------------------------------------


def test_list_reply_is_cut_into_heads_and_children():
    reply = "Here you go:\n\n1. Sleep: eight hours.\n2. Eat: greens.\n3. Walk: daily.\n\nBye."
    tree = reply_tree(reply)
    assert tree.kind == "list"
    assert tree.heads == ("Here you go:\n\n1. Sleep:", "\n2. Eat:", "\n3. Walk:", "\n\nBye.")
    assert tree.children == (" eight hours.", " greens.", " daily.")
    assert tree.text() == reply
    # a child is one line (decoding ends it at its line break): items spanning lines are not cut
    assert reply_tree(reply.replace("eight hours.", "eight hours.\n   More rest.")) is None


def test_paragraph_fallback_and_filters():
    reply = "One. Two.\n\nThree. Four.\n\nFive. Six."
    tree = reply_tree(reply)
    assert (
        tree.kind == "paragraphs"
        and tree.heads[0] == "One."
        and tree.children[0] == " Two."
        and tree.heads[1] == "\n\nThree."
    )
    assert tree.text() == reply
    assert reply_tree("One.\n\nTwo.") is None  # too few paragraphs
    assert reply_tree("One. Two.\nMore.\n\nThree. Four.\n\nFive. Six.") is None  # a two-line child
    assert not is_clean("See https://example.org for more.")
    assert not is_clean("Use `pip install` first.")
    assert not is_clean("So 3 * 4 = 12.")


def test_every_sharegpt_tree_reassembles_its_reply():
    seen = 0
    for i, conv in enumerate(conversations("train")):
        if i == 400:
            break
        tree = reply_tree(conv.reply)
        if tree is not None:
            assert tree.text() == conv.reply
            assert len(tree.heads) == len(tree.children) + 1 >= 4
            assert not any("\n" in c for c in tree.children)
            seen += 1
    assert seen > 50


def test_packed_example_gives_each_child_its_own_context(model):
    recipe = Recipe(model.tokenizer, max_tokens=2048)
    examples, stats = recipe.build("train", structured=4)
    fork, child = model.tokenizer.convert_tokens_to_ids([FORK, CHILD])
    assert stats.summary()["examples"]["main"] == 4 and stats.unstructured == 4
    tree = next(e for e in examples if e.streams > 1)
    starts = [i for i, t in enumerate(tree.tokens) if t == child]
    assert len(starts) == tree.streams - 1
    for i in starts:
        assert tree.tokens[tree.parents[i]] == fork and not tree.targets[i]  # [Child] is forced
    assert all(p < i for i, p in enumerate(tree.parents))
    plain = next(e for e in examples if e.streams == 1)
    assert fork not in plain.tokens and plain.parents == list(range(-1, len(plain.tokens) - 1))


def test_own_replies_come_first_and_loops_are_left_out(model, tmp_path):
    settings = OwnReplies(count=3)
    convs = own_prompts(3)
    replies = [
        "Sure:\n\n1. **Sleep**: eight hours.\n\n2. **Eat**: greens.\n\n3. **Walk**: daily.",
        "1. **Sleep**: more.\n\n2. **Sleep**: more.\n\n3. **Sleep**: more.",  # a loop: left out
        "A short answer without any structure.",
    ]
    cache = tmp_path / "own.jsonl"
    rows = [
        {"id": c.id, "prompt": c.prompt, "reply": r, "finish": "eos", "settings": settings.key()}
        for c, r in zip(convs, replies, strict=True)
    ]
    cache.write_text("".join(json.dumps(r) + "\n" for r in rows))
    own = list(own_conversations(settings, cache))
    assert [c.reply for c in own] == [replies[0], replies[2]]
    assert reply_tree(own[0].reply).heads[1] == "\n\n2. **Eat**:"
    examples, stats = Recipe(model.tokenizer, max_tokens=2048).build("train", structured=2, first=own)
    assert examples[0].conversation == convs[0].id + ":own" and examples[0].streams == 4
    assert examples[1].conversation == convs[2].id + ":own" and examples[1].streams == 1
    assert stats.own == {"structured": 1, "unstructured": 1} and stats.summary()["examples"]["main"] == 2


# Decoding ---------------------------------------------------------------------------------------------


def _banned_logits(model, tokens: list[int], first: int, may_fork: bool) -> torch.Tensor:
    """``[len(tokens) - first, vocab]``: the model's logits after ``tokens[first:]``, from one fresh
    causal pass, with APAR's bans: [Child] never, [Fork] not after a control token (nor when
    forbidden)."""
    fork, child = model.control_tokens
    cache = model.new_cache(num_pages=len(tokens) // 16 + 2)
    batch = StepBatch.build(cache, [cache.add_sequence()], [tokens])
    with torch.inference_mode():
        logits = model(batch, cache, logits_rows=torch.arange(first, len(tokens))).logits
    logits = logits.clone()  # a normal tensor, to ban in place
    for r, before in enumerate(tokens[first:]):
        logits[r, child] = float("-inf")
        if not may_fork or before in (fork, child):
            logits[r, fork] = float("-inf")
    return logits


def _reference_tokens(model, context: list[int], start: int, may_fork: bool) -> list[int]:
    """Greedy tokens after ``context[:start]`` recomputed over the stream's whole context."""
    return _banned_logits(model, context[:-1], start - 1, may_fork).argmax(-1).tolist()


def test_every_stream_is_the_models_own_greedy_decoding(model, outputs):
    _, outs = outputs
    assert sum(o.stats.forks for o in outs) >= 3, "the fine-tuned model should fork on list questions"
    fork, child = model.control_tokens
    for out in outs:
        for i, s in enumerate(out.streams):
            start = len(s["context"]) - len(s["tokens"])
            assert s["context"][start:] == s["tokens"]
            if not s["tokens"]:  # a child dropped before it ran: beyond the answer's bound
                assert s["finish"] == "cut"
                continue
            if s["parent"] is not None:  # the parent's context up to this child's [Fork], then [Child]
                parent = out.streams[s["parent"]]
                nth = [j for j, o in enumerate(out.streams) if o["parent"] == s["parent"]].index(i)
                p_start = len(parent["context"]) - len(parent["tokens"])
                at = [j for j, t in enumerate(parent["tokens"]) if t == fork][nth]
                assert s["context"][:start] == parent["context"][: p_start + at + 1] + [child]
            assert _reference_tokens(model, s["context"], start, s["depth"] < 1) == s["tokens"], f"stream {i}"


def test_fork_rules_and_reassembly(model, outputs):
    """The answer is the paragraph tree read in order (each [Fork] replaced by its child's text), cut
    after ``max_new_tokens`` tokens; a child ends at its item's line break."""
    _, outs = outputs
    fork, child = model.control_tokens
    for out in outs:
        assert out.stats.max_live_streams <= MAX_STREAMS
        for s in out.streams:
            assert child not in s["tokens"]
            if s["depth"] >= 1:
                assert fork not in s["tokens"]  # max_depth=1
                assert "\n" not in s["text"].strip()  # the item's line break ends it
                assert s["finish"] in ("stop", "item", "length", "cut")
        main = out.streams[0]["text"]
        heads = main.split(FORK)
        children = [s["text"] for s in out.streams[1:]]
        whole = "".join(h + c for h, c in zip(heads, children + [""], strict=True))
        assert whole.startswith(out.text) and out.text.strip()
        assert 0 < out.stats.answer_tokens <= ANSWER
        if out.finish_reason == "stop":
            assert out.text == whole
        else:
            assert out.stats.answer_tokens == ANSWER
    assert any(s["finish"] == "stop" for out in outs for s in out.streams[1:])


def test_a_child_ends_at_its_first_line_break_after_text():
    """The item-end rule on token texts: leading line breaks are kept, the first one after text ends
    the item, and the text before it on that token is kept as the stream's tail."""
    s = Stream(None, 1, 0, 1, [], 0, cap=8)
    assert [s._ends_item(t) for t in ("\n", " ", " Sleep", " well")] == [False] * 4
    assert s._ends_item(".\n\n") and s.tail == "."
    t = Stream(None, 1, 0, 1, [], 0, cap=8)
    assert not t._ends_item(" \n") and t._ends_item(" A\n") and t.tail == " A"


def _same_answer(a, b) -> None:
    """Two schedules of one request: the same answer; each stream's tokens are a prefix of the other's
    (a stream beyond the bound stops once the schedule shows it, which may take more or fewer steps)."""
    assert a.text == b.text and a.stats.answer_tokens == b.stats.answer_tokens
    assert a.finish_reason == b.finish_reason
    for x, y in zip(a.streams, b.streams, strict=False):
        n = min(len(x["tokens"]), len(y["tokens"]))
        assert x["tokens"][:n] == y["tokens"][:n] and x["parent"] == y["parent"]


def test_stream_limit_only_delays_children(model, outputs):
    ids, outs = outputs
    wide = generate_apar(model, ids, max_new_tokens=ANSWER, max_streams=16)
    one = generate_apar(model, ids, max_new_tokens=ANSWER, max_streams=1)
    for a, b, c in zip(outs, wide, one, strict=True):
        _same_answer(a, b)
        _same_answer(a, c)
        assert c.stats.target_passes >= a.stats.target_passes >= b.stats.target_passes
    assert any(b.stats.max_live_streams > MAX_STREAMS for b in wide)  # the limit did bind


def test_children_share_the_prefix_kv(model, outputs):
    _, outs = outputs
    # without sharing, every stream would hold its whole context (prompt, parent prefix, own tokens)
    unshared = sum(-(-len(s["context"]) // 16) for out in outs for s in out.streams)
    peak = outs[0].stats.peak_pages  # one batch: the peak is the batch's
    assert all(out.stats.peak_pages == peak for out in outs)
    assert sum(out.stats.forks for out in outs) and peak < unshared


def test_sequential_decoding_of_the_same_model_does_not_fork(model):
    ids = encode_prompts(model, STRUCTURED[:1])
    out = generate_apar(model, ids, max_new_tokens=24, max_depth=0)[0]
    assert out.stats.forks == 0 and out.stats.target_passes == len(out.streams[0]["tokens"])


def test_speculative_apar_is_token_identical_and_streams_in_reading_order(model, outputs):
    ids, plain = outputs
    pieces = {0: [], 1: []}
    spec = generate_apar(
        model,
        ids,
        max_new_tokens=ANSWER,
        max_streams=MAX_STREAMS,
        drafter=build_stack(model, ["ngram"], [4]),
        stream=lambda r, text: pieces[r].append(text),
    )
    for a, b in zip(plain, spec, strict=True):
        _same_answer(a, b)
    assert [len(x) for x in pieces.values()] and all("".join(pieces[i]) == spec[i].text for i in pieces)
    assert sum(o.stats.target_passes for o in spec) <= sum(o.stats.target_passes for o in plain)


def test_head_drafters_in_apar_are_token_identical(model, outputs):
    """SmolLM2's trained Medusa heads and hidden-transfer layers drafting for the APAR model (the same
    base, an adapter merged) from its own pass, every stream for itself: the streams equal plain
    APAR's, and drafts were verified."""
    from pyspec.drafters.heads import FutureHeads
    from pyspec.drafters.hidden_transfer import HeadsDrafter
    from pyspec.models.loading import WEIGHTS_DIR

    ids, plain = outputs
    for name in ("medusa", "hidden-transfer"):
        heads = FutureHeads.load(WEIGHTS_DIR / "smollm2-135m-instruct" / f"{name}.safetensors")
        drafter = HeadsDrafter(model, heads, widths=[2, 1])
        spec = generate_apar(model, ids, max_new_tokens=ANSWER, max_streams=MAX_STREAMS, drafter=drafter)
        for a, b in zip(plain, spec, strict=True):
            _same_answer(a, b)
        target = spec[0].stats.levels[-1]
        assert target["drafted"] > 0 and target["accepted"] > 0, (name, target)


def test_max_child_tokens_bounds_each_child(model, outputs):
    """A per-child bound shortens the children that reach it and nothing before them."""
    ids, plain = outputs
    short = generate_apar(model, ids, max_new_tokens=ANSWER, max_streams=MAX_STREAMS, max_child_tokens=3)
    for a, b in zip(plain, short, strict=True):
        for x, y in zip(a.streams, b.streams, strict=False):  # a stream never sees its siblings
            n = min(len(x["tokens"]), len(y["tokens"]))
            assert x["tokens"][:n] == y["tokens"][:n]
        for y in b.streams[1:]:
            assert len(y["tokens"]) <= 3 and (y["finish"] != "length" or len(y["tokens"]) == 3)
    assert any(s["finish"] == "length" for out in short for s in out.streams[1:])


def test_sampling_is_seeded_and_never_samples_child(model):
    """A seed reproduces a sampled APAR answer, plain and speculative alike (the speculative one's
    law is checked against the exact one in test_sampled_apar_follows_the_models_distribution)."""
    ids = encode_prompts(model, STRUCTURED[:1])
    params = SamplingParams(temperature=0.8, seed=3)

    def sample(draft: bool):
        drafter = build_stack(model, ["ngram"], [3]) if draft else None
        return generate_apar(model, ids, max_new_tokens=24, sampling=params, drafter=drafter)[0]

    a, b = sample(False), sample(True)
    assert a.streams == sample(False).streams and b.streams == sample(True).streams
    assert all(model.control_tokens[1] not in s["tokens"] for s in a.streams + b.streams)


# Sampling ---------------------------------------------------------------------------------------------

LIST_CONTEXT = (  # no system prompt, to keep 200 prefills cheap; the model forks here 60% of the time
    "<|im_start|>user\nHow to sleep better?<|im_end|>\n<|im_start|>assistant\n1. Go to bed at the same time."
)
SAMPLED = SamplingParams(temperature=1.0, top_k=4)


def _banned_probabilities(model, contexts: list[list[int]], may_fork: bool = True) -> torch.Tensor:
    """``[len(contexts), vocab]``: the distribution after each context under APAR's bans."""
    rows = [_banned_logits(model, ctx, len(ctx) - 1, may_fork)[0] for ctx in contexts]
    return probabilities(torch.stack(rows), SAMPLED)


def _exact_apar_joint(model, prompt: list[int], may_fork: bool = True) -> dict[tuple, float]:
    """Exact law of (main stream's first token a, its second token b unless a ends it, and, when a is
    ``[Fork]``, the child's first token c): p(a) p(b | a) p(c | prompt, [Fork], [Child])."""
    fork, child = model.control_tokens
    first = _banned_probabilities(model, [prompt], may_fork)[0]
    support = first.nonzero().flatten().tolist()
    second = _banned_probabilities(model, [prompt + [a] for a in support], may_fork)
    child_first = _banned_probabilities(model, [prompt + [fork, child]])[0]
    joint, eos = {}, set(model.config.eos_token_ids)
    for i, a in enumerate(support):
        if a in eos:
            joint[(a,)] = float(first[a])
            continue
        for b in second[i].nonzero().flatten().tolist():
            p = float(first[a] * second[i, b])
            if a != fork:
                joint[(a, b)] = p
                continue
            for c in child_first.nonzero().flatten().tolist():
                joint[(a, b, c)] = p * float(child_first[c])
    return joint


class _ForkFirst(Drafter):
    """Proposes ``[Fork]`` then a newline as fixed candidates (``q=None``): verification accepts each
    with the model's probability of it, ``trim_draft`` cuts the newline, and right after ``[Child]``
    the proposed ``[Fork]`` is banned, so it must be rejected."""

    max_draft = 2

    def __init__(self, fork: int, newline: int) -> None:
        super().__init__("fork-first")
        self.chain = [fork, newline]

    def propose(self, keys, contexts, params, generators, budgets):
        return [Draft.chain(self.chain[:b]) if b > 0 else Draft() for b in budgets]


SAMPLED_DRAFTERS = {
    "plain": lambda m: None,
    "draft-model": lambda m: build_stack(m, [m.first_layers(8)], [2]),  # samples, never proposes [Fork]
    "ngram": lambda m: build_stack(m, ["ngram"], [2]),  # deterministic candidates from the context
    "fork-first": lambda m: _ForkFirst(m.control_tokens[0], m.tokenizer("\n").input_ids[0]),
}


@pytest.mark.parametrize("drafter", list(SAMPLED_DRAFTERS))
def test_sampled_apar_follows_the_models_distribution(model, drafter):
    """200 seeded requests continuing a list item where the model forks 60% of the time: the
    empirical law of (main's two tokens, the child's first) is as close to the exact banned law as 200
    exact draws get (below their 99th percentile), plain, with a sampling draft model, and with fixed
    candidates that propose [Fork]; the law of sequential decoding (no fork) is not."""
    fork = model.control_tokens[0]
    prompt = model.tokenizer(LIST_CONTEXT).input_ids
    exact = _exact_apar_joint(model, prompt)
    assert 0.3 < sum(p for k, p in exact.items() if k[0] == fork) < 0.8
    n, samples = 200, []
    for seeds in torch.arange(n).split(100):  # two calls keep the KV cache small
        params = [SamplingParams(1.0, 4, seed=int(s)) for s in seeds]
        outs = generate_apar(
            model, [prompt] * len(params), 2, params, max_streams=2, drafter=SAMPLED_DRAFTERS[drafter](model)
        )
        for o in outs:
            main = tuple(o.streams[0]["tokens"])
            samples.append(main + (o.streams[1]["tokens"][0],) if main[0] == fork else main)
    null = null_total_variations(exact, n)
    tv = total_variation(samples, exact)
    assert tv < null[int(0.99 * len(null))], (tv, null[len(null) // 2])
    sequential = _exact_apar_joint(model, prompt, may_fork=False)
    assert (
        0.5 * sum(abs(sequential.get(k, 0) - exact.get(k, 0)) for k in set(exact) | set(sequential))
        > null[-1]
    )


def test_trim_draft_cuts_below_fork_and_drops_child():
    tree = Draft([5, 7, 8, 9, 6], [-1, 0, 1, 0, 3])  # 7 = [Fork], 9 = [Child]
    out = trim_draft(tree, fork=7, child=9)
    assert out.tokens == [5, 7] and out.parents == [-1, 0]


def test_clear_errors(model):
    from pyspec.api import load_model

    plain = load_model("smollm2-135m-instruct")
    with pytest.raises(ValueError, match="Fork"):
        generate_apar(plain, [[1, 2, 3]])
    with pytest.raises(ValueError, match="empty"):
        generate_apar(model, [[]])
    with pytest.raises(ValueError, match="max_child_tokens"):
        generate_apar(model, [[1, 2, 3]], max_child_tokens=0)
    with pytest.raises(OutOfPagesError):
        generate_apar(model, encode_prompts(model, STRUCTURED[:1]), max_new_tokens=40, num_pages=3)
    with pytest.raises(FileNotFoundError, match="no APAR adapter"):
        load_apar_model(adapter=adapter_dir() / "missing")
