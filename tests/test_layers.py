"""Imports go one way: cli -> api and workflows -> building blocks. Checked on the source (every
import, also those inside functions), so a wrong-way import fails here, not in review."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medseg"

# What each part of the package may import from medseg (besides itself and the shared base:
# errors, choices, runtime, distributed, version). Training validates through the models'
# own predictor; inference runs every kind of model through one pipeline.
ALLOWED = {
    "data": set(),
    "nets": {"data"},
    "outputs": {"data"},
    "models": {"data", "nets"},
    "inference": {"data", "nets", "models", "outputs"},
    "evaluation": {"data"},
    "training": {"data", "nets", "models"},
    "cross_validation": {"data", "nets", "models", "inference", "evaluation", "training"},
    "api": {"data", "nets", "models", "inference", "evaluation", "training", "outputs",
            "cross_validation"},
    "demo": {"data", "nets", "models", "inference", "evaluation", "training", "outputs"},
    # The package's front door re-exports the API: it is the top, and nothing imports it.
    "__init__": {"api", "models", "inference", "training"},
}
BASE = {"errors", "choices", "runtime", "distributed", "version"}


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
    else:
        bad = {m for m in imported if part(m) not in BASE | ALLOWED[own] | {own}}
    assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)} against the layers"


def test_the_command_line_loads_no_torch_until_a_command_runs():
    """`medseg --help` answers at once: importing cli (and every light module it reads for
    choices and defaults) loads neither torch nor MONAI."""
    code = ("import sys, cli; heavy = [m for m in ('torch', 'monai', 'nibabel', 'SimpleITK') "
            "if m in sys.modules]; print(' '.join(heavy))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent,
                            capture_output=True, text=True, check=True).stdout.split()
    assert not loaded, f"import cli loads {loaded}: import them inside the commands"
