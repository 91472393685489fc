"""APAR training data from ShareGPT (docs/papers.md §3): replies rewritten into a paragraph tree.

A reply with a numbered list of at least three ``N. Title: details`` items keeps each item's head in the
main stream, followed by the control token ``[Fork]``; the item's details go to a child stream that starts
with ``[Child]``. Without such a list, a reply of at least three paragraphs keeps each paragraph's first
sentence and forks the rest. A child's text is one line and ends with the end token, as a child ends at its
item's line break when decoding (:mod:`pyspec.decoding.apar`). Replies with code, maths or URLs are left
out. Each structured reply yields one main example (loss on the main stream) and one example per child (the
prefix is the main stream up to and including its ``[Fork]``; loss on the child only), and is mixed about
50/50 with unstructured replies (plain examples, no forks), so the model learns when not to fork.

Reassembling the tree (each head, then its child, then the next head) gives the reply's text back.
The target's own replies to the same prompts (:mod:`pyspec.training.apar_own`) can be cut first, so
it also learns to fork in its own style.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from pyspec.models.adapters import CHILD, FORK
from pyspec.training.sharegpt import Conversation, conversations

MIN_ITEMS = 3  # numbered items (or paragraphs) a reply needs to be structured
MAX_HEAD_CHARS = 90  # an item's head ("3. Title:") is at most this long

_ITEM = re.compile(r"^[ \t]*(\d{1,2})[.)][ \t]+\S", re.MULTILINE)
_CODE = re.compile(r"`|^\s*(def|class|import|public|function|#include)\b|[{};]\s*$", re.MULTILINE)
_MATHS = re.compile(r"\$|\\frac|\\sum|\\int|\^\d|[=<>]\s*-?\d+(\.\d+)?\s*[+*/^-]|\d\s*[*/^]\s*\d")
_URL = re.compile(r"https?://|www\.|\.com\b|\.org\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?](?=\s+\S)")


@dataclass(frozen=True)
class ReplyTree:
    """A reply cut into main-stream heads and their children's text.

    ``heads[i]`` is followed by a ``[Fork]`` whose child writes ``children[i]``, for every i below
    ``len(children)``; ``heads`` has one more entry than ``children`` (the text after the last fork).
    """

    heads: tuple[str, ...]
    children: tuple[str, ...]
    kind: str  # "list" or "paragraphs"

    def text(self) -> str:
        """The reassembled reply: each head, then its child, then the next head."""
        parts = [h + c for h, c in zip(self.heads, self.children, strict=False)]
        return "".join(parts) + self.heads[-1]


def is_clean(text: str) -> bool:
    """No code, maths or URLs (the recipe's filter)."""
    return not (_CODE.search(text) or _MATHS.search(text) or _URL.search(text))


def list_tree(reply: str) -> ReplyTree | None:
    """The numbered-list form: items ``1. Title: details`` numbered 1, 2, 3, ... (at least three with
    details); each head ends after the title's colon and the details, up to the next item (or, for the
    last, to the end of its paragraph), go to a child. ``None`` if the reply has no such list or an
    item's details span more than one line (a child ends at its first line break when decoding)."""
    starts = [m for m in _ITEM.finditer(reply)]
    # the first run of consecutive numbers starting at 1
    run = []
    for m in starts:
        if int(m.group(1)) == len(run) + 1:
            run.append(m)
        elif run and int(m.group(1)) == 1:
            break
    if len(run) < MIN_ITEMS:
        return None
    heads, children = [], []
    cursor = 0
    for i, m in enumerate(run):
        start = m.start()
        end = run[i + 1].start() if i + 1 < len(run) else _paragraph_end(reply, start)
        item = reply[start:end]
        line = item.split("\n", 1)[0]
        colon = line.find(":")
        details = item[colon + 1 :].strip()
        if colon < 0 or colon + 1 > MAX_HEAD_CHARS or not details or "\n" in details:
            return None  # decoding ends a child at its line break: its details must be one line
        heads.append(reply[cursor : start + colon + 1])
        children.append(reply[start + colon + 1 : end])
        cursor = end
    heads.append(reply[cursor:])
    return _tree(heads, children, "list")


def paragraph_tree(reply: str) -> ReplyTree | None:
    """The paragraph fallback: at least three paragraphs; a paragraph of two or more sentences keeps its
    first sentence and forks the rest (the separator after it included) if the rest is one line.
    ``None`` if fewer than three paragraphs, or fewer than three of them would fork."""
    bounds = [0] + [m.end() for m in re.finditer(r"\n\s*\n", reply)]
    if len(bounds) < MIN_ITEMS:
        return None
    heads, children, cursor = [], [], 0
    for i, start in enumerate(bounds):
        end = bounds[i + 1] if i + 1 < len(bounds) else len(reply)
        para = reply[start:end]
        cut = _SENTENCE_END.search(para.rstrip())
        if cut is None or _ITEM.match(para) or "\n" in para.rstrip()[cut.end() :]:
            continue  # stays in the main stream: a child is one line
        split = start + cut.end()
        heads.append(reply[cursor:split])
        children.append(reply[split:end])
        cursor = end
    if len(children) < MIN_ITEMS:
        return None
    heads.append(reply[cursor:])
    return _tree(heads, children, "paragraphs")


def _tree(heads: list[str], children: list[str], kind: str) -> ReplyTree:
    """Moves each child's trailing whitespace to the head after it: a child ends with its last word
    and its end token, and the main stream writes the line breaks between items. (Children ending in
    a line break taught the model to stop after any item's line break, main stream included.)"""
    for i, child in enumerate(children):
        body = child.rstrip()
        heads[i + 1] = child[len(body) :] + heads[i + 1]
        children[i] = body
    return ReplyTree(tuple(heads), tuple(children), kind)


def reply_tree(reply: str) -> ReplyTree | None:
    """The reply's paragraph tree (numbered list first, else paragraphs), or ``None`` if it has no
    structure or fails the filter.

    Example:
        >>> tree = reply_tree("Tips:\\n1. Sleep: eight hours.\\n2. Eat: greens.\\n3. Walk: daily.")
        >>> tree.heads
        ('Tips:\\n1. Sleep:', '\\n2. Eat:', '\\n3. Walk:', '')
        >>> tree.children
        (' eight hours.', ' greens.', ' daily.')
        >>> tree.text() == "Tips:\\n1. Sleep: eight hours.\\n2. Eat: greens.\\n3. Walk: daily."
        True
    """
    if not is_clean(reply):
        return None
    return list_tree(reply) or paragraph_tree(reply)


def is_unstructured(reply: str) -> bool:
    """A clean reply with no numbered list and fewer than three paragraphs: the model must not fork."""
    return is_clean(reply) and not _ITEM.search(reply) and len(re.findall(r"\n\s*\n", reply)) < 2


def _paragraph_end(text: str, start: int) -> int:
    m = re.compile(r"\n\s*\n").search(text, start)
    return m.start() if m else len(text)


@dataclass
class Example:
    """One reply as a packed token tree: the main stream, then each child stream, whose first token
    (``[Child]``) hangs below its ``[Fork]`` in the main stream. Attending to ancestors only, each
    child sees exactly what it sees at decoding time (the main stream up to its fork), so the tree is
    the recipe's main example and its child examples in one sequence. A plain reply is a chain.

    ``targets[i]``: token i is taught, predicted from the state of ``parents[i]`` (the forced
    ``[Child]`` tokens and the prompt are not).
    """

    tokens: list[int]
    parents: list[int]
    targets: list[bool]
    conversation: str
    streams: int  # 1 + forks


@dataclass
class Stats:
    """What the recipe produced (for the closing note and the manifest)."""

    conversations_read: int = 0
    structured: dict[str, int] = field(default_factory=lambda: {"list": 0, "paragraphs": 0})
    unstructured: int = 0
    own: dict[str, int] = field(default_factory=lambda: {"structured": 0, "unstructured": 0})
    too_long: int = 0
    forks: list[int] = field(default_factory=list)
    tokens: int = 0
    target_tokens: int = 0

    def summary(self) -> dict:
        n = len(self.forks)
        return {
            "conversations_read": self.conversations_read,
            "structured_replies": dict(self.structured),
            "unstructured_replies": self.unstructured,
            "own_replies": dict(self.own),
            "skipped_too_long": self.too_long,
            "examples": {"main": n, "child": sum(self.forks), "plain": self.unstructured},
            "forks_per_structured_reply": round(sum(self.forks) / n, 2) if n else 0.0,
            "tokens": self.tokens,
            "target_tokens": self.target_tokens,
        }


class Recipe:
    """Turns conversations into APAR examples with ``tokenizer`` (which knows ``[Fork]``/``[Child]``).

    Example:
        >>> recipe = Recipe(tokenizer, max_tokens=768)  # doctest: +SKIP
        >>> examples, stats = recipe.build("train", structured=300)  # doctest: +SKIP
    """

    def __init__(self, tokenizer, max_tokens: int = 768) -> None:
        self.tok = tokenizer
        self.max_tokens = max_tokens
        self.fork, self.child = tokenizer.convert_tokens_to_ids([FORK, CHILD])
        self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def prompt_ids(self, prompt: str) -> list[int]:
        """The chat-formatted prompt, ending where the assistant's reply begins."""
        text = self.tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return self.tok.encode(text, add_special_tokens=False)

    def encode(self, text: str) -> list[int]:
        """Token ids of a piece of reply text (no special tokens)."""
        return self.tok.encode(text, add_special_tokens=False) if text else []

    def example_of(self, conv: Conversation, tree: ReplyTree | None) -> Example | None:
        """The packed example of a reply: a tree if ``tree`` is given, else a plain chain. ``None``
        if it would exceed ``max_tokens``."""
        prompt = self.prompt_ids(conv.prompt)
        tokens, targets = list(prompt), [False] * len(prompt)
        forks = []
        heads = [conv.reply] if tree is None else tree.heads
        for i, head in enumerate(heads):
            ids = self.encode(head)
            tokens += ids
            targets += [True] * len(ids)
            if tree is not None and i < len(tree.children):
                forks.append(len(tokens))
                tokens.append(self.fork)
                targets.append(True)
        tokens.append(self.eos)
        targets.append(True)
        parents = list(range(-1, len(tokens) - 1))
        for fork, child in zip(forks, tree.children if tree else (), strict=True):
            body = self.encode(child) + [self.eos]
            start = len(tokens)
            tokens += [self.child] + body
            parents += [fork] + list(range(start, start + len(body)))
            targets += [False] + [True] * len(body)
        if len(tokens) > self.max_tokens:
            return None
        return Example(tokens, parents, targets, conv.id, 1 + len(forks))

    def build(
        self, split: str, structured: int, progress: bool = False, first: Iterable[Conversation] = ()
    ) -> tuple[list[Example], Stats]:
        """Examples from the first ``structured`` structured replies and as many unstructured ones, in
        order: the conversations ``first`` (e.g. the target's own replies,
        :func:`pyspec.training.apar_own.own_conversations`), then ``split``'s in file order."""
        stats, examples = Stats(), []
        plain_budget = 0
        bar = _progress(structured, progress)
        for conv in itertools.chain(first, conversations(split)):
            if len(stats.forks) >= structured and plain_budget <= 0:
                break
            stats.conversations_read += 1
            own = conv.id.endswith(":own")
            tree = reply_tree(conv.reply) if is_clean(conv.prompt) else None
            if tree is not None and len(stats.forks) < structured:
                example = self.example_of(conv, tree)
                if example is not None:
                    stats.structured[tree.kind] += 1
                    stats.own["structured"] += own
                    stats.forks.append(len(tree.children))
                    plain_budget += 1
                    bar.update(1)
            elif tree is None and plain_budget > 0 and is_unstructured(conv.reply) and is_clean(conv.prompt):
                example = self.example_of(conv, None)
                if example is not None:
                    stats.unstructured += 1
                    stats.own["unstructured"] += own
                    plain_budget -= 1
            else:
                continue
            if example is None:
                stats.too_long += 1
                continue
            stats.tokens += len(example.tokens)
            stats.target_tokens += sum(example.targets)
            examples.append(example)
        bar.close()
        return examples, stats


def held_out_prompts(count: int) -> Iterator[Conversation]:
    """Held-out ShareGPT conversations whose replies are numbered lists (structured test prompts)."""
    n = 0
    for conv in conversations("held_out"):
        tree = reply_tree(conv.reply)
        if tree is not None and tree.kind == "list" and len(conv.prompt) < 600:
            yield conv
            n += 1
            if n == count:
                return


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="APAR examples", unit=" structured replies", disable=not enabled)
