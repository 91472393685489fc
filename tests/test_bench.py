"""The benchmark suite (`pyspec bench`) on real SmolLM2 and transformers: every mode runs, outputs are
checked, the report (JSON, markdown, plots, README section) is written, and bad input fails clearly."""

import json

import pytest
import torch
from utils import assert_same_greedy_choice

import pyspec
from pyspec.bench import suite
from pyspec.bench.estimate import estimate, estimate_markdown
from pyspec.bench.report import update_readme, write_report
from pyspec.cli import main
from pyspec.hardware import hardware

MODES = ["ar", "ngram", "plan", "hidden-transfer", "hf", "hf-pld", "hf-assisted"]


@pytest.fixture(scope="module")
def model():
    return pyspec.load_model("smollm2-135m-instruct", progress=False)


@pytest.fixture(scope="module")
def profile(model):
    """A hand-written profile (no timing here): verifying up to 8 tokens costs one pass, prompt lookup
    is free and right half the time, so the plan speculates with n-gram drafts."""
    flat = {"sizes": [1, 8], "seconds": [0.05, 0.05]}
    return {
        "hardware": hardware(),
        "dtype": "float32",
        "target": model.name,
        "candidates": ["ngram"],
        "alpha": [[1.0, 0.5], [0.0, 1.0]],
        "latency": {"1": {"ngram": {"sizes": [1], "seconds": [0.0]}, model.name: flat}},
    }


@pytest.fixture(scope="module")
def report(model, profile):
    return suite.bench(
        model,
        ["mtbench", "humaneval"],
        MODES,
        limit=1,
        max_new_tokens=12,
        profile=profile,
        heads_tree=[2, 1],
        tune_prompts=1,
    )


def test_every_mode_runs_on_every_prompt_and_matches_its_reference(report):
    assert report["plan"].startswith("ngram")
    records = {(r["mode"], r["dataset"]): r for r in report["records"]}
    for dataset in ("mtbench", "humaneval"):
        modes = report["summary"][dataset]["all"]
        assert list(modes) == MODES
        ar, hf = records["ar", dataset], records["hf", dataset]
        for name, m in modes.items():  # identical to its tool's plain decoding (ar, hf: themselves)
            mine = records[name, dataset]
            assert m["identical"] and mine["new_tokens"] == ar["new_tokens"], name
            assert m["tokens_per_second"] == pytest.approx(mine["new_tokens"] / mine["seconds"])
            assert m["speedup_vs_ar"] == pytest.approx(ar["seconds"] / mine["seconds"])  # same tokens
            assert m["prompts"] == 1
        spread = modes["plan"]["per_prompt_speedup"]
        assert set(spread) == {"ar", "hf", "hf-pld"} and spread["ar"]["q1"] <= spread["ar"]["q3"]
        plan = records["plan", dataset]
        assert spread["hf"]["median"] == pytest.approx(hf["seconds"] / plan["seconds"])
        assert modes["ngram"]["mat"] >= 1.0 and modes["hf"]["mat"] is None
        assert modes["hidden-transfer"]["mat"] >= 1.0
    assert report["summary"]["mtbench"].keys() == {"all", "writing"}  # the first MT-bench question
    assert len(report["records"]) == 2 * len(MODES)
    head = report["headline"]
    assert head["lossless"] is True
    assert set(head["speedup_vs_hf_plain"]) == {"smollm2_mtbench", "smollm2_humaneval"}
    assert report["hf_agrees_with_ar"] == [2, 2]  # the references agree: each identity is to both tools
    assert {p["mode"] for p in report["predictions"]} == {"ar", "ngram", "plan"}
    assert report["heads_tree"] == [2, 1]
    assert report["assistant"] == "draft-lm-1l"  # the trained draft pyspec uses, not an early exit
    for mode, choices in (("hf-pld", suite.PLD_CHOICES), ("hf-assisted", suite.ASSISTANT_CHOICES)):
        tuned = report["hf_tuning"][mode]
        assert list(tuned["seconds"]) == [str(c) for c in choices]  # every setting ran
        assert tuned["seconds"][str(tuned["chosen"])] == min(tuned["seconds"].values())


def test_prompts_are_held_out_of_calibration(model):
    """The suite never times a prompt that plans or HF settings were chosen on."""
    from pyspec.data import HELD_OUT_EVERY, calibration, humaneval, mtbench

    held = {(i.dataset, i.id) for i in suite.select_prompts(model, ["mtbench", "humaneval"])}
    assert len(held) == 20 + 21
    for name, load in (("mtbench", mtbench), ("humaneval", humaneval)):
        assert not held & {(name, p.id) for p in calibration(load(), HELD_OUT_EVERY[name])}


def test_drafts_exported_to_transformers_give_pyspecs_logits(model):
    """hf-assisted's assistant is pyspec's draft itself: the trained draft LM (shortlisted head) and an
    early exit, as transformers models, score like pyspec's runtime."""
    from pyspec.batch import StepBatch
    from pyspec.drafters.names import resolve_draft
    from pyspec.models.export import to_transformers

    ids = model.tokenizer("def add(a, b):\n    return").input_ids
    for name in ("draft-lm-1l", "early:6"):
        draft = resolve_draft(model, name)
        cache = draft.new_cache(num_pages=4)
        with torch.inference_mode():
            ours = draft(StepBatch.build(cache, [cache.add_sequence()], [ids]), cache, torch.arange(len(ids)))
            theirs = to_transformers(draft, model.folder)(torch.tensor([ids])).logits[0]
        finite = torch.isfinite(ours.logits)
        assert torch.equal(finite, torch.isfinite(theirs))  # the same shortlist (all, for early:6)
        assert finite.all() == (name == "early:6")
        assert (ours.logits[finite] - theirs[finite]).abs().max() < 1e-3, name
        assert_same_greedy_choice(theirs, ours.logits, 1e-3)


def test_report_files_and_readme_section(report, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- bench:begin -->\nold\n<!-- bench:end -->\n\nafter\n")
    files = write_report(report, tmp_path / "results", readme)
    names = {f.name for f in files}
    assert {"bench_smollm2.json", "bench_smollm2.md", "README.md"} <= names
    assert {"speedup_smollm2_mtbench.png", "latency_smollm2.png", "planner_smollm2.png"} <= names
    assert all(f.stat().st_size > 0 for f in files)
    assert json.loads((tmp_path / "results" / "bench_smollm2.json").read_text())["headline"]["lossless"]
    text = readme.read_text()
    assert "old" not in text and text.endswith("after\n") and "| **all** |" in text
    assert "| per prompt vs `hf` |" in text and "over repeats" not in text  # 1 repeat: no range
    assert report["machine"] in text and report["date"] in text
    readme.write_text("no section")
    with pytest.raises(ValueError, match="bench:begin"):
        update_readme(readme, tmp_path / "results")


def test_a_wrong_output_is_reported(model, monkeypatch):
    """The identity check can fail: an n-gram run that loses its last token is flagged."""
    real = suite.Modes.run

    def broken(self, mode, ids, max_new):
        tokens, *rest = real(self, mode, ids, max_new)
        return (tokens[:-1] if mode == "ngram" else tokens), *rest

    monkeypatch.setattr(suite.Modes, "run", broken)
    report = suite.bench(model, ["humaneval"], ["ar", "ngram"], limit=1, max_new_tokens=6)
    assert not report["summary"]["humaneval"]["all"]["ngram"]["identical"]
    assert report["headline"]["lossless"] is False


def test_a_stopped_run_goes_on_from_its_journal(model, monkeypatch, tmp_path):
    """A suite that stops part-way (here: its journal cut after the first run and a half-written
    line) runs only what is missing when called again, and reports the same tokens; a journal
    written with other settings is refused."""
    real, calls = suite.Modes.run, []

    def counted(self, mode, ids, max_new):
        calls.append(mode)
        return real(self, mode, ids, max_new)

    monkeypatch.setattr(suite.Modes, "run", counted)
    journal = tmp_path / "journal.jsonl"
    args = (model, ["mtbench"], ["ar", "ngram"])
    first = suite.bench(*args, limit=2, max_new_tokens=6, repeats=2, journal=journal, progress=False)
    assert len(calls) == 8
    lines = journal.read_text().splitlines()
    assert len(lines) == 1 + 8
    journal.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])  # a stop mid-write
    calls.clear()
    again = suite.bench(*args, limit=2, max_new_tokens=6, repeats=2, journal=journal, progress=False)
    assert len(calls) == 7
    assert [r["new_tokens"] for r in again["records"]] == [r["new_tokens"] for r in first["records"]]
    assert again["headline"]["lossless"] and again["days"] == first["days"]
    calls.clear()
    suite.bench(*args, limit=2, max_new_tokens=6, repeats=2, journal=journal, progress=False)
    assert calls == []  # everything was in the journal
    with pytest.raises(ValueError, match="other settings"):
        suite.bench(*args, limit=2, max_new_tokens=8, repeats=2, journal=journal, progress=False)


def test_bad_input_fails_clearly(model):
    with pytest.raises(ValueError, match="unknown modes"):
        suite.bench(model, ["mtbench"], ["ar", "vllm"], limit=1)
    with pytest.raises(ValueError, match="unknown dataset"):
        suite.bench(model, ["gsm8k"], ["ar"], limit=1)
    assert main(["bench", "--model", "/no/such/model", "--modes", "ar"]) == 2


def test_pick_spreads_over_categories():
    assert suite.pick(list(range(10)), None) == list(range(10))
    assert suite.pick(list(range(80)), 8) == list(range(0, 80, 10))  # one per MT-bench category


def test_stored_shapes_are_the_checkpoints():
    from pyspec.models.loading import ModelNotFoundError, load_config, resolve
    from pyspec.models.shapes import SHAPES

    assert SHAPES["smollm2-135m-instruct"] == load_config(resolve("smollm2-135m-instruct", progress=False))
    try:
        folder = resolve("qwen2.5-coder-1.5b-instruct", progress=False)
    except ModelNotFoundError:
        pytest.skip("Qwen2.5-Coder-1.5B is not installed (make qwen)")
    assert SHAPES["qwen2.5-coder-1.5b-instruct"] == load_config(folder)


def test_random_weight_estimate_is_labelled_and_uses_the_given_acceptance(profile, tmp_path, capsys):
    """Latency from the real shapes with random weights (here on the CPU), acceptance from the
    profile: the plan speculates, and the report says these are estimates."""
    est = estimate(profile, "cpu", [1], block=4, sizes=(1, 2, 4), contexts=(32,), repeats=1)
    assert est["estimated"] and "random weights" in est["latency_source"]
    modes = {r["mode"]: r for r in est["rows"]}
    assert set(modes) == {"ar", "ngram:4", next(m for m in modes if m.startswith("plan"))}
    assert modes["ar"]["speedup_vs_ar"] == pytest.approx(1.0)
    assert "ESTIMATED" in estimate_markdown(est)
    assert main(["bench", "--random-weights", "--out", str(tmp_path)]) == 2  # no acceptance given
    assert "--profile" in capsys.readouterr().err
