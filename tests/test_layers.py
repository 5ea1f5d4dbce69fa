"""The package's layers hold: every import in every module, function-level ones included, points down.

rl/ (building blocks) imports nothing from envs/, agents/ or scripts/; envs/ nothing from agents/ or
scripts/; agents/ nothing from scripts/; rl_dqn/ (the Python API, over agents/) nothing from scripts/; a
script imports no other script.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"rl": {"envs", "agents", "scripts", "rl_dqn"}, "envs": {"agents", "scripts", "rl_dqn"},
             "agents": {"scripts", "rl_dqn"}, "rl_dqn": {"scripts"}, "scripts": {"scripts"}}


def imported_packages(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """(line, top-level module path) of every import in ``tree``, relative ones resolved."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package if node.level else ""
            module = ".".join(filter(None, [base, node.module]))
            if module == "scripts" or (node.level and not node.module):
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return found


def violations(path: Path) -> list[str]:
    package = path.relative_to(ROOT).parts[0]
    bad = []
    for line, module in imported_packages(ast.parse(path.read_text()), package):
        top = module.split(".")[0]
        if top in FORBIDDEN[package] and not (package == "scripts" and module == "scripts"):
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


MODULES = sorted(p for pkg in FORBIDDEN for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_layers(path):
    assert violations(path) == []


def test_the_walk_sees_imports_inside_functions(tmp_path):
    tree = ast.parse("def f():\n    from envs import make_env\n    import scripts.train\n")
    assert imported_packages(tree, "rl") == [(2, "envs"), (3, "scripts.train")]
    tree = ast.parse("from scripts import train\nfrom . import evaluate\n")
    assert imported_packages(tree, "scripts") == [(1, "scripts.train"), (2, "scripts.evaluate")]
