"""The import contracts of pyproject.toml, for what import-linter cannot see: the imports the top-level
modules (config.py, worker.py, ...) make. Its graph has packages only; top-level modules are in it just
as names the packages import (import-linter #349)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
TOP_LEVEL = sorted(path.stem for path in ROOT.glob("*.py"))
FORBIDDEN = [contract for contract in CONTRACTS if contract["type"] == "forbidden"]


def layers() -> dict[str, int]:
    """Each name in the layers contract with its layer, top first (`|` siblings share one)."""
    [stack] = [contract["layers"] for contract in CONTRACTS if contract["type"] == "layers"]
    return {name.strip().strip("()"): level for level, layer in enumerate(stack) for name in layer.split("|")}


def imports_of(path: Path) -> set[str]:
    """The top-level names the file imports at run time, wherever in it (not those under TYPE_CHECKING,
    which the contracts exclude too)."""
    tree = ast.parse(path.read_text())
    for block in ast.walk(tree):
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING":
            block.body = []
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def loaded_with(sources: set[str]) -> set[str]:
    """The top-level modules among `sources` and those that importing `sources` loads, directly or through
    one another."""
    found: set[str] = set()
    packages = sources - set(TOP_LEVEL)
    pending = sources | {
        name for package in packages for path in (ROOT / package).rglob("*.py") for name in imports_of(path)
    }
    while pending:
        name = pending.pop()
        if name in TOP_LEVEL and name not in found:
            found.add(name)
            pending |= imports_of(ROOT / f"{name}.py")
    return found


def test_the_layers_contract_places_every_top_level_module():
    assert set(TOP_LEVEL) <= set(layers())


@pytest.mark.parametrize("module", TOP_LEVEL)
def test_a_top_level_module_imports_only_from_layers_below_its_own(module):
    level = layers()
    not_below = {name for name in imports_of(ROOT / f"{module}.py") & set(level) if level[name] <= level[module]}
    assert not not_below - {module}, f"{module} imports from its own layer or above: {sorted(not_below)}"


@pytest.mark.parametrize("contract", FORBIDDEN, ids=[contract["name"] for contract in FORBIDDEN])
def test_the_top_level_modules_a_source_loads_keep_its_forbidden_contract(contract):
    sources = {name.split(".")[0] for name in contract["source_modules"]}
    forbidden = set(contract["forbidden_modules"])
    broken = {module: imports_of(ROOT / f"{module}.py") & forbidden for module in loaded_with(sources)}
    assert not {module: names for module, names in broken.items() if names}
