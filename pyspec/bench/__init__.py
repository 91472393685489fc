"""The benchmark harness beside the runtime: ``pyspec bench``'s suite (:mod:`pyspec.bench.suite`), its
report and the README's results section (:mod:`pyspec.bench.report`), and estimates where the real
weights cannot be installed (:mod:`pyspec.bench.estimate`). Nothing in the runtime imports it."""

from pyspec.bench.estimate import estimate, estimate_markdown
from pyspec.bench.report import markdown, update_readme, write_report
from pyspec.bench.suite import Modes, bench, pick, run_cli, select_prompts

__all__ = [
    "bench",
    "run_cli",
    "Modes",
    "pick",
    "select_prompts",
    "markdown",
    "write_report",
    "update_readme",
    "estimate",
    "estimate_markdown",
]
