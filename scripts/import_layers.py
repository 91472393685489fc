"""Checks pyspec's import graph: no import cycle, and no import from a lower layer to a higher one.

Every ``import`` of every module of ``pyspec`` and ``planner`` counts, at module level and inside
functions alike (parsed with :mod:`ast`, nothing is imported; imports under ``if TYPE_CHECKING:`` do
not count). The layers are docs/design.md's, top to bottom: a module may import its own layer and
the layers below it; ``planner`` imports nothing of ``pyspec``.

    python scripts/import_layers.py        # prints the cycles and upward imports; exit status 1 if any
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Top to bottom; a module belongs to the first layer with a prefix of its name (a prefix is a module
# or a package: "pyspec.serve" holds pyspec.serve.app).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry points", ("pyspec.__main__", "pyspec.cli", "pyspec.bench", "pyspec.training")),
    ("serving", ("pyspec.serve",)),
    ("facade", ("pyspec", "pyspec.api")),
    ("profiling", ("pyspec.profile",)),
    ("speculation config", ("pyspec.spec",)),
    ("decoding", ("pyspec.decoding", "pyspec.prompts")),
    ("drafters and models", ("pyspec.drafters", "pyspec.models", "pyspec.model_runner")),
    (
        "data structures",
        (
            "pyspec.batch",
            "pyspec.kv_cache",
            "pyspec.tree",
            "pyspec.verify",
            "pyspec.sampling",
            "pyspec.stats",
            "pyspec.data",
            "pyspec.hardware",
        ),
    ),
    ("ops", ("pyspec.ops", "pyspec.packed_ops", "pyspec.reference", "pyspec.cpu_isa", "pyspec._C")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists() or name == "pyspec._C"


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imports(path: Path) -> set[str]:
    """The pyspec and planner modules ``path`` imports (``from a.b import c``: a.b.c if that is a
    module, else a.b)."""
    name = module_name(path) if path.is_relative_to(ROOT) else path.stem
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
                base = base.strip(".")
            for a in node.names:
                found.add(f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if m.split(".")[0] in ("pyspec", "planner") and m != name}


def graph() -> dict[str, set[str]]:
    """Module -> the modules it imports, for every module of pyspec and planner."""
    files = sorted(p for d in ("pyspec", "planner") for p in (ROOT / d).rglob("*.py"))
    return {module_name(p): imports(p) for p in files}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return out


def layer(module: str) -> int | None:
    """The module's layer, 0 at the top (None: planner, or no layer)."""
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > len(best[1])):
                best = (rank, p)
    return None if best is None else best[0]


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Imports from a lower layer to a higher one, and from planner into pyspec."""
    out = []
    for src, targets in sorted(edges.items()):
        for dst in sorted(targets):
            if src.startswith("planner") and dst.startswith("pyspec"):
                out.append(f"{src} -> {dst} (planner imports nothing of pyspec)")
                continue
            a, b = layer(src), layer(dst)
            if a is not None and b is not None and b < a:
                out.append(f"{src} ({LAYERS[a][0]}) -> {dst} ({LAYERS[b][0]})")
    return out


def unplaced(edges: dict[str, set[str]]) -> list[str]:
    return sorted(m for m in edges if m.startswith("pyspec") and layer(m) is None)


def main() -> int:
    edges = graph()
    found = {"import cycles": [" <-> ".join(c) for c in cycles(edges)]}
    found["imports from a lower layer to a higher one"] = upward(edges)
    found["modules in no layer (add them to LAYERS)"] = unplaced(edges)
    for title, rows in found.items():
        print(f"{title}: {len(rows)}")
        for row in rows:
            print(f"  {row}")
    return 1 if any(found.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
