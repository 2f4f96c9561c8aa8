"""The package's import graph (scripts/import_graph.py): no cycle, no upward import, a plain model module."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "import_graph.py"


def _graph():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_cycle_and_no_upward_import():
    report = _graph().report()
    assert report["cycles"] == []
    assert report["upward_imports"] == []


def test_model_imports_no_sampling_training_or_checkpoint_writing():
    edges = _graph().report()["graph"]["sumi.model"]
    assert not [m for m in edges if m.startswith(("sumi.sampling", "sumi.train", "sumi.checkpoint", "sumi.release"))]


def test_the_checker_sees_a_cycle_hidden_in_a_function(tmp_path, monkeypatch):
    """A function-level import still ties two modules together, so the checker must count it."""
    graph = _graph()
    package = tmp_path / "sumi"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text("def f():\n    from sumi.model import X\n")
    (package / "model.py").write_text("from sumi.errors import f\nX = 1\n")
    monkeypatch.setattr(graph, "ROOT", tmp_path)
    report = graph.report()
    assert report["cycles"] == [["sumi.errors", "sumi.model"]]
    assert report["upward_imports"] == ["sumi.errors (layer 0) -> sumi.model (layer 2)"]
    assert report["function_level_imports_of_sumi"] == 1
