"""The continuous-batching engine on real SmolLM2-135M-Instruct: every request's output equals its
single-request output whatever its neighbours (greedy and seeded sampling, with and without padding),
requests join and leave between steps, and running out of KV pages never corrupts an output."""

import pytest

import pyspec
from pyspec.api import encode_prompts
from pyspec.data import humaneval, mtbench
from pyspec.decoding.autoregressive import generate_autoregressive
from pyspec.decoding.core import step_tokens
from pyspec.decoding.draft_policy import DraftPolicy
from pyspec.decoding.engine import PADDING, BatchEngine
from pyspec.decoding.hierarchy import build_stack
from pyspec.sampling import SamplingParams

LIMITS = [14, 30, 22, 26, 9]  # requests finish at different steps


@pytest.fixture(scope="module")
def model():
    return pyspec.load_model("smollm2-135m-instruct", progress=False)


@pytest.fixture(scope="module")
def prompts(model):
    """Mixed lengths: two MT-bench questions (chat template), two HumanEval prompts, a short one."""
    chats = encode_prompts(model, [mtbench()[0].text, mtbench()[41].text, "Hi!"])
    code = [model.tokenizer(p.text).input_ids for p in humaneval()[3:5]]
    return [chats[0], code[0], chats[1], code[1], chats[2]]


@pytest.fixture(scope="module")
def plain(model, prompts):
    return [generate_autoregressive(model, [p], n)[0].tokens for p, n in zip(prompts, LIMITS, strict=True)]


def serve(engine, prompts, sampling=None):
    sampling = sampling or [SamplingParams()] * len(prompts)
    ids = [engine.submit(p, s, n) for p, s, n in zip(prompts, sampling, LIMITS, strict=True)]
    outputs = engine.run()
    return [outputs[i] for i in ids]


@pytest.mark.parametrize("padding", PADDING)
def test_greedy_requests_equal_plain_decoding_with_any_padding(model, prompts, plain, padding):
    engine = BatchEngine(
        model, build_stack(model, ["ngram"], [4]), max_batch=3, max_length=512, padding=padding
    )
    outs = serve(engine, prompts)
    assert [o.tokens for o in outs] == plain
    assert all(o.finish_reason == "length" for o in outs)
    assert engine.stats["steps"] < sum(LIMITS)  # requests shared steps
    assert (engine.stats["padding_tokens"] > 0) == (padding in ("inputs", "both"))


def test_plain_engine_equals_plain_decoding(model, prompts, plain):
    outs = serve(BatchEngine(model, None, max_batch=4, max_length=512), prompts)
    assert [o.tokens for o in outs] == plain
    assert [o.stats.target_passes for o in outs] == LIMITS


def test_sampled_requests_do_not_depend_on_their_neighbours(model, prompts):
    """Mixed sampling settings and seeds with a draft model: each request's tokens in a batch of
    continuously joining requests equal the same request served alone."""
    sampling = [
        SamplingParams(0.8, seed=1),
        SamplingParams(),
        SamplingParams(1.0, top_k=20, seed=2),
        SamplingParams(0.7, top_p=0.9, seed=3),
        SamplingParams(1.2, seed=4),
    ]

    def engine(batch):
        return BatchEngine(
            model, build_stack(model, [model.first_layers(8)], [3]), max_batch=batch, max_length=512
        )

    together = serve(engine(3), prompts, sampling)
    for i, (p, s) in enumerate(zip(prompts, sampling, strict=True)):
        alone = engine(1)
        rid = alone.submit(p, s, LIMITS[i])
        assert alone.run()[rid].tokens == together[i].tokens, i


def test_kv_padding_holds_more_pages(model, prompts):
    peaks = {}
    for padding in ("none", "kv"):
        engine = BatchEngine(
            model, build_stack(model, ["ngram"], [4]), max_batch=5, max_length=512, padding=padding
        )
        serve(engine, prompts)
        peaks[padding] = engine.stats["peak_pages"]
    assert peaks["kv"] > peaks["none"]


def test_out_of_pages_preempts_and_outputs_stay_exact(model, prompts, plain):
    need = max(-(-(len(p) + n + 5) // 16) for p, n in zip(prompts, LIMITS, strict=True))
    engine = BatchEngine(
        model, build_stack(model, ["ngram"], [4]), max_batch=5, max_length=512, num_pages=need + 6
    )
    outs = serve(engine, prompts)
    assert engine.stats["preemptions"] > 0
    assert [o.tokens for o in outs] == plain


def test_out_of_pages_rejects_with_a_reason(model, prompts, plain):
    need = max(-(-(len(p) + n + 5) // 16) for p, n in zip(prompts, LIMITS, strict=True))
    engine = BatchEngine(
        model,
        build_stack(model, ["ngram"], [4]),
        max_batch=5,
        max_length=512,
        num_pages=need + 6,
        when_full="reject",
    )
    outs = serve(engine, prompts)
    rejected = [o for o in outs if o.finish_reason == "rejected"]
    assert rejected and engine.stats["rejected"] == len(rejected)
    assert all("out of pages" in o.stats.error for o in rejected)
    for o, ref in zip(outs, plain, strict=True):
        assert o.tokens == (ref if o.finish_reason != "rejected" else ref[: len(o.tokens)])


def test_bad_requests_are_refused(model, prompts):
    engine = BatchEngine(model, None, max_batch=2, max_length=256, num_pages=8)
    with pytest.raises(ValueError, match="empty"):
        engine.submit([])
    with pytest.raises(ValueError, match="whole KV pool"):
        engine.submit(prompts[0], max_new_tokens=200)
    with pytest.raises(ValueError, match="max_length"):
        engine.submit(list(range(300)))
    with pytest.raises(ValueError, match="padding must be"):
        BatchEngine(model, None, padding="sometimes")
    with pytest.raises(ValueError, match="when_full"):
        BatchEngine(model, None, when_full="panic")


def test_draft_policy_switches_with_load_and_stays_exact(model, prompts, plain):
    """Speculation while at most 2 run, plain decoding above: greedy outputs unchanged, both choices
    ran; a seeded sampled request keeps the batch-1 choice, so it equals its single-request output."""
    ngram = build_stack(model, ["ngram"], [4])
    policy = DraftPolicy([ngram, ngram, None])
    engine = BatchEngine(model, policy, max_batch=4, max_length=512)
    assert [o.tokens for o in serve(engine, prompts)] == plain
    assert set(engine.choices) == {"ngram(block=4)", "autoregressive"}
    assert engine.levels[model.name].drafts > 0
    assert engine.levels[model.name].accepted_tokens <= engine.levels[model.name].draft_tokens

    seeded = SamplingParams(0.9, seed=11)
    crowded = BatchEngine(model, policy, max_batch=4, max_length=512)
    sampling = [seeded] + [SamplingParams()] * 4
    together = serve(crowded, prompts, sampling)[0]
    alone = BatchEngine(
        model, DraftPolicy.fixed(build_stack(model, ["ngram"], [4])), max_batch=1, max_length=512
    )
    rid = alone.submit(prompts[0], seeded, LIMITS[0])
    assert alone.run()[rid].tokens == together.tokens


@pytest.mark.parametrize("heads", ["medusa", "hidden-transfer"])
def test_head_drafters_in_the_engine_equal_plain_decoding(model, prompts, plain, heads):
    """Medusa heads and hidden transfer draft from the target's own pass in the batch engine: the
    verifier returns their states, the core hands them to the drafter; greedy outputs equal plain
    decoding and the heads' drafts are accepted. With a tiny pool, pre-emption (states dropped, KV
    recomputed) keeps the outputs too."""
    engine = BatchEngine(model, build_stack(model, [heads], tree=[3, 2, 1]), max_batch=3, max_length=512)
    assert [o.tokens for o in serve(engine, prompts)] == plain
    counts = engine.levels[model.name]
    assert 0 < counts.accepted_tokens < counts.draft_tokens, counts
    assert engine.stats["steps"] < sum(LIMITS)
    drafter = build_stack(model, [heads])
    extra = step_tokens(DraftPolicy.fixed(drafter))  # the draft, pseudo nodes, the verifier's token
    need = max(-(-(len(p) + n + extra) // 16) for p, n in zip(prompts, LIMITS, strict=True))
    tight = BatchEngine(model, drafter, max_batch=5, max_length=512, num_pages=need + 6)
    assert [o.tokens for o in serve(tight, prompts)] == plain
    assert tight.stats["preemptions"] > 0 and tight.cache.stats()["used_pages"] == 0


def test_cancel_expire_and_pop_free_everything(model, prompts):
    engine = BatchEngine(model, build_stack(model, ["ngram"], [4]), max_batch=1, max_length=512)
    streamed = []
    first = engine.submit(
        prompts[0], max_new_tokens=40, stream=lambda rid, text: streamed.append((rid, text))
    )
    second = engine.submit(prompts[1], max_new_tokens=8)
    for _ in range(3):
        engine.step()
    assert streamed and all(rid == first for rid, _ in streamed)
    assert engine.expire(0.0) == [second]  # waited (the batch was full) and never ran
    assert engine.pop(second).finish_reason == "rejected"
    assert engine.cancel(first) and not engine.cancel(first)
    out = engine.pop(first)
    assert out.finish_reason == "cancelled" and 0 < len(out.tokens) < 40
    assert not engine.done and not engine.running and not engine.waiting
    assert engine.cache.stats()["used_pages"] == 0


def test_policy_from_plan_leaves_predicted_ties_plain(model):
    from planner.plan import Choice, Plan
    from pyspec.api import policy_from_plan
    from pyspec.hardware import hardware

    choices = {"1": Choice((("ngram", 4),), 0.02, 0.03), "4": Choice((("ngram", 1),), 0.0299, 0.03)}
    plan = Plan(model.name, hardware(), "float32", choices, model.weights_format)
    assert policy_from_plan(model, plan, 4).labels == ["ngram:4", "ngram:4", "ngram:1", "ngram:1"]
    cautious = policy_from_plan(model, plan, 4, min_gain=0.05)
    assert cautious.labels == ["ngram:4", "ngram:4", "autoregressive", "autoregressive"]
    assert cautious.for_batch(4) is None and cautious.for_batch(1) is cautious.for_batch(2)
    with pytest.raises(ValueError, match="min_gain"):
        policy_from_plan(model, plan, 4, min_gain=1.5)
