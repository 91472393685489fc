"""One speculation config (pyspec.spec.SpecConfig): parsed alike from draft names, plan choices and the
command line, bad input a clear ValueError before anything loads, and generate(sampling=...) the same
as generate's separate sampling keywords (tiny random-weight models with a byte tokenizer)."""

import dataclasses
import warnings

import pytest
import torch
from utils import ByteTokenizer

import pyspec
from planner.plan import Choice, Plan
from pyspec.cli import build_parser
from pyspec.decoding.hierarchy import HierarchyLevel
from pyspec.drafters.model import TreeShape
from pyspec.drafters.ngram import NgramDrafter
from pyspec.hardware import hardware
from pyspec.models.config import ModelConfig
from pyspec.models.llama import LlamaModel
from pyspec.sampling import SamplingParams
from pyspec.spec import SpecConfig, planner_candidates, read_plan

PROMPTS = ["abcabcabcab", "the cat and the hat and the"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=256, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64
    )
    tiny = LlamaModel(cfg, name="tiny-bytes", tokenizer=ByteTokenizer())
    for name, p in tiny.named_parameters():
        if "norm" not in name:
            p.copy_(torch.randn_like(p) * 0.3)
    return tiny.eval()


def test_names_plan_choices_and_cli_flags_give_the_same_config():
    spec = SpecConfig.from_names(["ngram", "early:1"], [3, 2], [2, 1])
    assert spec == SpecConfig(("ngram", "early:1"), (3, 2), (2, 1))
    assert spec.label == "ngram:3 > early:1:2 tree(2,1)"
    cli = build_parser().parse_args(
        ["generate", "--prompt", "x", "--draft", "ngram", "--draft", "early:1"]
        + ["--block-size", "3", "--block-size", "2", "--tree", "2,1"]
    )
    assert SpecConfig.from_cli(cli) == spec
    plain = build_parser().parse_args(["generate", "--prompt", "x"])
    assert SpecConfig.from_cli(plain) == SpecConfig.from_names(None) == SpecConfig()
    serve = build_parser().parse_args(
        ["serve", "--speculation", "fixed", "--draft", "ngram", "--block-size", "5"]
    )
    assert SpecConfig.from_cli(serve) == SpecConfig(("ngram",), (5,))


def test_a_plan_choice_keeps_its_label_levels_and_tree(tmp_path):
    shape = TreeShape.branching([2, 1])
    tree = Choice((("early:8", len(shape.parents)),), 0.01, 0.02, (shape.parents, shape.ranks))
    chain = Choice((("ngram", 3), ("early:8", 4)), 0.01, 0.02)
    plain = Choice((), 0.02, 0.02)
    plan = Plan("tiny-bytes", hardware(), "float32", {"1": chain, "2": tree, "4": plain}, "packed")
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    for batch, choice in read_plan(path).choices.items():
        spec = SpecConfig.from_plan_choice(choice, plan.weights)
        assert spec.label == choice.label and spec.weights == "packed" and spec.load_once, batch
    assert SpecConfig.from_plan_choice(tree).tree == shape
    assert SpecConfig.from_plan_choice(chain).drafts == ("ngram", "early:8")
    assert SpecConfig.from_plan_choice(chain).block_sizes == (3, 4)
    assert SpecConfig.from_plan_choice(plain) == SpecConfig(load_once=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(drafts="ngram"), "a list of draft names"),
        (dict(drafts=[]), "no drafts given"),
        (dict(drafts=["early:0"]), "'early:N' takes a number of layers"),
        (dict(drafts=["nope@fp8"]), "the precision suffixes are"),
        (dict(drafts=["ngram"], block_sizes=[0]), "block sizes must be a list of integers >= 1"),
        (dict(drafts=["ngram"], block_sizes=[2.5]), "block sizes must be a list of integers >= 1"),
        (dict(drafts=["early:1"], tree=[]), "widths per depth"),
        (dict(drafts=["early:1"], tree=[2, 0]), "widths per depth"),
        (dict(drafts=["early:1"], tree_sampling="beam"), "tree_sampling must be 'topk' or 'sample'"),
    ],
)
def test_bad_input_is_a_clear_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpecConfig.from_names(**{"drafts": None, **kwargs})


def test_bad_cli_flags_and_candidates_fail_before_loading():
    args = build_parser().parse_args(["generate", "--prompt", "x", "--draft", "early:1", "--tree", "2,x"])
    with pytest.raises(ValueError, match="--tree takes widths per depth such as 3,2,1, got '2,x'"):
        SpecConfig.from_cli(args)
    assert planner_candidates(["ngram", "early:8"]) == ["ngram", "early:8"]
    with pytest.raises(ValueError, match="not a planner candidate"):
        planner_candidates(["ngram", "medusa"])
    with pytest.raises(ValueError, match="unknown draft|precision suffixes|must be a non-empty"):
        planner_candidates([""])


def test_build_makes_the_stack_and_checks_the_plan(model):
    assert SpecConfig().build(model) is None
    assert isinstance(SpecConfig.from_names(["ngram"], [3]).build(model), NgramDrafter)
    stack = SpecConfig.from_plan_choice(Choice((("ngram", 3), ("early:1", 2)), 0.01, 0.02)).build(model)
    assert isinstance(stack, HierarchyLevel)
    with pytest.warns(UserWarning, match="costed on the target's packed weights"):
        assert SpecConfig(weights="packed").build(model) is None
    plan = Plan("tiny-bytes", hardware(), "float32", {"1": Choice((("ngram", 3),), 0.01, 0.02)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # this machine, these weights: no warning
        assert SpecConfig.from_plan(plan, 1, model) == SpecConfig(
            ("ngram",), (3,), weights="float32", load_once=True
        )
    with pytest.warns(UserWarning, match="other hardware"):
        SpecConfig.from_plan(dataclasses.replace(plan, hardware={"cpu": "another"}), 1, model)
    with pytest.raises(ValueError, match="plan is for target 'other'"):
        SpecConfig.from_plan(dataclasses.replace(plan, target="other"), 1, model)


def test_generate_decodes_alike_from_names_a_plan_and_a_drafter(model):
    plain = [o.tokens for o in pyspec.generate(model, PROMPTS, max_new_tokens=12, chat=False)]
    plan = Plan("tiny-bytes", hardware(), "float32", {"2": Choice((("ngram", 3),), 0.01, 0.02)})
    drafter = SpecConfig.from_names(["ngram"], [3]).build(model)
    for kw in (dict(drafts=["ngram"], block_sizes=[3]), dict(plan=plan), dict(drafts=drafter)):
        outs = pyspec.generate(model, PROMPTS, max_new_tokens=12, chat=False, **kw)
        assert [o.tokens for o in outs] == plain, kw


def test_generate_takes_sampling_params_as_its_separate_keywords(model):
    keywords = dict(temperature=0.8, top_k=20, top_p=0.9, seed=3)
    for drafts in (None, ["ngram"]):
        separate = pyspec.generate(model, PROMPTS, max_new_tokens=10, chat=False, drafts=drafts, **keywords)
        together = pyspec.generate(
            model, PROMPTS, max_new_tokens=10, chat=False, drafts=drafts, sampling=SamplingParams(**keywords)
        )
        assert [o.tokens for o in together] == [o.tokens for o in separate], drafts
        if drafts is None:
            plain = separate
    same = pyspec.generate(
        model, PROMPTS, max_new_tokens=10, chat=False, sampling=SamplingParams(**keywords), seed=3
    )
    assert [o.tokens for o in same] == [o.tokens for o in plain]  # an agreeing keyword is no conflict
    with pytest.raises(ValueError, match="not both: temperature=0.5 \\(sampling has 0.8\\)"):
        pyspec.generate(model, "hi", sampling=SamplingParams(**keywords), temperature=0.5)
    with pytest.raises(ValueError, match="sampling must be a SamplingParams"):
        pyspec.generate(model, "hi", sampling={"temperature": 0.8})
