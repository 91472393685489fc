"""Profiling on real SmolLM2, plans as JSON, and decoding with a plan (lossless, hardware checked)."""

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch

import pyspec
from planner.plan import Choice, Plan, at_context, make_plan, predict
from pyspec.data import calibration, humaneval
from pyspec.decoding.autoregressive import generate_autoregressive
from pyspec.decoding.hierarchy import build_stack
from pyspec.decoding.speculative import generate_speculative
from pyspec.drafters.model import TreeShape
from pyspec.hardware import hardware
from pyspec.profile import (
    RUN_HORIZON,
    _cross_mass,
    _logits,
    _Replay,
    _shifted,
    _View,
    acceptance,
    profile,
)


@pytest.fixture(scope="module")
def model():
    return pyspec.load_model("smollm2-135m-instruct", progress=False)


@pytest.fixture(scope="module")
def measured(model):
    prompts = [model.tokenizer(p.text).input_ids for p in calibration(humaneval(), 8)[:2]]
    return profile(
        model,
        ["ngram", "early:8"],
        prompts,
        batch_sizes=(1, 4),
        sizes=(1, 2, 4, 8),
        contexts=(128, 512),
        repeats=1,
    )


def test_profile_measures_every_model_and_pair(measured):
    assert set(measured["latency"]) == {"1", "4"}
    gains = measured["gains"][0][2]  # n-gram verified by the target, per block size
    assert len(gains) == 33 and all(sum(row[1:]) == pytest.approx(1) for row in gains[1:])
    assert len(measured["lookup_lengths"][4]) == 5 and sum(measured["lookup_lengths"][4]) == pytest.approx(1)
    tree = np.array(measured["tree"]["early:8"])
    assert tree.shape == (8, 8) and (tree.sum(1) <= 1 + 1e-9).all() and tree[0, 0] > 0
    for curves in measured["latency"].values():
        assert set(curves) == {"ngram", "early:8", "smollm2-135m-instruct"}
    alpha = measured["alpha"]
    assert len(alpha) == 3 and all(alpha[k][k] == 1.0 for k in range(3))
    assert 0.0 < alpha[0][2] < 1.0  # prompt lookup on code is right sometimes, not always
    for curves in measured["latency"].values():  # timings: positive, one per size (never compared:
        target = curves["smollm2-135m-instruct"]  # their ratios are this machine's, and noisy)
        assert len(target["seconds"]) == len(target["sizes"]) and min(target["seconds"]) > 0
    assert measured["hardware"] == hardware()
    assert set(measured["latency_by_context"]) == {"128", "512"} and measured["context"] == 128
    assert measured["latency_by_context"]["128"] == measured["latency"]
    assert at_context(measured, 600)["latency"] == measured["latency_by_context"]["512"]


def test_profile_times_each_exact_weight_format_and_plans_the_fastest(model, measured):
    """A GGUF target is timed in both exact formats (fp32 and packed, the same logits); the plan is
    costed with the faster one and records it; a model in the other format gets a warning."""
    formats = measured["target_formats"]
    assert set(formats) == {"float32", "packed"}
    totals = {
        f: sum(sum(c["seconds"]) for b in per.values() for c in b.values()) for f, per in formats.items()
    }
    assert measured["weights"] == min(totals, key=totals.get)
    assert measured["latency"]["1"]["smollm2-135m-instruct"] == formats[measured["weights"]]["128"]["1"]
    plan = make_plan(measured, max_block=8)
    assert plan.weights == measured["weights"] and Plan.from_json(plan.to_json()).weights == plan.weights
    other = dataclasses.replace(plan, weights="packed" if model.weights_format == "float32" else "float32")
    with pytest.warns(UserWarning, match="costed on the target's"):
        pyspec.generate(model, "Hi", max_new_tokens=2, plan=other)


def test_plan_round_trips_and_decodes_losslessly(model, measured):
    plan = dataclasses.replace(make_plan(measured, max_block=8), weights=model.weights_format)
    assert Plan.from_json(plan.to_json()) == plan
    text = "Write a Python function that reverses a string."
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same hardware: no warning
        out = pyspec.generate(model, text, max_new_tokens=32, plan=plan)[0]
    assert out.tokens == pyspec.generate(model, text, max_new_tokens=32)[0].tokens


def test_a_plan_from_other_hardware_warns_and_a_wrong_target_fails(model, measured):
    plan = dataclasses.replace(make_plan(measured, max_block=8), weights=model.weights_format)
    other = dataclasses.replace(plan, hardware={**plan.hardware, "cpu": "another CPU"})
    with pytest.warns(UserWarning, match="other hardware \\(cpu differ"):
        pyspec.generate(model, "Hi", max_new_tokens=4, plan=other)
    wrong = dataclasses.replace(plan, target="qwen2.5-coder-1.5b-instruct")
    with pytest.raises(ValueError, match="plan is for target"):
        pyspec.generate(model, "Hi", max_new_tokens=4, plan=wrong)


def test_cli_generates_with_a_plan_file(model, measured, tmp_path, capsys):
    """Whatever the plan chose here, the CLI prints plain decoding's text; when it speculates, the
    CLI's own comparison ran and found the outputs identical."""
    from pyspec.cli import main

    plan = make_plan(measured, max_block=8)
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    args = ["generate", "--plan", str(path), "--compare", "--max-new-tokens", "16", "--prompt", "Say hello."]
    assert main(args) == 0
    out = capsys.readouterr()
    assert out.out.startswith(pyspec.generate(model, "Say hello.", max_new_tokens=16)[0].text)
    speculates = bool(plan.for_batch(1).levels)
    assert ("outputs identical" in out.err) == speculates
    assert ("[autoregressive:" in out.err) == (not speculates)


def test_replay_counts_blocks_where_they_start():
    """A 20-token text whose positions up to 8 the drafter gets right. Blocks of 4: steps start at
    1 (gaining 5), 6 (three right, then the target's token: 4), then 10..15 (1 each); averaging over
    every position instead would count the right stretch once per position."""
    m = np.zeros((20, 8))
    for t in range(20):
        m[t, : max(0, 9 - t)] = 1.0  # from t, the tokens up to position 8 are accepted
    replay = _Replay(horizon=8)
    replay.add(m)
    gains, _ = replay.tables(0.0)
    assert gains[4] == pytest.approx([0, 6 / 8, 0, 0, 1 / 8, 1 / 8])
    assert gains[1] == pytest.approx([0, 10 / 14, 4 / 14])  # from 1, 3, 5, 7: 2 each; from 9..18: 1


def test_replayed_gains_match_the_decoding_loop(model):
    """Greedy, the replay is the loop's own sequence of steps: its mean gain per target pass equals
    the one n-gram speculative decoding reaches on the same prompt (up to the last steps)."""
    prompt = model.tokenizer(calibration(humaneval(), 8)[0].text).input_ids
    table = acceptance(model, ["ngram"], [prompt], new_tokens=96)
    replayed = np.dot(np.arange(6), table["gains"][0][1][4])
    out = generate_speculative(model, [prompt], build_stack(model, ["ngram"], [4]), 96)[0]
    actual = (len(out.tokens) - 1) / (out.stats.target_passes - 1)  # after the prefill's token
    assert replayed == pytest.approx(actual, abs=0.15)


def test_cross_tokenizer_acceptance_agrees_with_the_shared_vocabulary_case(model):
    """Lining up two tokenizations by characters (for drafts with another tokenizer) gives, when both
    tokenizations are the same, exactly the shared-vocabulary acceptance: a greedy chain drafted
    from position t is accepted through t + d when the draft's argmax is right at t..t + d."""
    prompt = model.tokenizer(calibration(humaneval(), 8)[1].text).input_ids
    tokens = generate_autoregressive(model, [prompt], 48)[0].tokens
    view = _View.of(model.tokenizer, prompt, tokens)
    assert view.n == len(tokens) and np.all(np.diff(view.ends) > 0)
    right = (_logits(model.first_layers(20), view.ids, view.start).argmax(-1) == torch.tensor(tokens)).numpy()
    assert 0 < right.sum() < len(right)
    cross = _cross_mass(view, right, view, np.ones(len(tokens)))
    shared = np.cumprod(_shifted(right.astype(float), RUN_HORIZON), axis=1)
    assert np.array_equal(np.cumprod(cross, axis=1), shared)
    other = _View.retokenized(model.tokenizer, model.tokenizer, prompt, tokens)
    assert other.ids == view.ids and np.array_equal(other.ends, view.ends)


def test_plans_choose_trees_when_they_pay_and_decode_losslessly(model, measured):
    """With a draft whose second and third choices are often right, and a target that verifies many
    tokens for the price of one, the plan is a tree; decoding with it gives the target's tokens."""
    rich = json.loads(json.dumps(measured))
    rich["tree"]["early:8"] = [[0.5, 0.2, 0.1] + [0.0] * 5] * 8
    flat = {"sizes": [1, 64], "seconds": [0.05, 0.05]}
    for curves in rich["latency"].values():
        curves["early:8"] = {"sizes": [1, 64], "seconds": [0.001, 0.001]}
        curves[rich["target"]] = flat
    choice = make_plan(rich, max_block=8).for_batch(1)
    assert choice.tree is not None and len(set(choice.tree[1])) > 1  # more than one rank: a real tree
    assert choice.seconds_per_token == pytest.approx(predict(rich, 1, choice.levels, choice.tree))
    plan = Plan(rich["target"], hardware(), "float32", {"1": choice})
    assert Plan.from_json(plan.to_json()) == plan
    text = "List three facts about the moon."
    out = pyspec.generate(model, text, max_new_tokens=24, plan=plan)[0]
    assert out.tokens == pyspec.generate(model, text, max_new_tokens=24)[0].tokens
    with pytest.raises(ValueError, match="either drafts"):
        pyspec.generate(model, text, max_new_tokens=4, plan=plan, tree=[2, 1])


def test_predictions_cover_every_configuration(measured):
    plain = predict(measured, 1, [])
    assert plain == measured["latency"]["1"]["smollm2-135m-instruct"]["seconds"][0]
    shape = TreeShape.branching([2, 1])
    for levels, tree in [
        ([("ngram", 4)], None),
        ([("ngram", 3), ("early:8", 2)], None),
        ([("early:8", 6)], (shape.parents, shape.ranks)),
    ]:
        assert 0 < predict(measured, 1, levels, tree) < 10 * plain
    assert make_plan(measured).for_batch(1).seconds_per_token <= plain + 1e-12
    assert Choice((), 0.1, 0.1).label == "autoregressive"


def test_cli_profile_then_plan_from_the_file(measured, tmp_path, capsys, monkeypatch):
    from pyspec import cli

    monkeypatch.setattr("pyspec.api.profile_model", lambda *a, **k: measured)
    profile_path, plan_path = tmp_path / "profile.json", tmp_path / "plan.json"
    assert cli.main(["profile", "--drafts", "ngram", "early:8", "--out", str(profile_path)]) == 0
    assert "ngram: accepted by" in capsys.readouterr().out
    assert cli.main(["plan", "--profile", str(profile_path), "--out", str(plan_path)]) == 0
    assert "batch 1:" in capsys.readouterr().out
    assert Plan.from_json(plan_path.read_text()) == make_plan(measured)
