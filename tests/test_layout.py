"""The code's shape, checked: short modules and functions, one way into fitting.

These are the rules the package's layout promises (README, Development): a module is short
enough to read in one sitting, a function is a small named step, and every front door fits
through the recipe, with no module but the estimator's reaching into a Regressor's privates.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "nnreg"
MODULES = sorted(SRC.rglob("*.py"))
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def _relative(path: Path) -> str:
    return str(path.relative_to(SRC))


@pytest.mark.parametrize("path", MODULES, ids=_relative)
def test_modules_and_functions_are_short(path: Path) -> None:
    text = path.read_text()
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{lines} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_no_module_but_the_estimator_touches_a_regressor_private() -> None:
    pattern = re.compile(r"\b(reg|base|regressor|estimator)\._")
    found = [
        f"{_relative(p)}:{i}: {line.strip()}"
        for p in MODULES
        if p.name != "estimator.py"
        for i, line in enumerate(p.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert found == []


def test_no_module_imports_another_modules_private_names_from_outside_its_concept() -> None:
    # The estimator's helpers are not an API: nothing imports a private name from it.
    pattern = re.compile(r"from \.+estimator import .*\b_\w+")
    found = [str(p) for p in MODULES if pattern.search(p.read_text())]
    assert found == []


def test_the_recipe_alone_seeds_networks_and_builds_their_configuration() -> None:
    def users(needle: str) -> list[str]:
        return sorted(_relative(p) for p in MODULES if needle in p.read_text())

    assert users("fork_rng(") == ["recipe.py"]
    assert users("MLPConfig(") == ["model.py", "recipe.py"]
    # Every front door builds its recipe from the estimator's parameters.
    assert {"estimator.py", "stream.py", "sweep.py"} <= set(users("Recipe.from_params("))
