"""Prompts as token ids: text checked for valid Unicode, wrapped in the chat template, tokenized."""

from __future__ import annotations

from collections.abc import Sequence

from pyspec.models.llama import LlamaModel


def check_text(text: str, what: str) -> None:
    """Raises ValueError when ``text`` is not valid Unicode: a lone surrogate (``"\\ud83d"``, half of
    a UTF-16 pair, or what Python makes of undecodable bytes in ``sys.argv``) has no UTF-8 encoding,
    so no tokenizer can read it. The message names ``what`` and the position; nothing is replaced
    silently. Every other code point is text: NUL, bidirectional marks and zero-width characters
    tokenize like any other character.

    Example:
        >>> check_text("caf\\u00e9 \\u200b\\u200f ok", "prompt 0")
        >>> check_text("tea \\ud83d", "prompt 0")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: prompt 0 has a lone surrogate U+D83D at position 4 (not valid Unicode: ...)
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{what} has a lone surrogate U+{ord(text[e.start]):04X} at position {e.start} (not valid "
            "Unicode: pass the whole character, or replace it, e.g. with U+FFFD)"
        ) from None


def encode_prompts(model: LlamaModel, prompts: str | Sequence[str], chat: bool = True) -> list[list[int]]:
    """Token ids of each prompt; with ``chat``, wrapped in the model's chat template as a user turn.
    Raises ValueError for an empty prompt or one that is not valid Unicode (:func:`check_text`)."""
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    ids = []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"prompt {i} is empty")
        check_text(text, f"prompt {i}")
        if chat and getattr(model.tokenizer, "chat_template", None):
            text = model.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            ids.append(model.tokenizer(text, add_special_tokens=False).input_ids)
        else:
            ids.append(model.tokenizer(text).input_ids)
    return ids
