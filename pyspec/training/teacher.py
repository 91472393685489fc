"""The teacher's view of training text: for every position of every sequence, the target's top-k
next-token distribution and its hidden states after chosen layers (teacher forcing on ShareGPT's
first turns, wrapped in the target's chat template). Built once and reused by every training run.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from pyspec.models.llama import LlamaModel
from pyspec.reference import rms_norm
from pyspec.training.functional import causal_layers
from pyspec.training.sharegpt import Conversation, conversations


@dataclass
class TeacherData:
    """Sequences of ``S`` tokens and what the teacher says about them.

    ``loss_mask[n, s]``: position s is in the reply and its next token is real (not padding);
    ``top_ids / top_probs [N, S, K]``: the teacher's most likely next tokens after position s;
    ``hidden[layer] [N, S, D]`` (fp16): outputs after ``layer`` layers (``layer == num_layers`` is the
    final normalised state, the head's input).
    """

    ids: list[str]
    tokens: torch.Tensor  # [N, S] int64
    loss_mask: torch.Tensor  # [N, S] bool
    top_ids: torch.Tensor  # [N, S, K] int64
    top_probs: torch.Tensor  # [N, S, K] float16
    hidden: dict[int, torch.Tensor]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.__dict__, path)

    @classmethod
    def load(cls, path: Path) -> TeacherData:
        return cls(**torch.load(path, weights_only=True))

    @property
    def num_tokens(self) -> int:
        return int(self.loss_mask.sum())


def encode(model: LlamaModel, conv: Conversation, seq_len: int) -> tuple[list[int], int] | None:
    """Chat-template token ids of a conversation's first turn (prompt, then reply and end of turn),
    truncated to ``seq_len``, with the prompt's length; None when the prompt leaves < 32 reply tokens."""
    tok = model.tokenizer
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": conv.prompt}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tok(prompt, add_special_tokens=False).input_ids
    reply_ids = tok(conv.reply, add_special_tokens=False).input_ids + list(model.config.eos_token_ids[:1])
    if len(prompt_ids) > seq_len - 32:
        return None
    return (prompt_ids + reply_ids)[:seq_len], len(prompt_ids)


@torch.inference_mode()
def build(
    model: LlamaModel,
    split: str,
    num_sequences: int,
    layers: tuple[int, ...],
    seq_len: int = 256,
    top_k: int = 16,
    batch_size: int = 4,
    progress: bool = True,
) -> TeacherData:
    """Runs the target over the first ``num_sequences`` usable conversations of ``split``.

    Example:
        >>> data = build(load_model("smollm2-135m-instruct"), "held_out", 8, layers=(24,))  # doctest: +SKIP
    """
    pad = model.config.eos_token_ids[0]
    encoded = ((c.id, encode(model, c, seq_len)) for c in conversations(split))
    rows = itertools.islice(((cid, *x) for cid, x in encoded if x is not None), num_sequences)
    ids, tokens, masks = [], [], []
    for cid, toks, prompt_len in rows:
        ids.append(cid)
        tokens.append(toks + [pad] * (seq_len - len(toks)))
        mask = torch.zeros(seq_len, dtype=torch.bool)
        mask[prompt_len - 1 : len(toks) - 1] = True  # positions whose next token is a reply token
        masks.append(mask)
    tokens_t = torch.tensor(tokens, dtype=torch.long)
    n = len(ids)
    keep = tuple(t - 1 for t in layers if t < model.config.num_layers)
    hidden = {t: torch.zeros(n, seq_len, model.config.hidden_size, dtype=torch.float16) for t in layers}
    top_ids = torch.zeros(n, seq_len, top_k, dtype=torch.long)
    top_probs = torch.zeros(n, seq_len, top_k, dtype=torch.float16)
    for start in tqdm(range(0, n, batch_size), desc=f"teacher ({split})", disable=not progress):
        sl = slice(start, start + batch_size)
        x = torch.nn.functional.embedding(tokens_t[sl], model.embed_tokens)
        x, kept = causal_layers(model.layers, x, model.inv_freq, keep)
        final = rms_norm(x, model.norm, model.config.rms_norm_eps)
        for t in layers:
            hidden[t][sl] = (final if t >= model.config.num_layers else kept[t - 1]).half()
        probs = torch.softmax(final @ model.head_weight.T, dim=-1)
        p, i = probs.topk(top_k, dim=-1)
        top_ids[sl], top_probs[sl] = i, p.half()
    return TeacherData(ids, tokens_t, torch.stack(masks), top_ids, top_probs, hidden)
