"""The target's own replies to ShareGPT prompts, for the APAR recipe (self-distilled replies).

ShareGPT's replies were written by another model, in another style: SmolLM2 writes lists as
``1. **Title**: details`` with blank lines between items, and an adapter trained on ShareGPT alone
forked on only half of its own list answers. Sampling the base model's replies to the same training
prompts and cutting them with the same recipe (:func:`pyspec.training.apar_data.reply_tree`) teaches
it where to fork in its own words, and leaves its answers otherwise its own.

Replies are generated in ragged batches with pyspec itself and cached, one JSON line per prompt, in
``~/.cache/pyspec/training/apar-own-replies.jsonl``; a run resumes where the cache ends. Only the
prompts and the settings decide the replies (seeded sampling), so the cache can be rebuilt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pyspec.training.sharegpt import Conversation, conversations

MAX_PROMPT_CHARS = 600


@dataclass(frozen=True)
class OwnReplies:
    """How the own replies are sampled (part of the cache's identity)."""

    count: int = 320  # training prompts to answer
    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    batch: int = 24  # prompts decoded together

    def key(self) -> str:
        return f"t{self.temperature}-p{self.top_p}-s{self.seed}-n{self.max_new_tokens}"


def own_prompts(count: int) -> list[Conversation]:
    """The first ``count`` training conversations with a short, clean prompt whose ShareGPT reply the
    recipe cuts (list or paragraphs), in file order: questions that call for a structured answer.
    (On the first 24 clean prompts of any kind, a third asked for code and only 4 replies could be
    cut.)"""
    from pyspec.training.apar_data import is_clean, reply_tree

    picked = []
    for conv in conversations("train"):
        short = len(conv.prompt) <= MAX_PROMPT_CHARS and conv.prompt.strip()
        if short and is_clean(conv.prompt) and reply_tree(conv.reply) is not None:
            picked.append(conv)
            if len(picked) == count:
                break
    return picked


def cache_file() -> Path:
    from pyspec.models.loading import cache_root

    return cache_root() / "training" / "apar-own-replies.jsonl"


def load_own(settings: OwnReplies, path: Path | None = None) -> dict[str, dict]:
    """Cached replies made with ``settings``, by conversation id."""
    path = path or cache_file()
    if not path.exists():
        return {}
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {r["id"]: r for r in rows if r["settings"] == settings.key()}


def generate_own(settings: OwnReplies, path: Path | None = None, progress: bool = True) -> list[dict]:
    """Samples the base model's reply to each of ``own_prompts(settings.count)``, appending to the
    cache as it goes (resumable). Returns ``{"id", "prompt", "reply", "finish"}`` rows in prompt order.

    Example:
        >>> rows = generate_own(OwnReplies(count=48))  # doctest: +SKIP
        >>> rows[0]["finish"]  # doctest: +SKIP
        'eos'
    """
    from tqdm import tqdm

    from pyspec.api import generate, load_model

    path = path or cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    done = load_own(settings, path)
    prompts = own_prompts(settings.count)
    todo = [c for c in prompts if c.id not in done]
    model = load_model("smollm2-135m-instruct") if todo else None
    bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc="own replies", disable=not progress)
    index = {c.id: i for i, c in enumerate(prompts)}
    for start in range(0, len(todo), settings.batch):
        chunk = todo[start : start + settings.batch]
        outs = generate(
            model,
            [c.prompt for c in chunk],
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seed=settings.seed + index[chunk[0].id],  # prompt i samples with seed + i
        )
        with path.open("a") as f:
            for conv, out in zip(chunk, outs, strict=True):
                row = {"id": conv.id, "prompt": conv.prompt, "reply": out.text, "finish": out.finish_reason}
                row["settings"] = settings.key()
                done[conv.id] = row
                f.write(json.dumps(row) + "\n")
        bar.update(len(chunk))
    bar.close()
    return [done[c.id] for c in prompts]


def is_fluent(reply: str) -> bool:
    """No degenerate repetition: at most 40% of the reply's word 4-grams repeat an earlier one, and no
    line (an item's head included) is written twice. A 135M model loops often; its loops must not be
    taught.

    Example:
        >>> is_fluent("1. **A**: one.\\n\\n2. **B**: two.\\n\\n3. **C**: three.")
        True
        >>> is_fluent("1. **A**: x.\\n2. **A**: x.\\n3. **A**: x.")
        False
    """
    words = reply.split()
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    if grams and 1 - len(set(grams)) / len(grams) > 0.4:
        return False
    lines = [re.sub(r"^\W*\d*\W*", "", line).strip() for line in reply.splitlines()]
    lines = [line for line in lines if line]
    return len(lines) == len(set(lines))


def own_conversations(settings: OwnReplies, path: Path | None = None) -> Iterator[Conversation]:
    """The cached own replies that ended by themselves (``<|im_end|>``) and are fluent, as
    conversations (id suffixed ``:own``)."""
    rows = load_own(settings, path)
    for conv in own_prompts(settings.count):
        row = rows.get(conv.id)
        if row and row["finish"] == "eos" and is_fluent(row["reply"]):
            yield Conversation(conv.id + ":own", conv.prompt, row["reply"])


def own_replies_for_recipe(count: int, progress: bool = True) -> list[Conversation]:
    """Generates (or reads from the cache) the base model's replies to ``count`` training prompts and
    returns those the recipe may use (:func:`own_conversations`); ``[]`` for ``count=0``."""
    if not count:
        return []
    settings = OwnReplies(count=count)
    generate_own(settings, progress=progress)
    return list(own_conversations(settings))
