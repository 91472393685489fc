"""The repository explains itself and its text agrees with what it measured: no citation of files
outside it, links and make targets that exist, counts that match the result files they come from."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = [ROOT / "README.md", ROOT / "pyproject.toml", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = sorted(p for d in ("pyspec", "planner", "benchmarks") for p in (ROOT / d).rglob("*.py"))


def test_nothing_cites_files_outside_the_repository():
    for path in TEXT + SOURCES:
        assert "../shared" not in path.read_text(), path


def test_relative_links_and_make_targets_exist():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    for path in TEXT:
        text = path.read_text()
        for link in re.findall(r"\]\(([^)#:]+)\)", text):  # markdown links that are not URLs
            assert (path.parent / link).exists(), (path.name, link)
        for target in re.findall(r"`make ([\w-]+)", text):
            assert target in targets, (path.name, target)


def test_apar_fork_counts_match_the_benchmark_file():
    """The README and docs/apar.md count the structured prompts that forked in results/apar/bench.txt."""
    bench = (ROOT / "results/apar/bench.txt").read_text()
    rows = re.findall(r"^(\S+)\s+\S+\s+forks\s+(\d+)\s+steps", bench, re.M)  # one row per prompt
    structured = [int(f) for kind, f in rows if kind != "unstructured"]
    forked = sum(f > 0 for f in structured)
    for path in (ROOT / "README.md", ROOT / "docs/apar.md"):
        claims = re.findall(r"(\d+) of (?:the )?(\d+) structured prompts forked", path.read_text())
        assert claims == [(str(forked), str(len(structured)))], (path.name, claims)
