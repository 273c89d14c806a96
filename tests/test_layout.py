"""The folders are the architecture: each package imports only from itself and the packages
below it, read here from the source with `ast` (every import, also the ones inside functions).

    core  <-  datasets, models, losses, query  <-  engine  <-  al  <-  scripts, experiments, benchmarks
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

# Package -> the project packages it may import (besides itself).
ALLOWED = {
    "core": set(),
    "datasets": {"core"},
    "models": {"core"},
    "losses": {"core"},
    "query": {"core"},
    "engine": {"core", "datasets", "models", "losses", "query"},
    "al": {"core", "datasets", "models", "losses", "query", "engine"},
}
PROJECT = set(ALLOWED) | {"experiments", "benchmarks", "tests"}


def project_imports(path: Path) -> set[str]:
    """Top-level project packages a module imports (absolute imports; relative ones stay inside)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names} & PROJECT
    return found


def test_the_import_scan_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom core import io\n\ndef f():\n    from al.oracle import x\n    import engine.data\n")
    assert project_imports(module) == {"core", "al", "engine"}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_package_imports_upward(package):
    wrong = {}
    for path in sorted((REPO / package).rglob("*.py")):
        upward = project_imports(path) - ALLOWED[package] - {package}
        if upward:
            wrong[str(path.relative_to(REPO))] = sorted(upward)
    assert not wrong, f"imports above {package}/: {wrong}"


def test_every_package_is_placed():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests", "experiments"}
    assert packages <= set(ALLOWED), packages - set(ALLOWED)
