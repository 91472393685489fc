"""pyspec's layers (docs/design.md): imports point down only and form no cycle
(``scripts/import_layers.py``, every import, function-level ones too)."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "import_layers.py"
spec = importlib.util.spec_from_file_location("import_layers", SCRIPT)
layers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(layers)


def test_no_import_cycle():
    assert layers.cycles(layers.graph()) == []


def test_imports_point_down_and_every_module_has_a_layer():
    edges = layers.graph()
    assert layers.upward(edges) == []
    assert layers.unplaced(edges) == []


def test_the_check_sees_function_level_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from pyspec.api import generate\n")
    assert layers.imports(module) == {"pyspec.api"}
