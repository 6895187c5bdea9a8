"""The shape of the package, held to its rules: layers, sizes, one home for each name.

docs/architecture.md draws these layers; this module fails when the code stops matching the
drawing: an import that goes up a layer (type-checking imports included), a cycle, a module
or function grown past its limit, an artifact or figure name spelled outside the workspace
module, a vocabulary of choices that no longer matches the registry it names, or a test
module that imports another.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "deepsight_tf"
TESTS = Path(__file__).resolve().parent
# Each layer may import its own and lower ones, at run time or for type checking alike. plots
# draws for every layer: it takes arrays and plain values, so it imports only core.
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
    # Figures: every file name a phase draws.
    "duplicates.png",
    "duplicates_borderline.png",
    "interpolation.png",
    "class_balance.png",
    "brightness_contrast.png",
    "samples.png",
    "class_means.png",
    "batch.png",
    "schedule.png",
    "training_history.png",
    "lr_finder.png",
    "confusion_matrix.png",
    "per_class_recall.png",
    "most_confused.png",
    "top_losses.png",
    "reliability.png",
    "hypotheses.png",
    "label_issues.png",
    "deletion_insertion.png",
    "sanity_check.png",
    "context_reliance.png",
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


def imports(tree: ast.Module, known: set[str]) -> set[str]:
    """deepsight_tf modules imported anywhere in `tree`: at the top, inside functions, and
    under TYPE_CHECKING (a type named from another module is a dependency on it too).

    `from package import module` depends on that module, not on the package's __init__.
    """
    out = set()
    for node in ast.walk(tree):
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


def _registries() -> dict[str, tuple[tuple[str, ...], bool]]:
    """Each vocabulary with a registry of its own, above core: the names it registers, and
    whether their order is the vocabulary's too (the order --help lists them in)."""
    import tensorflow as tf

    from deepsight_tf.diagnose.experiment import ARM_CHANGES
    from deepsight_tf.diagnose.explain import _EXPLAINERS
    from deepsight_tf.model.backbones import BACKBONES
    from deepsight_tf.serve.export import DEFAULT_NAMES
    from deepsight_tf.training.augment import AUGMENT_PRESETS
    from deepsight_tf.training.schedules import ANNEALS

    resize_methods = {
        value for name, value in vars(tf.image.ResizeMethod).items() if name.isupper()
    }
    return {
        "BACKBONES": (tuple(BACKBONES), True),
        "AUGMENT_PRESETS": (tuple(AUGMENT_PRESETS), True),
        "CAM_METHODS": (tuple(_EXPLAINERS), True),
        "EXPERIMENT_ARMS": (tuple(ARM_CHANGES), True),
        "EXPORT_FORMATS": (tuple(DEFAULT_NAMES), True),
        "ANNEALS": (tuple(ANNEALS), True),
        "INTERPOLATIONS": (tuple(sorted(resize_methods)), False),  # tf.image.resize's methods
    }


# Vocabularies with no second list: the one module that acts on them checks every value
# against the settings tuple itself.
CONSUMED = {
    "STEMS": "deepsight_tf.model.backbones.base",
    "MIX_MODES": "deepsight_tf.training.pipeline",
    "OPTIMIZERS": "deepsight_tf.training.optim",
    "PRECISIONS": "deepsight_tf.training.optim",
    "STRATEGIES": "deepsight_tf.training.distribute",
    "TTA_MODES": "deepsight_tf.training.tta",
    "FLIPS": "deepsight_tf.training.augment",
}


def _vocabularies() -> list[str]:
    """core/settings.py's option vocabularies: its module-level tuples of strings."""
    found = []
    for node in modules()["deepsight_tf.core.settings"].body:
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple)):
            continue
        values = node.value.elts
        if values and all(isinstance(v, ast.Constant) and isinstance(v.value, str) for v in values):
            found += [target.id for target in node.targets if isinstance(target, ast.Name)]
    return found


def test_every_vocabulary_matches_its_registry_or_has_no_second_list() -> None:
    from deepsight_tf.core import settings

    registries = _registries()
    assert sorted(_vocabularies()) == sorted([*registries, *CONSUMED])
    for name, (registered, ordered) in registries.items():
        vocabulary = getattr(settings, name)
        assert (registered if ordered else set(registered)) == (
            vocabulary if ordered else set(vocabulary)
        ), name
    for name, module in CONSUMED.items():
        imported = {
            alias.name
            for node in ast.walk(modules()[module])
            if isinstance(node, ast.ImportFrom) and node.module == "deepsight_tf.core.settings"
            for alias in node.names
        }
        assert name in imported, f"{module} does not check {name}"


def test_test_modules_import_helpers_never_each_other() -> None:
    """Shared fixtures live in conftest.py, shared helpers in tests/support/: importing a test
    module would couple two modules' tests and run one's fixtures for the other."""
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            top = [name.split(".")[0] for name in names]
            found += [f"{path.relative_to(TESTS)} -> {t}" for t in top if t.startswith("test_")]
            found += [f"{path.relative_to(TESTS)} -> conftest" for t in top if t == "conftest"]
    assert found == []
