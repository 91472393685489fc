"""pyspec's public entry points: load a model, generate text."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

from planner.plan import Plan, make_plan
from pyspec.decoding.autoregressive import generate_autoregressive
from pyspec.decoding.draft_policy import DraftPolicy
from pyspec.decoding.output import GenerationOutput, StreamCallback
from pyspec.decoding.speculative import generate_speculative
from pyspec.drafters.base import Drafter
from pyspec.drafters.model import TreeShape
from pyspec.models.llama import LlamaModel
from pyspec.models.loading import load_model  # noqa: F401  (re-exported: pyspec.api.load_model)
from pyspec.prompts import check_text, encode_prompts
from pyspec.sampling import SamplingParams
from pyspec.spec import SpecConfig, planner_candidates


def generate(
    model: LlamaModel,
    prompts: str | Sequence[str],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    chat: bool = True,
    stream: StreamCallback | None = None,
    drafts: Sequence[str | LlamaModel] | Drafter | None = None,
    block_sizes: Sequence[int] | None = None,
    tree: TreeShape | Sequence[int] | None = None,
    tree_sampling: str = "topk",
    plan: Plan | None = None,
    sampling: SamplingParams | None = None,
) -> list[GenerationOutput]:
    """Generates a reply to each prompt; all prompts decode together in one ragged batch.

    Greedy by default (``temperature=0``); with sampling, ``seed`` makes each prompt's output
    reproducible (prompt i uses ``seed + i``). ``sampling``: the same settings as one
    :class:`SamplingParams` instead of ``temperature``, ``top_k``, ``top_p`` and ``seed`` (giving
    both with different values is a ValueError). ``stop``: strings that end a reply. ``stream(i, text)``
    receives new text of prompt i as it is produced. Each output has ``.text``, ``.tokens``,
    ``.finish_reason`` and ``.stats``.

    Speculative decoding (lossless: the same greedy tokens, the same sampling distribution) when
    ``drafts`` is given: a stack bottom to top, e.g. ``["ngram"]``, ``[draft_model]`` or
    ``["ngram", small, larger]`` (hierarchical), with ``block_sizes`` tokens per level (default 4);
    trained drafts by name (``"draft-lm-1l"``, ``"draft-lm-3l"`` as levels; ``["medusa"]`` or
    ``["hidden-transfer"]`` alone, see :mod:`pyspec.drafters.trained`; parsed by
    :class:`pyspec.spec.SpecConfig`); or any :class:`pyspec.drafters.Drafter`. ``tree``: the top draft
    proposes a token tree instead of a chain: a single draft model any :class:`TreeShape` (or per-depth
    widths such as ``[3, 2, 1]``), the top level of a stack per-depth widths (its chain plus sibling
    candidates);
    ``tree_sampling``: its children are the top-ranked tokens (``"topk"``) or independent draws
    (``"sample"``). ``stats.levels`` reports passes, time and acceptance per level.

    Example:
        >>> model = load_model("smollm2-135m-instruct")  # doctest: +SKIP
        >>> generate(model, "Write a haiku about tea.", max_new_tokens=32)[0].text  # doctest: +SKIP
        >>> generate(model, "Write a haiku about tea.", drafts=["ngram"])[0].stats.mat  # doctest: +SKIP
        >>> hot = SamplingParams(temperature=0.8, top_p=0.95, seed=1)
        >>> same = generate(model, "Hi", temperature=0.8, top_p=0.95, seed=1)  # doctest: +SKIP
        >>> generate(model, "Hi", sampling=hot)[0].tokens == same[0].tokens  # doctest: +SKIP
        True
    """
    ids = encode_prompts(model, prompts, chat)
    for j, s in enumerate(stop):
        check_text(s, f"stop string {j}")
    one = _sampling(sampling, temperature, top_k, top_p, seed)
    params = [
        dataclasses.replace(one, seed=None if one.seed is None else one.seed + i) for i in range(len(ids))
    ]
    if plan is not None:
        if drafts is not None or tree is not None:
            raise ValueError("give either drafts (and a tree) or a plan, not both")
        spec = dataclasses.replace(SpecConfig.from_plan(plan, len(ids), model), tree_sampling=tree_sampling)
        drafter = spec.build(model)
    elif isinstance(drafts, Drafter):
        drafter = drafts
    else:
        drafter = SpecConfig.from_names(drafts, block_sizes, tree, tree_sampling).build(model)
    if drafter is None:
        return generate_autoregressive(model, ids, max_new_tokens, params, tuple(stop), stream)
    return generate_speculative(model, ids, drafter, max_new_tokens, params, tuple(stop), stream)


def _sampling(
    sampling: SamplingParams | None, temperature: float, top_k: int, top_p: float, seed: int | None
) -> SamplingParams:
    """``sampling``, or the separate keywords as one :class:`SamplingParams`; a keyword given beside
    ``sampling`` must agree with it."""
    if sampling is None:
        return SamplingParams(temperature, top_k, top_p, seed)
    if not isinstance(sampling, SamplingParams):
        raise ValueError(f"sampling must be a SamplingParams, got {sampling!r}")
    given = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}
    defaults = SamplingParams()
    clash = [
        f"{k}={v!r} (sampling has {getattr(sampling, k)!r})"
        for k, v in given.items()
        if v != getattr(defaults, k) and v != getattr(sampling, k)
    ]
    if clash:
        raise ValueError(
            "give either sampling=SamplingParams(...) or temperature/top_k/top_p/seed, not both: "
            + ", ".join(clash)
        )
    return sampling


def drafter_from_plan(model: LlamaModel, plan: Plan, batch_size: int) -> Drafter | None:
    """The drafter stack ``plan`` chose for ``batch_size`` sequences (None: plain decoding); warns
    when the plan was made on other hardware, raises when it is for another target.

    Example:
        >>> drafter = drafter_from_plan(model, pyspec.plan(model), 1)  # doctest: +SKIP
    """
    return SpecConfig.from_plan(plan, batch_size, model).build(model)


def policy_from_plan(model: LlamaModel, plan: Plan, max_batch: int, min_gain: float = 0.0) -> DraftPolicy:
    """A :class:`~pyspec.decoding.draft_policy.DraftPolicy` for the batch engine: for every batch
    size up to ``max_batch``, the drafter ``plan`` chose for it (one drafter per distinct choice).
    ``min_gain``: plain decoding where the plan predicts speculation to save less than this fraction
    of plain decoding's time per token (a predicted tie is within the predictions' error).

    Example:
        >>> engine = BatchEngine(model, policy_from_plan(model, plan, 8, 0.05), max_batch=8)  # doctest: +SKIP
    """
    if not 0 <= min_gain < 1:
        raise ValueError(f"min_gain must be in [0, 1), got {min_gain}")
    built: dict[str, Drafter | None] = {}
    choices, labels = [], []
    with warnings.catch_warnings():  # warn once, not once per batch size
        for batch in range(1, max_batch + 1):
            choice = plan.for_batch(batch)
            pays = choice.seconds_per_token <= (1 - min_gain) * choice.no_speculation_seconds
            label = choice.label if pays else "autoregressive"
            if label == "autoregressive":
                built[label] = None
            elif label not in built:
                built[label] = drafter_from_plan(model, plan, batch)
                warnings.simplefilter("ignore")
            choices.append(built[label])
            labels.append(label)
    return DraftPolicy(choices, labels)


def profile_model(
    model: LlamaModel,
    drafts: Sequence[str] = ("ngram",),
    prompts: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = (1,),
    temperature: float = 0.0,
    calibration_prompts: int = 4,
) -> dict:
    """Measures what a plan needs on this machine (see :mod:`pyspec.profile`): forward-pass time of
    ``model`` and each candidate draft (``"ngram"``, ``"early:N"``) per batch size and new-token
    count, and acceptance between every pair on calibration ``prompts`` (default:
    ``calibration_prompts`` MT-bench and as many HumanEval prompts, from those the benchmarks hold
    out of their sets; 128 new tokens each). A JSON-serialisable dict.

    Example:
        >>> prof = pyspec.profile_model(model, ["ngram", "early:20"])  # doctest: +SKIP
        >>> json.dump(prof, open("profile.json", "w"))  # doctest: +SKIP
    """
    from pyspec.data import HELD_OUT_EVERY, calibration, humaneval, mtbench
    from pyspec.profile import profile

    candidates = planner_candidates(drafts)  # a bad name fails before minutes of profiling
    if prompts is None:
        n = calibration_prompts
        ids = encode_prompts(model, [p.text for p in calibration(mtbench(), HELD_OUT_EVERY["mtbench"])[:n]])
        ids += [
            model.tokenizer(p.text).input_ids
            for p in calibration(humaneval(), HELD_OUT_EVERY["humaneval"])[:n]
        ]
    else:
        ids = encode_prompts(model, prompts)
    return profile(model, candidates, ids, batch_sizes, params=SamplingParams(temperature))


def plan(
    model: LlamaModel,
    drafts: Sequence[str] = ("ngram",),
    prompts: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = (1,),
    temperature: float = 0.0,
    max_block: int = 16,
    tree_budget: int = 32,
    context: int | None = None,
) -> Plan:
    """Profiles ``model`` and candidate ``drafts`` on this machine (:func:`profile_model`) and returns
    the fastest :class:`~planner.plan.Plan` per batch size: plain decoding, a chain hierarchy with
    block sizes up to ``max_block``, or a draft model's tree of up to ``tree_budget`` nodes, with
    passes costed at the profiled context length nearest to ``context`` (default 256 tokens; 1024
    is profiled too). Takes about two minutes for SmolLM2 on 2 cores.

    Example:
        >>> p = pyspec.plan(model, drafts=["ngram", "early:20"])  # doctest: +SKIP
        >>> pyspec.generate(model, "Hi", plan=p)  # doctest: +SKIP
    """
    measured = profile_model(model, drafts, prompts, batch_sizes, temperature)
    return make_plan(measured, max_block, tree_budget, context)
