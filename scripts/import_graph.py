"""The import graph of the ``sumi`` package: cycles, upward imports and function-level imports.

    python scripts/import_graph.py            # a summary; exit status 1 if there is a cycle or an upward import
    python scripts/import_graph.py --json     # the same as one JSON object
    python scripts/import_graph.py --dot      # the graph in Graphviz dot

Every ``import`` of a sumi module counts, wherever it sits: one inside a function still ties the two modules
together (it only moves the failure from import time to call time), so cycles and layer checks see both kinds.
Imports under ``if TYPE_CHECKING:`` are annotations only and are not edges. ``from pkg import name`` is an edge to
``pkg`` (its ``__init__`` runs) and, when ``pkg/name.py`` exists, to that module too.

Layers (docs/design.md §6): a module may import its own layer or lower ones, never a higher one.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "sumi"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("sumi.errors", "sumi._io"),
    ("sumi.config", "sumi.diffusion", "sumi.safe_dcp"),
    ("sumi.model", "sumi.tokenizer", "sumi.chat"),
    ("sumi.checkpoint", "sumi.data", "sumi.finetune.lora", "sumi.finetune.config"),
    ("sumi.sampling", "sumi.eval", "sumi.train", "sumi.convert", "sumi.finetune", "sumi.plan"),
    ("sumi.hf", "sumi.integrations", "sumi.serve", "sumi.release", "sumi.generation", "sumi.infill"),
    ("sumi.commands", "sumi.cli", "sumi.__main__", "sumi"),
)
"""Lowest first. A module belongs to the layer of the longest prefix that names it (``sumi`` itself names only
the package's ``__init__``): a new top-level module must be placed here, or the check fails and says so."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            covers = module == prefix or (prefix != PACKAGE and module.startswith(prefix + "."))
            if covers and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise SystemExit(f"{module} is in no layer of scripts/import_graph.py; add it to LAYERS")
    return best


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module):
    """(node, at_module_level) for every import statement outside ``if TYPE_CHECKING:``."""
    def walk(node: ast.AST, top: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, top
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from walk(child, False)
            else:
                yield from walk(child, top)

    yield from walk(tree, True)


def _targets(node: ast.AST, module: str, is_package: bool, modules: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative import
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    out = [base]
    out += [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
    return out


def build_graph() -> dict:
    # sumi/assets holds files sumi copies into exported model directories (remote code), never imports.
    files = sorted(f for f in (ROOT / PACKAGE).rglob("*.py") if "assets" not in f.relative_to(ROOT).parts)
    modules = {module_name(f) for f in files}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    function_level, function_level_internal, module_level_internal = [], [], 0
    for path in files:
        module = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, top in _imports(tree):
            targets = _targets(node, module, path.name == "__init__.py", modules)
            internal = [t for t in targets if t in modules and t != module]
            if not top:
                function_level.append(f"{module}:{node.lineno}")
                if internal:
                    function_level_internal.append(f"{module}:{node.lineno} -> {', '.join(internal)}")
            elif internal:
                module_level_internal += 1
            edges[module].update(internal)
    return {"modules": sorted(modules), "edges": {m: sorted(t) for m, t in sorted(edges.items())},
            "function_level": function_level, "function_level_internal": function_level_internal,
            "module_level_internal": module_level_internal}


def strongly_connected(edges: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm; components of more than one module (or a self-loop) are cycles."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
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
            if len(component) > 1 or v in edges.get(v, ()):
                out.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def _is_package_init(importer: str, target: str) -> bool:
    """A package's ``__init__`` re-exporting its own submodules is not an upward import."""
    return target.startswith(importer + ".")


def report() -> dict:
    graph = build_graph()
    edges = graph["edges"]
    upward = [f"{a} (layer {layer_of(a)}) -> {b} (layer {layer_of(b)})"
              for a, targets in edges.items() for b in targets
              if layer_of(b) > layer_of(a) and not _is_package_init(a, b) and not _is_package_init(b, a)]
    return {
        "modules": len(graph["modules"]),
        "edges": sum(len(t) for t in edges.values()),
        "cycles": strongly_connected(edges),
        "upward_imports": upward,
        "function_level_imports": len(graph["function_level"]),
        "function_level_imports_of_sumi": len(graph["function_level_internal"]),
        "function_level_internal": graph["function_level_internal"],
        "graph": edges,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--dot", action="store_true", help="print the graph in Graphviz dot")
    parser.add_argument("--verbose", action="store_true", help="list the function-level imports of sumi modules")
    args = parser.parse_args()
    result = report()
    if args.dot:
        print("digraph sumi {")
        for a, targets in result["graph"].items():
            for b in targets:
                print(f'  "{a}" -> "{b}";')
        print("}")
    elif args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "graph"}))
    else:
        print(f"{result['modules']} modules, {result['edges']} import edges between them")
        print(f"cycles: {len(result['cycles'])}")
        for cycle in result["cycles"]:
            print("  " + " <-> ".join(cycle))
        print(f"upward imports: {len(result['upward_imports'])}")
        for line in result["upward_imports"]:
            print("  " + line)
        print(f"function-level imports: {result['function_level_imports']} "
              f"({result['function_level_imports_of_sumi']} of sumi modules)")
        if args.verbose:
            for line in result["function_level_internal"]:
                print("  " + line)
    return 1 if result["cycles"] or result["upward_imports"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
