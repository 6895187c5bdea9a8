"""The shape of the package, held to its rules: layers, sizes, one home for each name.

docs/architecture.md draws these layers; this module fails when the code stops matching the
drawing: an import that goes up a layer, a cycle, a module or function grown past its limit,
an artifact name spelled outside the workspace module, or a vocabulary of choices that no
longer matches the registry it names.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "deepsight_tf"
# Each layer may import its own and lower ones. plots draws for every layer and imports only
# core at run time (types of the layers above come under TYPE_CHECKING).
LAYERS = {
    "core": 0,
    "plots": 1,
    "data": 2,
    "model": 3,
    "training": 4,
    "diagnose": 5,
    "serve": 6,
    "reporting": 7,
    "cli": 8,
}
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 80
# Straight-line builders: long because they list things, not because they do several jobs.
LONG_FUNCTIONS_ALLOWED: set[str] = set()
ARTIFACT_NAMES = (
    "manifest.json",
    "settings.toml",
    "report.json",
    "images.npz",
    "split.json",
    "duplicates.csv",
    "hypotheses.json",
    "config.json",
    "history.csv",
    "model.keras",
    "metrics.json",
    "predictions.npz",
    "state.json",
    "lr_finder.json",
    "label_issues.csv",
    "label_issues_imagenet.csv",
    "features.npz",
    "dropped_train_imagenet.csv",
    "focus_pairs.txt",
    "report.html",
)


@functools.cache
def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = ast.parse(path.read_text(), str(path))
    return found


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return inside


def imports(tree: ast.Module, known: set[str]) -> set[str]:
    """deepsight_tf modules imported anywhere in `tree` (functions too), TYPE_CHECKING aside.

    `from package import module` depends on that module, not on the package's __init__.
    """
    skip = _type_checking_nodes(tree)
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("deepsight_tf"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    out.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("deepsight_tf"))
    return out


def test_imports_go_down_the_layers_only() -> None:
    trees = modules()
    upward = []
    for module, tree in trees.items():
        mine = layer_of(module)
        if mine is None:
            continue
        for target in imports(tree, set(trees)):
            theirs = layer_of(target)
            if target in trees and theirs is not None and theirs > mine:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_import_cycles() -> None:
    trees = modules()
    graph = {
        m: {t for t in imports(tree, set(trees)) if t in trees and t != m}
        for m, tree in trees.items()
    }
    seen: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in graph[node]:
            if seen.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for start in sorted(graph):
        if start not in seen:
            visit(start, [start])
    assert cycles == []


def test_modules_and_functions_stay_small() -> None:
    too_long_modules, too_long_functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().count("\n")
        if lines > MAX_MODULE_LINES:
            too_long_modules.append(f"{path.relative_to(PACKAGE)} ({lines})")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                name = f"{path.relative_to(PACKAGE)}:{node.name}"
                if length > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS_ALLOWED:
                    too_long_functions.append(f"{name} ({length})")
    assert too_long_modules == []
    assert too_long_functions == []


def _string_literals(tree: ast.Module) -> list[str]:
    """Every str constant except docstrings (f-string pieces included)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


@pytest.mark.parametrize("name", ARTIFACT_NAMES)
def test_each_artifact_name_is_spelled_in_the_workspace_module_only(name: str) -> None:
    spelled = sorted(
        module
        for module, tree in modules().items()
        if any(name in literal for literal in _string_literals(tree))
    )
    assert spelled == ["deepsight_tf.core.workspace"]


def test_vocabularies_match_their_registries() -> None:
    from deepsight_tf.core import settings
    from deepsight_tf.diagnose.explain import _EXPLAINERS
    from deepsight_tf.model.backbones import BACKBONES
    from deepsight_tf.training.augment import AUGMENT_PRESETS

    assert tuple(BACKBONES) == settings.BACKBONES
    assert tuple(AUGMENT_PRESETS) == settings.AUGMENT_PRESETS
    assert tuple(_EXPLAINERS) == settings.CAM_METHODS
