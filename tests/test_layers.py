"""Imports go one way: cli -> api and workflows -> building blocks. Checked on the source (every
import, also those inside functions), so a wrong-way import fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medseg"

# What each part of the package may import from medseg (besides itself and the shared base:
# errors, choices, runtime, distributed). Training validates through inference's predictor.
ALLOWED = {
    "data": set(),
    "nets": {"data"},
    "outputs": {"data"},
    "inference": {"data", "nets", "outputs"},
    "evaluation": {"data"},
    "training": {"data", "nets", "inference"},
    "cross_validation": {"data", "nets", "inference", "evaluation", "training"},
    "api": {"data", "nets", "inference", "evaluation", "training", "outputs", "cross_validation"},
    "demo": {"data", "nets", "inference", "evaluation", "training", "outputs"},
}
BASE = {"errors", "choices", "runtime", "distributed", "__init__"}


def part(module: str) -> str:
    """'medseg.data.io' -> 'data'; 'medseg.api' -> 'api'; 'medseg' -> '__init__'."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def medseg_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m == "medseg" or m.startswith("medseg.") or m == "cli"}


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_one_way(path):
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    if own == "__main__":
        return  # `python -m medseg` runs the command line: the one import of cli
    imported = medseg_imports(path)
    assert "cli" not in imported, f"{path.name}: the package never imports the command line"
    if own in BASE:
        bad = {m for m in imported if part(m) not in BASE}
        if own == "__init__":  # the package's front door re-exports the API
            bad -= {"medseg.api", "medseg.inference.options", "medseg.training.config"}
    else:
        bad = {m for m in imported if part(m) not in BASE | ALLOWED[own] | {own}}
    assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)} against the layers"
