"""One speculation configuration, parsed in one place: which drafts feed the target (bottom to top), how
many tokens each proposes, the tree the top one proposes, and the target's weight format it was chosen
for. Every entry point reads its input into a :class:`SpecConfig`:

- draft names (or models) as :func:`pyspec.generate` takes them: :meth:`SpecConfig.from_names`;
- a plan (:class:`planner.plan.Plan`, a ``pyspec plan`` JSON file: :func:`read_plan`), its choice for a
  batch size: :meth:`SpecConfig.from_plan`, :meth:`SpecConfig.from_plan_choice`;
- the command line's ``--draft``, ``--block-size`` and ``--tree``: :meth:`SpecConfig.from_cli`;

and :meth:`SpecConfig.build` makes the drafter stack
(:func:`pyspec.decoding.hierarchy.build_stack`). Parsing loads nothing: a bad name, block size or tree
is a ValueError before any model loads. The planner's candidates (:func:`planner_candidates`,
:func:`resolve_candidate`) and a plan's drafts load another model once per process.

Example:
    >>> spec = SpecConfig.from_names(["ngram", "early:8"], [3, 4])
    >>> spec.label
    'ngram:3 > early:8:4'
    >>> SpecConfig.from_names(["early:20"], tree=[3, 2, 1]).label
    'early:20 tree(3,2,1)'
    >>> SpecConfig.from_names(["early:x"])
    Traceback (most recent call last):
    ...
    ValueError: bad draft 'early:x': 'early:N' takes a number of layers N >= 1
"""

from __future__ import annotations

import argparse
import functools
import numbers
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from planner.plan import Choice, Plan
from pyspec.decoding.hierarchy import build_stack
from pyspec.drafters.base import Drafter
from pyspec.drafters.model import TreeShape
from pyspec.drafters.names import parse_draft, resolve_draft
from pyspec.drafters.trained import HEADS
from pyspec.hardware import hardware
from pyspec.models.llama import LlamaModel
from pyspec.models.loading import load_model

TREE_SAMPLING = ("topk", "sample")


@dataclass(frozen=True)
class SpecConfig:
    """How the target speculates; no drafts: plain decoding.

    - ``drafts``: bottom to top, names (:mod:`pyspec.drafters.names`: ``"ngram"``, ``"early:N"``, a
      trained draft, another model with its precision suffix; ``"medusa"`` / ``"hidden-transfer"``
      alone) or models;
    - ``block_sizes``: tokens each level proposes per step (None: 4 each);
    - ``tree``: the top draft proposes a tree: a :class:`TreeShape` (a single draft model) or widths
      per depth (``(3, 2, 1)``);
    - ``tree_sampling``: a tree's children are the top-ranked tokens (``"topk"``) or draws (``"sample"``);
    - ``weights``: the target's weight format the configuration was chosen for (a plan's; None: any).
      The format is the target's numerics, chosen at load: :meth:`build` only warns when it differs;
    - ``load_once``: other models load once per process and are shared (a plan's drafts, which the
      planner measured already; a policy builds one stack per batch size).

    Example:
        >>> SpecConfig(("ngram",), (4,)) == SpecConfig.from_names(["ngram"], [4])
        True
        >>> SpecConfig().label
        'autoregressive'
    """

    drafts: tuple[str | LlamaModel, ...] = ()
    block_sizes: tuple[int, ...] | None = None
    tree: TreeShape | tuple[int, ...] | None = None
    tree_sampling: str = "topk"
    weights: str | None = None
    load_once: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.drafts, (str, LlamaModel)) or not isinstance(self.drafts, Sequence):
            raise ValueError(
                f"drafts must be a list of draft names or models, bottom to top, got {self.drafts!r}"
            )
        for d in self.drafts:
            if not isinstance(d, LlamaModel):
                parse_draft(d)  # a ValueError listing what is accepted
        object.__setattr__(self, "drafts", tuple(self.drafts))
        if self.block_sizes is not None:
            sizes = self.block_sizes
            if isinstance(sizes, (str, int)) or not all(_count(b) for b in sizes):
                raise ValueError(f"block sizes must be a list of integers >= 1, one per level, got {sizes!r}")
            object.__setattr__(self, "block_sizes", tuple(int(b) for b in sizes))
        if self.tree is not None and not isinstance(self.tree, TreeShape):
            widths = self.tree
            if isinstance(widths, (str, int)) or not widths or not all(_count(w) for w in widths):
                raise ValueError(
                    f"a tree is a TreeShape or widths per depth, a non-empty list of counts >= 1 such as "
                    f"[3, 2, 1], got {widths!r}"
                )
            object.__setattr__(self, "tree", tuple(int(w) for w in widths))
        if self.tree_sampling not in TREE_SAMPLING:
            raise ValueError(f"tree_sampling must be 'topk' or 'sample', got {self.tree_sampling!r}")

    @classmethod
    def from_names(
        cls,
        drafts: Sequence[str | LlamaModel] | None,
        block_sizes: Sequence[int] | None = None,
        tree: TreeShape | Sequence[int] | None = None,
        tree_sampling: str = "topk",
    ) -> SpecConfig:
        """A stack as :func:`pyspec.generate` takes it: ``drafts`` None is plain decoding (block sizes
        and tree unused), an empty list is an error.

        Example:
            >>> SpecConfig.from_names(["ngram", "draft-lm-1l"], [2, 4]).drafts
            ('ngram', 'draft-lm-1l')
            >>> SpecConfig.from_names(None).drafts
            ()
        """
        if drafts is None:
            return cls(tree_sampling=tree_sampling)
        if isinstance(drafts, Sequence) and not isinstance(drafts, str) and not drafts:
            raise ValueError("no drafts given (drafts=None decodes without speculation)")
        return cls(drafts, block_sizes, tree, tree_sampling)

    @classmethod
    def from_plan_choice(cls, choice: Choice, weights: str | None = None) -> SpecConfig:
        """A plan's choice for one batch size: its levels' names and block sizes, its tree as a
        :class:`TreeShape`; ``weights``: the plan's target weight format.

        Example:
            >>> from planner.plan import Choice
            >>> SpecConfig.from_plan_choice(Choice((("ngram", 3), ("early:8", 4)), 0.01, 0.02)).label
            'ngram:3 > early:8:4'
            >>> SpecConfig.from_plan_choice(Choice((), 0.02, 0.02)).drafts
            ()
        """
        tree = None if choice.tree is None else TreeShape(*choice.tree)
        return cls(
            tuple(n for n, _ in choice.levels),
            tuple(t for _, t in choice.levels) if choice.levels else None,
            tree,
            weights=weights,
            load_once=True,
        )

    @classmethod
    def from_plan(cls, plan: Plan, batch_size: int, target: LlamaModel) -> SpecConfig:
        """What ``plan`` chose for ``batch_size`` sequences of ``target``; warns when the plan was made
        on other hardware, raises ValueError when it is for another target.

        Example:
            >>> SpecConfig.from_plan(pyspec.plan(model), 1, model).label  # doctest: +SKIP
            'ngram:4'
        """
        differs = plan.hardware_mismatch(hardware())
        if differs:
            warnings.warn(
                f"this plan was made on other hardware ({', '.join(differs)} differ): its choices may not "
                "be the fastest here; run `pyspec plan` on this machine",
                stacklevel=3,
            )
        if plan.target != target.name:
            raise ValueError(f"the plan is for target {plan.target!r}, not {target.name!r}")
        return cls.from_plan_choice(plan.for_batch(batch_size), plan.weights)

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> SpecConfig:
        """The command line's ``--draft`` (repeatable, bottom to top), ``--block-size`` (repeatable)
        and ``--tree`` (widths per depth, ``3,2,1``; where the command has it).

        Example:
            >>> args = argparse.Namespace(draft=["ngram", "early:8"], block_size=[], tree="2,1")
            >>> SpecConfig.from_cli(args).tree
            (2, 1)
        """
        tree = getattr(args, "tree", None)
        if tree is not None:
            try:
                tree = [int(w) for w in tree.split(",")]
            except ValueError:
                raise ValueError(f"--tree takes widths per depth such as 3,2,1, got {args.tree!r}") from None
        return cls.from_names(args.draft or None, args.block_size or None, tree)

    @property
    def label(self) -> str:
        """``"ngram:3 > early:8:4"`` (name:block per level, bottom to top; the names alone without block
        sizes), ``"early:8 tree(6)"`` (a single draft's tree of 6 nodes: its block is the tree),
        ``"ngram:4 > early:8:3 tree(2,1)"`` or ``"autoregressive"``; for a plan's choice, the label
        of :class:`planner.plan.Choice`."""
        if not self.drafts:
            return "autoregressive"
        names = [d.name if isinstance(d, LlamaModel) else d for d in self.drafts]
        alone = (self.tree is not None and len(names) == 1) or names[0] in HEADS  # no block of their own
        if self.block_sizes is not None and not alone:
            names = [f"{n}:{b}" for n, b in zip(names, self.block_sizes, strict=False)]
        if self.tree is None:
            return " > ".join(names)
        shape = len(self.tree.parents) if isinstance(self.tree, TreeShape) else ",".join(map(str, self.tree))
        return f"{' > '.join(names)} tree({shape})"

    def build(self, target: LlamaModel) -> Drafter | None:
        """The drafter stack for ``target`` (None: plain decoding), through
        :func:`~pyspec.decoding.hierarchy.build_stack`; warns when the configuration was chosen for
        other weights than the target's.

        Example:
            >>> type(SpecConfig.from_names(["ngram"], [4]).build(model)).__name__  # doctest: +SKIP
            'NgramDrafter'
        """
        if self.weights is not None and self.weights != target.weights_format:
            warnings.warn(
                f"this plan was costed on the target's {self.weights} weights, the model has "
                f"{target.weights_format}: load it with packed={self.weights == 'packed'} for the plan's "
                "speed (the same tokens either way)",
                stacklevel=3,
            )
        if not self.drafts:
            return None
        drafts = [resolve_candidate(target, d) for d in self.drafts] if self.load_once else list(self.drafts)
        block_sizes = None if self.block_sizes is None else list(self.block_sizes)
        return build_stack(target, drafts, block_sizes, self.tree, self.tree_sampling)


def _count(value) -> bool:
    """Whether ``value`` is an integer >= 1 (numpy's too; not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def read_plan(path: str | os.PathLike) -> Plan:
    """A plan file from ``pyspec plan``."""
    return Plan.from_json(Path(path).read_text())


def planner_candidates(names: Sequence[str]) -> list[str]:
    """The planner's candidate drafts by name, checked without loading anything: every draft name
    but Medusa heads and hidden transfer (they draft from the target's own pass).

    Example:
        >>> planner_candidates(["ngram", "early:8"])
        ['ngram', 'early:8']
    """
    if isinstance(names, str):
        raise ValueError(f"candidates must be a list of draft names, got {names!r}")
    for name in names:
        parse_draft(name)
        if name in HEADS:
            raise ValueError(f"{name!r} drafts from the target's own pass: it is not a planner candidate")
    return list(names)


def resolve_candidate(target: LlamaModel, name: str | LlamaModel) -> LlamaModel | str:
    """A candidate draft by name (:func:`pyspec.drafters.names.resolve_draft`: ``"ngram"``,
    ``"early:N"``, a trained draft LM, another model, ``@bf16`` / ``@packed`` / ``@q8``); another
    model is loaded once per process. Medusa heads and hidden transfer draft from the target's own
    pass: not candidates.

    Example:
        >>> resolve_candidate(target, "smollm2-135m-instruct@bf16").embed_tokens.dtype  # doctest: +SKIP
        torch.bfloat16
    """
    draft = resolve_draft(target, name, load=_loaded_once)
    if isinstance(draft, str) and draft != "ngram":
        raise ValueError(f"{name!r} drafts from the target's own pass: it is not a planner candidate")
    return draft


@functools.cache
def _loaded_once(
    name_or_path: str, dtype: torch.dtype = torch.float32, packed: bool = False, compute: str = "exact"
) -> LlamaModel:
    return load_model(name_or_path, dtype=dtype, progress=False, packed=packed, compute=compute)
