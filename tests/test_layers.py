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


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement names, anywhere in the file (functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


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
