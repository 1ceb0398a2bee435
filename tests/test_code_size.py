"""Size limits that keep the library readable: a module a newcomer can read in one sitting,
a function that fits on a screen or two. A module past the limit is a sign that it holds more
than one concept and should be split by what it holds, not trimmed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "qatacov_jax"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 100
MODULES = sorted(LIBRARY.rglob("*.py"))


def test_the_library_is_found():
    assert len(MODULES) > 50, f"only {len(MODULES)} modules under {LIBRARY}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(LIBRARY)))
def test_module_and_function_sizes(path: Path):
    text = path.read_text()
    lines = text.count("\n") + 1
    assert lines <= MAX_MODULE_LINES, f"{path.name}: {lines} lines (limit {MAX_MODULE_LINES})"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"
