"""The import graph points down (issue 18): read from the source with ``ast``, lazy imports
(inside functions) included.

- ``serving/`` and ``jobs/`` import from ``embedding`` only its core and vectors layers (and the
  package root, which holds ``PROJECT_ROOT`` and ``__version__``);
- no two top-level packages import each other (``dags/`` is the top: nothing imports it);
- inside ``embedding/``, a layer imports only itself and the layers before it:
  core < vectors < train < quality < stages < devtools < commands (the CLI's command bodies) <
  the entry modules (cli, sweep, alerts).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("embedding", "jobs", "serving", "dags")
LAYERS = ("core", "vectors", "train", "quality", "stages", "devtools", "commands", "entry")
ENTRY = {"cli", "sweep", "alerts", "__main__"}
LOW_LAYERS = {"embedding", "embedding.core", "embedding.vectors"}  # what jobs and serving may use


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(path, root)] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:  # `from embedding.core import chaos` imports a module
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def layer_of(module: str) -> str:
    """The layer of an ``embedding`` module ("root" for the package itself)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    if parts[1] in LAYERS:
        return parts[1]
    if len(parts) == 2 and parts[1] in ENTRY:
        return "entry"
    raise AssertionError(f"{module}: in no layer; put it in one of embedding/{LAYERS[:-1]}")


def violations(root: Path) -> list[str]:
    """Every import that breaks a rule of the module docstring, as 'importer -> imported: why'."""
    found = modules(root)
    known = set(found)
    edges = {name: imports_of(path, known) for name, path in found.items()}
    problems = []
    package_edges: set[tuple[str, str]] = set()
    for importer, targets in edges.items():
        top = importer.split(".")[0]
        for target in sorted(targets):
            target_top = target.split(".")[0]
            if target_top != top:
                package_edges.add((top, target_top))
            if top in ("jobs", "serving") and target_top == "embedding":
                if ".".join(target.split(".")[:2]) not in LOW_LAYERS:
                    problems.append(f"{importer} -> {target}: {top} may use only core, vectors")
            if top == target_top == "embedding":
                order = ("root", *LAYERS)
                if order.index(layer_of(target)) > order.index(layer_of(importer)):
                    problems.append(f"{importer} -> {target}: a later layer")
    for a, b in sorted(package_edges):
        if (b, a) in package_edges and a < b:
            problems.append(f"{a} <-> {b}: the packages import each other")
    return problems


def test_imports_only_point_down() -> None:
    assert violations(ROOT) == []


def test_every_embedding_module_is_in_a_layer() -> None:
    for name in modules(ROOT, ("embedding",)):
        layer_of(name)  # raises for a module in no layer


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("serving/leak.py", "from embedding.quality.report import x\n", "may use"),
        ("jobs/leak.py", "def f():\n    import embedding.stages.pipeline\n", "may use"),
        ("embedding/core/leak.py", "from embedding.train import w2v\n", "a later layer"),
        ("embedding/vectors/leak.py", "import embedding.quality.rerank\n", "a later layer"),
        ("embedding/stages/leak.py", "from jobs.spark import get_spark\n", "import each other"),
    ],
)
def test_an_import_that_points_up_is_named(
    tmp_path: Path, module: str, source: str, expected: str
) -> None:
    """The checker itself, on a copy of the tree with one offending module added."""
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            copy = tmp_path / path.relative_to(ROOT)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(path.read_text())
    (tmp_path / module).write_text(source)
    found = violations(tmp_path)
    assert len(found) == 1 and expected in found[0], found
