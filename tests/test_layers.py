"""The core is one-way: CLI → API → models (the plugin contract and Response) → normalizer,
record → log, with no import pointing back up, not even one made inside a function. And the
core's declared dependencies are exactly the third-party packages it imports."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "llmcli"

#: A module may import only modules of a lower rank (or its own package's modules).
RANKS = {
    "llmcli.cli": 6,
    "llmcli.batch": 5.5,  # the batch command's logic: runs prompts through the API
    "llmcli.serve": 5.5,  # llmcli serve: the HTTP server over the API
    "llmcli.api": 5,
    "llmcli.remote": 5,  # the provider kit: plugins build on it, the core never imports it
    "llmcli.models": 4,
    "llmcli.plugins": 3,  # the registry: loads plugins, imports no model code
    "llmcli.normalize": 3,
    "llmcli.log": 3,  # writes and reads records, knows no model or Response
    "llmcli.record": 2,
    "llmcli.config": 2,
    "llmcli.schema": 2,  # parses and checks JSON Schemas; imports only errors
    "llmcli.errors": 1,
    "llmcli.progress": 1,  # the one status line on stderr (CLI spinner, plugin stages)
    "llmcli.capabilities": 1,
    "llmcli.cancel": 1,  # cancelling a response from another thread (its sockets)
}


def layer(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(path: Path) -> set[str]:
    """Every module imported anywhere in the file (functions included), except under
    ``if TYPE_CHECKING:`` (annotations only, never run)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            if node.module == "llmcli":  # from llmcli import config
                found.update(f"llmcli.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


CORE_FILES = sorted(p for p in CORE.rglob("*.py") if p.name != "__init__.py" or
                    p.parent != CORE)


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    me = layer(module_name(path))
    assert me in RANKS, f"{me}: give it a rank in RANKS"
    for target in runtime_imports(path):
        if not target.startswith("llmcli.") or layer(target) == me:
            continue
        assert layer(target) in RANKS, target
        assert RANKS[layer(target)] < RANKS[me], (
            f"{module_name(path)} imports {target}: {me} (rank {RANKS[me]}) may import "
            f"only lower layers")


def test_lower_layers_load_without_the_upper_ones() -> None:
    code = (
        "import sys\n"
        "import llmcli.models, llmcli.log\n"
        "print(sorted(m for m in sys.modules if m.startswith('llmcli.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    loaded = set(eval(out))
    assert not loaded & {"llmcli.api", "llmcli.cli", "llmcli.plugins"}, loaded


def test_declared_dependencies_are_exactly_the_imported_ones() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {dep.split(">")[0].split("=")[0].split("[")[0].strip().lower()
                .replace("-", "_") for dep in project["dependencies"]}
    imported = {
        name.split(".")[0]
        for path in CORE.rglob("*.py")
        for name in runtime_imports(path)
    }
    third_party = imported - set(sys.stdlib_module_names) - {"llmcli", "__future__"}
    assert third_party == declared
