"""pairdata is the bottom layer: none of its modules imports models, eval, train or serve."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

ABOVE = {"models", "eval", "train", "serve"}


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_pairdata_imports_nothing_above_it() -> None:
    found = {
        str(path.relative_to(REPO_ROOT)): sorted(imported_packages(path) & ABOVE)
        for path in sorted((REPO_ROOT / "pairdata").rglob("*.py"))
    }
    assert {name: packages for name, packages in found.items() if packages} == {}
    assert imported_packages(REPO_ROOT / "eval" / "mining.py") & {"models", "pairdata"} == {"models", "pairdata"}
