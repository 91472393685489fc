"""Profiling on real SmolLM2, plans as JSON, and decoding with a plan (lossless, hardware checked)."""

import dataclasses
import warnings

import pytest

import pyspec
from planner.plan import Plan, make_plan
from pyspec.data import calibration, humaneval
from pyspec.profile import hardware, profile


@pytest.fixture(scope="module")
def model():
    return pyspec.load_model("smollm2-135m-instruct", progress=False)


@pytest.fixture(scope="module")
def measured(model):
    prompts = [model.tokenizer(p.text).input_ids for p in calibration(humaneval(), 8)[:2]]
    return profile(model, ["ngram", "early:8"], prompts, batch_sizes=(1, 4), sizes=(1, 2, 4, 8), repeats=1)


def test_profile_measures_every_model_and_pair(measured):
    assert set(measured["latency"]) == {"1", "4"}
    for curves in measured["latency"].values():
        assert set(curves) == {"ngram", "early:8", "smollm2-135m-instruct"}
    alpha = measured["alpha"]
    assert len(alpha) == 3 and all(alpha[k][k] == 1.0 for k in range(3))
    assert 0.0 < alpha[0][2] < 1.0  # prompt lookup on code is right sometimes, not always
    t = measured["latency"]["1"]["smollm2-135m-instruct"]["seconds"]
    assert t[0] < measured["latency"]["4"]["smollm2-135m-instruct"]["seconds"][0] * 2  # batching is cheaper
    assert measured["hardware"] == hardware()


def test_plan_round_trips_and_decodes_losslessly(model, measured):
    plan = make_plan(measured, max_block=8)
    assert Plan.from_json(plan.to_json()) == plan
    text = "Write a Python function that reverses a string."
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same hardware: no warning
        out = pyspec.generate(model, text, max_new_tokens=32, plan=plan)[0]
    assert out.tokens == pyspec.generate(model, text, max_new_tokens=32)[0].tokens


def test_a_plan_from_other_hardware_warns_and_a_wrong_target_fails(model, measured):
    plan = make_plan(measured, max_block=8)
    other = dataclasses.replace(plan, hardware={**plan.hardware, "cpu": "another CPU"})
    with pytest.warns(UserWarning, match="other hardware \\(cpu differ"):
        pyspec.generate(model, "Hi", max_new_tokens=4, plan=other)
    wrong = dataclasses.replace(plan, target="qwen2.5-coder-1.5b-instruct")
    with pytest.raises(ValueError, match="plan is for target"):
        pyspec.generate(model, "Hi", max_new_tokens=4, plan=wrong)


def test_cli_generates_with_a_plan_file(measured, tmp_path, capsys):
    from pyspec.cli import main

    path = tmp_path / "plan.json"
    path.write_text(make_plan(measured, max_block=8).to_json())
    args = ["generate", "--plan", str(path), "--compare", "--max-new-tokens", "16", "--prompt", "Say hello."]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "outputs identical" in err or "[autoregressive:" in err
