"""The layers import downwards only: jobs -> pipelines -> models -> lakehouse."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lakehouse.config import PROJECT_ROOT

# Each package and the packages above it, which it must never import.
ABOVE = {
    "lakehouse": ("models", "pipelines", "jobs"),
    "models": ("pipelines", "jobs"),
    "pipelines": ("jobs",),
}


PROJECT = (*ABOVE, "jobs")   # the project's own packages


def _imports_of(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, module)`` of every import statement under ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement names, anywhere in the file (functions too)."""
    return _imports_of(ast.parse(path.read_text(), str(path)))


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_no_module_imports_a_higher_layer(package):
    files = sorted((PROJECT_ROOT / package).rglob("*.py"))
    assert files, f"no modules under {package}/"
    upward = [f"{path.relative_to(PROJECT_ROOT)}:{line} imports {module}"
              for path in files for line, module in _imports(path)
              if module.split(".")[0] in ABOVE[package]]
    assert upward == []


def test_the_walk_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from models.runner import train\n")
    assert (4, "models.runner") in _imports(module)


def _project_imports_in_functions(path: Path) -> list[tuple[int, str]]:
    """Imports of the project's own packages made inside a function body (each once,
    also when functions nest)."""
    found = set()
    for fn in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            found |= {(line, module) for line, module in _imports_of(fn)
                      if module.split(".")[0] in PROJECT}
    return sorted(found)


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_no_module_of_a_lower_layer_imports_the_project_inside_a_function(package):
    """A project import inside a function is how a cycle hides; the layers need none."""
    hidden = [f"{path.relative_to(PROJECT_ROOT)}:{line} imports {module}"
              for path in sorted((PROJECT_ROOT / package).rglob("*.py"))
              for line, module in _project_imports_in_functions(path)]
    assert hidden == []


def test_the_function_walk_finds_a_hidden_project_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    import json\n"
                      "    from lakehouse.session import x\n\n"
                      "def g():\n    def h():\n        import models.runner\n")
    assert _project_imports_in_functions(module) == [(5, "lakehouse.session"),
                                                     (9, "models.runner")]
