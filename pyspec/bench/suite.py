"""The benchmark suite behind ``pyspec bench``: pyspec's decoding modes against the tools users have
today (Hugging Face ``generate()`` plain, with prompt lookup and with assisted generation), on
MT-bench (80 questions, 8 categories) and HumanEval (164 prompts), every output checked.

Modes (greedy, batch 1, each prompt alone, end to end: prefill included):

- ``ar``: pyspec autoregressive decoding, the baseline of every speed-up and the reference tokens
  of every pyspec mode;
- ``ngram``: pyspec with prompt-lookup drafts (``block`` tokens);
- ``plan``: the configuration :func:`pyspec.plan` chooses on this machine (profiled first, on
  calibration prompts);
- ``hidden-transfer``: pyspec with the target's trained hidden-transfer layers
  (``pyspec/weights/<target>/hidden-transfer.safetensors``), drafting a tree of per-depth widths
  ``heads_tree`` from the target's own pass;
- ``hf``: ``transformers`` ``generate()``, the reference tokens of the other HF modes;
- ``hf-pld``: ``generate(prompt_lookup_num_tokens=n)``, n the fastest of :data:`PLD_CHOICES` on
  the calibration prompts (as pyspec's plan chooses its block sizes there);
- ``hf-assisted``: ``generate(assistant_model=...)`` with ``num_assistant_tokens`` the fastest of
  :data:`ASSISTANT_CHOICES` on the calibration prompts; the assistant is any draft name
  (:mod:`pyspec.drafters.names`) of a model: the trained ``draft-lm-1l`` pyspec uses (by default when
  the target has one), ``early:N``, each exported as a ``transformers`` model
  (:func:`pyspec.models.export.to_transformers`), or another model (different-tokenizer assisted
  generation).

Prompts: the held-out MT-bench and HumanEval prompts only (:data:`pyspec.data.HELD_OUT_EVERY`); the
others are the calibration prompts that plans and the HF settings are chosen on.

Modes run interleaved: for each prompt, every mode in turn, the order rotated from prompt to prompt,
and the whole set ``repeats`` times. Results: tokens/s (new tokens over wall time), speed-up over
``ar``, MAT, token identity, per dataset and category, median and spread over repeats; written as
JSON, a markdown table and plots (:func:`write_report`).

Example:
    >>> from pyspec.bench.suite import pick
    >>> pick(list(range(80)), 4)
    [0, 20, 40, 60]
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import torch
from tqdm import tqdm

from pyspec.api import drafter_from_plan, encode_prompts, load_model, profile_model
from pyspec.bench.estimate import estimate, estimate_markdown
from pyspec.bench.report import markdown, write_report
from pyspec.data import HELD_OUT_EVERY, calibration, held_out, humaneval, mtbench
from pyspec.decoding.autoregressive import generate_autoregressive
from pyspec.decoding.hierarchy import build_stack
from pyspec.decoding.speculative import generate_speculative
from pyspec.drafters.names import parse_draft, resolve_draft
from pyspec.drafters.trained import HEADS, trained_drafts
from pyspec.models.export import to_transformers
from pyspec.models.llama import LlamaModel

PYSPEC_MODES = ("ar", "ngram", "plan", "hidden-transfer")
HF_MODES = ("hf", "hf-pld", "hf-assisted")
DATASETS = {"mtbench": (mtbench, True), "humaneval": (humaneval, False)}  # loader, chat template
PLD_CHOICES = (2, 4, 6, 10)  # prompt_lookup_num_tokens tried (10: transformers' documented example)
ASSISTANT_CHOICES = (3, 6, 20)  # num_assistant_tokens tried (20: transformers' default)
MODEL_KEYS = {"smollm2-135m-instruct": "smollm2", "qwen2.5-coder-1.5b-instruct": "qwen"}  # in headline keys


@dataclass
class Item:
    """One prompt to decode."""

    dataset: str
    category: str
    id: str
    ids: list[int]


@dataclass
class Record:
    """One mode decoding one prompt once."""

    mode: str
    dataset: str
    category: str
    id: str
    repeat: int
    new_tokens: int
    seconds: float
    identical: bool
    mat: float | None = None
    decode_seconds: float | None = None  # after the first step (pyspec modes): what the planner predicts
    tokens: list[int] = field(default_factory=list, repr=False)
    day: str = field(default_factory=lambda: date.today().isoformat())


def pick(prompts: list, limit: int | None) -> list:
    """``limit`` prompts spread evenly over ``prompts`` (so over MT-bench's category blocks); all if None."""
    if limit is None or limit >= len(prompts):
        return list(prompts)
    return [prompts[i * len(prompts) // limit] for i in range(limit)]


def select_prompts(
    model: LlamaModel, datasets: Sequence[str], limit: int | None = None, split: str = "held_out"
) -> list[Item]:
    """The ``split`` (``"held_out"``: the benchmark's; ``"calibration"``: the others) prompts of
    ``datasets`` (``"mtbench"``: chat template; ``"humaneval"``: raw completion), at most ``limit``
    per dataset, tokenized for ``model``."""
    items = []
    for name in datasets:
        load, chat = DATASETS[name]
        prompts = (held_out if split == "held_out" else calibration)(load(), HELD_OUT_EVERY[name])
        prompts = pick(prompts, limit) if split == "held_out" else prompts[: limit or None]
        ids = encode_prompts(model, [p.text for p in prompts], chat=chat)
        items += [Item(name, p.category, p.id, i) for p, i in zip(prompts, ids, strict=True)]
    return items


def check_modes(modes: Sequence[str]) -> None:
    """Raises ValueError naming any mode the suite does not know."""
    unknown = set(modes) - set(PYSPEC_MODES) - set(HF_MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; choose from {PYSPEC_MODES + HF_MODES}")


def default_assistant(model: LlamaModel) -> str:
    """HF assisted generation's draft by default: the trained ``draft-lm-1l`` pyspec drafts with,
    when ``model`` has one, else its early exit ``early:6``."""
    return "draft-lm-1l" if "draft-lm-1l" in trained_drafts(model) else "early:6"


class Modes:
    """Runs each mode on one prompt: ``run(mode, ids, max_new)`` -> (tokens, seconds, MAT, decode
    seconds). Models load once, when a mode first needs them. ``pld_tokens`` and
    ``assistant_tokens`` set HF's prompt lookup and assisted generation (see :meth:`tune`)."""

    def __init__(
        self,
        model: LlamaModel,
        modes: Sequence[str],
        block: int = 5,
        plan=None,
        assistant: str | None = None,
        heads_tree: Sequence[int] = (1, 1, 1),
    ) -> None:
        check_modes(modes)
        if "plan" in modes and plan is None:
            raise ValueError("mode 'plan' needs a plan")
        self.model, self.block, self.plan = model, block, plan
        self.assistant_spec = assistant or default_assistant(model)
        if parse_draft(self.assistant_spec)[0] == "ngram" or self.assistant_spec in HEADS:
            raise ValueError(f"hf-assisted needs a draft model, not {self.assistant_spec!r}")
        self.heads_tree = list(heads_tree)
        self.eos = list(model.config.eos_token_ids)
        self.pld_tokens, self.assistant_tokens = PLD_CHOICES[-1], ASSISTANT_CHOICES[-1]
        self._hf = self._assistant = None
        self._assistant_kw: dict = {}

    def hf(self):
        """The target as a ``transformers`` model (fp32), from the folder pyspec loaded (a packed
        model's GGUF converted to fp32 safetensors once, as ``load_model`` does)."""
        if self._hf is None:
            from transformers import AutoModelForCausalLM

            folder = self.model.folder
            if self.model.packed:
                from pyspec.models.loading import gguf_file, prepare_gguf

                folder = prepare_gguf(gguf_file(self.model.source), progress=False)
            self._hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        return self._hf

    def assistant(self):
        """The ``transformers`` assistant: the target's own draft (early exit, trained draft LM)
        exported with its weights, or another model from its folder (across tokenizers)."""
        if self._assistant is None:
            draft = resolve_draft(self.model, self.assistant_spec)
            if parse_draft(self.assistant_spec)[0] == "model":
                from transformers import AutoModelForCausalLM

                self._assistant = AutoModelForCausalLM.from_pretrained(
                    str(draft.folder), dtype=torch.float32
                ).eval()
                if draft.config.vocab_size != self.model.config.vocab_size:
                    self._assistant_kw = {
                        "tokenizer": self.model.tokenizer,
                        "assistant_tokenizer": draft.tokenizer,
                    }
            else:
                self._assistant = to_transformers(draft, self.model.folder)
        self._assistant.generation_config.num_assistant_tokens = self.assistant_tokens
        return self._assistant

    def tune(self, modes: Sequence[str], items: Sequence[Item], max_new: int, progress: bool = True) -> dict:
        """Gives HF's speculative modes their best setting here, as pyspec's plan gets its block
        sizes: for ``hf-pld`` each of :data:`PLD_CHOICES`, for ``hf-assisted`` each of
        :data:`ASSISTANT_CHOICES`, timed on the calibration ``items`` (after one untimed warm-up
        run, the settings interleaved per prompt); keeps the fastest and returns
        ``{mode: {"setting": name, "seconds": {value: total seconds}, "chosen": value}}``."""
        knobs = {
            "hf-pld": ("prompt_lookup_num_tokens", "pld_tokens", PLD_CHOICES),
            "hf-assisted": ("num_assistant_tokens", "assistant_tokens", ASSISTANT_CHOICES),
        }
        out = {}
        for mode in [m for m in modes if m in knobs]:
            setting, attr, choices = knobs[mode]
            seconds = dict.fromkeys(choices, 0.0)
            self.run(mode, items[0].ids, max_new)
            for item in tqdm(items, desc=f"tune {mode}", disable=not progress):
                for value in choices:
                    setattr(self, attr, value)
                    seconds[value] += self.run(mode, item.ids, max_new)[1]
            setattr(self, attr, min(seconds, key=seconds.get))
            out[mode] = {"setting": setting, "seconds": seconds, "chosen": getattr(self, attr)}
        return out

    def run(
        self, mode: str, ids: list[int], max_new: int
    ) -> tuple[list[int], float, float | None, float | None]:
        if mode in PYSPEC_MODES:
            return self._pyspec(mode, ids, max_new)
        kw: dict = {}
        if mode == "hf-pld":
            kw["prompt_lookup_num_tokens"] = self.pld_tokens
        elif mode == "hf-assisted":
            kw["assistant_model"] = self.assistant()
            kw.update(self._assistant_kw)
        hf = self.hf()
        start = time.perf_counter()
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = hf.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new,
                do_sample=False,
                eos_token_id=self.eos,
                pad_token_id=self.eos[0],
                **kw,
            )
        seconds = time.perf_counter() - start
        row = out[0, len(ids) :].tolist()
        cut = next((i + 1 for i, t in enumerate(row) if t in self.eos), len(row))
        return row[:cut], seconds, None, None

    def _pyspec(self, mode: str, ids: list[int], max_new: int):
        if mode == "ar":
            drafter = None
        elif mode == "ngram":
            drafter = build_stack(self.model, ["ngram"], [self.block])
        elif mode == "hidden-transfer":
            drafter = build_stack(self.model, ["hidden-transfer"], tree=self.heads_tree)
        else:
            drafter = drafter_from_plan(self.model, self.plan, 1)
        start = time.perf_counter()
        if drafter is None:
            out = generate_autoregressive(self.model, [ids], max_new)[0]
        else:
            out = generate_speculative(self.model, [ids], drafter, max_new)[0]
        seconds = time.perf_counter() - start
        rate = out.stats.decode_tokens_per_second
        decode = (len(out.tokens) - 1) / rate if rate else None
        return out.tokens, seconds, out.stats.mat, decode


class Journal:
    """A JSON-lines file of finished runs, so that a long suite can stop and go on later: the first
    line holds the settings the runs were made with, each further line one :class:`Record` (with its
    tokens and the day it ran). Reopening it with other settings is an error, not a silent mix."""

    def __init__(self, path: str | os.PathLike, settings: dict) -> None:
        self.path = Path(path)
        self.done: dict[tuple[str, str, str, int], Record] = {}
        if self.path.exists() and self.path.stat().st_size:
            lines = self.path.read_text().splitlines()
            if json.loads(lines[0]) != settings:
                raise ValueError(
                    f"the journal {self.path} was written with other settings ({lines[0]}), not "
                    f"{json.dumps(settings)}: give another journal file"
                )
            kept = [lines[0]]
            for line in lines[1:]:
                try:
                    record = Record(**json.loads(line))
                except (json.JSONDecodeError, TypeError):  # cut short by a stop: run again
                    continue
                self.done[(record.mode, record.dataset, record.id, record.repeat)] = record
                kept.append(line)
            self.path.write_text("\n".join(kept) + "\n")  # without the cut line, so appends stay whole
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(settings) + "\n")

    @staticmethod
    def settings_of(path: str | os.PathLike) -> dict:
        """The settings a journal was started with ({} for a new or empty one)."""
        path = Path(path)
        if not path.exists() or not path.stat().st_size:
            return {}
        return json.loads(path.read_text().splitlines()[0])

    def add(self, record: Record) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(asdict(record)) + "\n")


def run_suite(
    modes: Modes,
    names: Sequence[str],
    items: Sequence[Item],
    max_new: int,
    repeats: int = 1,
    progress: bool = True,
    journal: Journal | None = None,
) -> list[Record]:
    """Every mode on every prompt, ``repeats`` times, interleaved (the order rotated per prompt); each
    output checked against its reference (``ar`` for pyspec modes, ``hf`` for the other HF modes).
    Runs the ``journal`` holds are taken from it; each new run is appended to it as it finishes."""
    names = list(names)
    references: dict[tuple[str, str, str], list[int]] = {}
    records = []
    done = journal.done if journal is not None else {}
    bar = tqdm(total=repeats * len(items) * len(names), desc="bench", disable=not progress)
    for repeat in range(repeats):
        for i, item in enumerate(items):
            shift = (i + repeat) % len(names)
            for name in names[shift:] + names[:shift]:
                record = done.get((name, item.dataset, item.id, repeat))
                if record is None:
                    tokens, seconds, mat, decode = modes.run(name, item.ids, max_new)
                    record = Record(
                        name, item.dataset, item.category, item.id, repeat, len(tokens), seconds, True
                    )
                    record.mat, record.decode_seconds, record.tokens = mat, decode, tokens
                    if journal is not None:
                        journal.add(record)
                ref_mode = "ar" if name in PYSPEC_MODES else "hf"
                key = (ref_mode, item.dataset, item.id)
                if name == ref_mode and key not in references:
                    references[key] = record.tokens
                records.append(record)  # checked below, once every reference exists
                bar.update()
    bar.close()
    for r in records:
        ref = references.get(("ar" if r.mode in PYSPEC_MODES else "hf", r.dataset, r.id))
        r.identical = ref is not None and r.tokens == ref
    return records


def _rate(records: list[Record]) -> float:
    return sum(r.new_tokens for r in records) / max(sum(r.seconds for r in records), 1e-9)


def _spread(ratios: list[float]) -> dict:
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {"median": statistics.median(ratios), "q1": q[0], "q3": q[-1]}


def summarize(records: Sequence[Record], names: Sequence[str]) -> dict:
    """Per dataset and category (and ``"all"``), per mode: tokens/s (median over repeats, min, max),
    speed-up over ``ar`` (median over repeats of the ratio of total times), per-prompt speed-up over
    each baseline run (``ar``, ``hf``, ``hf-pld``: median and quartiles of the ratio of one prompt's
    times), MAT, and whether every output was identical to its reference."""
    out: dict = {}
    groups = {(r.dataset, r.category) for r in records} | {(r.dataset, "all") for r in records}
    baselines = [b for b in ("ar", "hf", "hf-pld") if b in names]
    for dataset, category in sorted(groups):
        rows = [r for r in records if r.dataset == dataset and category in ("all", r.category)]
        repeats = sorted({r.repeat for r in rows})
        times = {(r.mode, r.id, r.repeat): r.seconds for r in rows}
        entry = {}
        for name in names:
            mine = [r for r in rows if r.mode == name]
            rates = [_rate([r for r in mine if r.repeat == k]) for k in repeats]
            ar_rates = [_rate([r for r in rows if r.mode == "ar" and r.repeat == k]) for k in repeats]
            per_prompt = {
                base: [
                    times[base, r.id, r.repeat] / r.seconds for r in mine if (base, r.id, r.repeat) in times
                ]
                for base in baselines
            }
            mats = [r.mat for r in mine if r.mat is not None]
            entry[name] = {
                "tokens_per_second": statistics.median(rates),
                "tokens_per_second_range": [min(rates), max(rates)],
                "speedup_vs_ar": statistics.median(a / b for a, b in zip(rates, ar_rates, strict=True)),
                "per_prompt_speedup": {base: _spread(r) for base, r in per_prompt.items() if r},
                "mat": statistics.fmean(mats) if mats else None,
                "identical": all(r.identical for r in mine),
                "prompts": len({r.id for r in mine}),
            }
        out.setdefault(dataset, {})[category] = entry
    return out


def headline(summary: dict, model_key: str, ours: str) -> dict:
    """The figures the issue names: speed-up of pyspec's mode ``ours`` over HF plain and HF prompt
    lookup per ``<model_key>_<dataset>``, and losslessness."""
    result: dict = {"speedup_vs_hf_plain": {}, "speedup_vs_hf_pld": {}}
    for dataset, cats in summary.items():
        modes = cats["all"]
        for key, base in (("speedup_vs_hf_plain", "hf"), ("speedup_vs_hf_pld", "hf-pld")):
            if ours in modes and base in modes:
                result[key][f"{model_key}_{dataset}"] = round(
                    modes[ours]["tokens_per_second"] / modes[base]["tokens_per_second"], 3
                )
    result["lossless"] = all(m["identical"] for cats in summary.values() for m in cats["all"].values())
    return result


def machine() -> str:
    """A one-line description of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def predictions(records: Sequence[Record], profile: dict, plan, block: int) -> list[dict]:
    """The planner's predicted decoding tokens/s of each pyspec mode against the measured one (new
    tokens after the first over the time after the first step), per dataset."""
    from planner.plan import predict

    choice = plan.for_batch(1)
    configs = {"ar": ([], None), "ngram": ([("ngram", block)], None), "plan": (choice.levels, choice.tree)}
    out = []
    for dataset in sorted({r.dataset for r in records}):
        for mode, (levels, tree) in configs.items():
            mine = [r for r in records if r.dataset == dataset and r.mode == mode and r.decode_seconds]
            if not mine:
                continue
            measured = sum(r.new_tokens - 1 for r in mine) / sum(r.decode_seconds for r in mine)
            out.append(
                {
                    "mode": mode,
                    "dataset": dataset,
                    "predicted": 1.0 / predict(profile, 1, levels, tree),
                    "measured": measured,
                }
            )
    return out


def bench(
    model: str | LlamaModel = "smollm2-135m-instruct",
    datasets: Sequence[str] = ("mtbench", "humaneval"),
    modes: Sequence[str] = PYSPEC_MODES + HF_MODES,
    limit: int | None = None,
    max_new_tokens: int = 128,
    repeats: int = 1,
    block: int = 5,
    assistant: str | None = None,
    calibration_prompts: int = 4,
    profile: dict | None = None,
    progress: bool = True,
    heads_tree: Sequence[int] = (1, 1, 1),
    journal: str | os.PathLike | None = None,
    tune_prompts: int = 2,
) -> dict:
    """Runs the suite (see the module docstring) and returns the report: settings, machine, date,
    summary per dataset/category/mode, headline figures, per-run records. Mode ``plan`` profiles
    the target on ``calibration_prompts`` MT-bench and HumanEval prompts held out of the benchmark
    splits (:func:`pyspec.profile_model`), unless a ``profile`` (from ``pyspec profile``) is given;
    HF's prompt lookup and assisted generation get their fastest setting on ``tune_prompts``
    calibration prompts per dataset (:meth:`Modes.tune`). ``assistant``: hf-assisted's draft
    (default :func:`default_assistant`).
    With a ``journal`` file, a run that stops (a session's end, a crash) goes on where it stopped
    when called again with the same settings: finished runs are read back, not repeated
    (:class:`Journal`); the report then names every day its runs come from.

    Example:
        >>> report = bench("smollm2-135m-instruct", ["mtbench"], ["ar", "hf"], limit=8)  # doctest: +SKIP
        >>> report["summary"]["mtbench"]["all"]["hf"]["speedup_vs_ar"]  # doctest: +SKIP
    """
    check_modes(modes)
    for name in datasets:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    target = load_model(model, progress=progress) if isinstance(model, str) else model
    names = list(dict.fromkeys(["ar"] + [m for m in modes if m != "ar"]))
    if any(m in HF_MODES for m in names) and "hf" not in names:
        names.insert(names.index(next(m for m in names if m in HF_MODES)), "hf")
    items = select_prompts(target, datasets, limit)
    plan = None
    if "plan" in names:
        from planner.plan import make_plan

        if profile is None:
            profile = profile_model(target, ["ngram"], calibration_prompts=calibration_prompts)
        plan = make_plan(profile, max_block=16)
    runner = Modes(target, names, block, plan, assistant, heads_tree)
    tuning = Journal.settings_of(journal).get("hf_tuning") if journal is not None else None
    if tuning is None:
        calibrating = select_prompts(target, datasets, tune_prompts, split="calibration")
        tuning = runner.tune(names, calibrating, max_new_tokens, progress)
        tuning = json.loads(json.dumps(tuning))  # as a journal holds it: keys are strings
    runner.pld_tokens = tuning.get("hf-pld", {}).get("chosen", runner.pld_tokens)
    runner.assistant_tokens = tuning.get("hf-assisted", {}).get("chosen", runner.assistant_tokens)
    settings = {
        "model": target.name,
        "datasets": list(datasets),
        "modes": names,
        "limit": limit,
        "max_new_tokens": max_new_tokens,
        "repeats": repeats,
        "block": block,
        "assistant": runner.assistant_spec if "hf-assisted" in names else None,
        "hf_tuning": tuning,
        "heads_tree": list(heads_tree) if "hidden-transfer" in names else None,
        "plan": plan.for_batch(1).label if plan else None,
        "threads": torch.get_num_threads(),
    }
    book = Journal(journal, settings) if journal is not None else None
    records = run_suite(runner, names, items, max_new_tokens, repeats, progress, book)
    summary = summarize(records, names)
    model_key = MODEL_KEYS.get(settings["model"], settings["model"].split("-")[0].lower())
    report = {
        **settings,
        "model_key": model_key,
        "machine": machine(),
        "date": date.today().isoformat(),
        "days": sorted({r.day for r in records}),
        "summary": summary,
        "headline": headline(summary, model_key, "plan" if "plan" in names else "ngram"),
        "records": [{k: v for k, v in asdict(r).items() if k != "tokens"} for r in records],
    }
    if "hf" in names:
        ids = {(r.dataset, r.id) for r in records}
        first = {(r.mode, r.dataset, r.id): r.tokens for r in records if r.repeat == 0}
        agree = sum(first["hf", d, i] == first["ar", d, i] for d, i in ids)
        report["hf_agrees_with_ar"] = [agree, len(ids)]
    if plan is not None:
        report["latency"] = {
            f"target, batch {b}": curve[profile["target"]] for b, curve in profile["latency"].items()
        }
        report["predictions"] = predictions(records, profile, plan, block)
    return report


def run_cli(args) -> int:
    """``pyspec bench``: see :func:`bench` (or :func:`estimate` with ``--random-weights``); prints the
    tables, writes the report, last line JSON."""
    profile = json.loads(Path(args.profile).read_text()) if args.profile else None
    if args.random_weights:
        if profile is None:
            raise ValueError("--random-weights needs --profile: acceptance measured with the real weights")
        est = estimate(profile, args.device, args.batch_sizes, args.block)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "estimate.json").write_text(json.dumps(est, indent=1) + "\n")
        (out / "estimate.md").write_text(estimate_markdown(est))
        print(estimate_markdown(est))
        print(json.dumps({"estimated": True, "rows": est["rows"]}))
        return 0
    report = bench(
        args.model,
        args.datasets,
        args.modes,
        args.limit,
        args.max_new_tokens,
        args.repeats,
        args.block,
        args.assistant,
        profile=profile,
        heads_tree=args.heads_tree,
        journal=args.journal,
        tune_prompts=args.tune_prompts,
    )
    write_report(report, args.out, args.readme)
    print(markdown(report))
    print(json.dumps(report["headline"]))
    return 0
