"""The core is one-way: CLI → API → models (the plugin contract, request preparation, the
Response) → spec and request data → normalizer,
record → log, with no import pointing back up, not even one made inside a function. No
module of the core or of any plugin imports itself back through others (a cycle). And the
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
    "llmcli.models": 4,  # the model layer's names in one import (re-exports only)
    "llmcli.contract": 3.9,  # the plugin contract: Model, what plugins subclass
    "llmcli.chain": 3.85,  # the tool-call loop over prepared responses
    "llmcli.prepare": 3.8,  # request preparation: checks, options, keys, alternatives
    "llmcli.response": 3.7,  # the Response runtime, Conversation, the schema retry loop
    "llmcli.request": 2.5,  # what core and backend exchange: Request, Usage, Options, ...
    "llmcli.spec": 2.5,  # PromptSpec, the frozen prompt every front end builds
    "llmcli.templates": 2.5,  # saved prompts: load, save, apply (no click)
    "llmcli.fragments": 1.6,  # -f/--sf: a file's or a URL's text, read as attachments are
    "llmcli.plugins": 3,  # the registry: loads plugins, imports no model code
    "llmcli.normalize": 3,
    "llmcli.log": 3,  # writes and reads records, knows no model or Response
    "llmcli.tooltext": 2.6,  # tools as text: the prompt, the grammar, the reply read back
    "llmcli.tools": 2.2,  # Tool, functions as tools, answering a call; built-in tools
    "llmcli.record": 2,
    "llmcli.config": 2,
    "llmcli.schema": 2,  # parses and checks JSON Schemas; imports only errors
    "llmcli.attachments": 1.5,  # Attachment: reading, fetching, typing; imports only errors
    "llmcli.errors": 1,
    "llmcli.progress": 1,  # the one status line on stderr (CLI spinner, plugin stages)
    "llmcli.capabilities": 1,
    "llmcli.cancel": 1,  # cancelling a response from another thread (its sockets)
    "llmcli.bridge": 1.2,  # a sync iterator on an event loop, from one thread (execute_async)
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


# -- no import cycle, in the core or any plugin -----------------------------------------------

#: Import edges (importer, imported) left out of the cycle check, each with its reason. Keep
#: this empty where possible: a new entry needs a reason no refactoring could remove.
CYCLE_ALLOWED: dict[tuple[str, str], str] = {}


def package_roots() -> list[Path]:
    """The directory each top-level package's name is relative to: the repository for
    ``llmcli``, each plugin's distribution folder for its package."""
    return [ROOT] + sorted(p for p in (ROOT / "plugins").iterdir() if p.is_dir())


def all_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for base in package_roots():
        for package in sorted(p.parent for p in base.glob("*/__init__.py")):
            if base == ROOT and package.name != "llmcli":
                continue  # tests/, docs/ and the like are no package of the product
            for path in package.rglob("*.py"):
                parts = path.relative_to(base).with_suffix("").parts
                modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The known modules ``name`` imports at run time (in functions too), each resolved to
    the module itself: ``from pkg import sub`` is ``pkg.sub`` when that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    found: set[str] = set()

    def add(target: str | None) -> None:
        if target and target != name:
            found.add(target)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(resolve(alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else resolve(base))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def import_graph() -> dict[str, set[str]]:
    known = all_modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        try:
            graph[name] = imported_modules(name, path, known)
        except (OSError, SyntaxError):
            # A file removed or half-written while the suite runs (another checkout at work):
            # the other tests report a broken file; this one judges only what parses.
            graph[name] = set()
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert "llmcli.serve.app" in graph and any(n.startswith("llmcli_openai") for n in graph)
    for importer, imported in CYCLE_ALLOWED:
        graph.get(importer, set()).discard(imported)
    found = cycles(graph)
    assert not found, "import cycles (type-only imports under `if TYPE_CHECKING:` aside): " + (
        "; ".join(" <-> ".join(component) for component in found))


def test_the_cycle_check_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_every_llmcli_error_lives_in_errors_py() -> None:
    """One place for the exception tree: a subclass of LLMCLIError defined anywhere else (in
    the core or a plugin) would hide from it, and could share a name with another."""
    tree = ast.parse((CORE / "errors.py").read_text())
    ours = {"LLMCLIError"}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and b.id in ours for b in node.bases):
            assert node.name not in ours, f"errors.py defines {node.name} twice"
            ours.add(node.name)
    elsewhere = []
    for name, path in all_modules().items():
        if path == CORE / "errors.py":
            continue
        try:
            classes = [n for n in ast.walk(ast.parse(path.read_text()))
                       if isinstance(n, ast.ClassDef)]
        except (OSError, SyntaxError):
            continue
        for node in classes:
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")
                     for b in node.bases}
            if bases & ours:
                elsewhere.append(f"{name}.{node.name}")
    assert not elsewhere, f"move these to llmcli/errors.py (unique names): {elsewhere}"


def test_architecture_doc_names_every_core_module() -> None:
    """docs/architecture.md's table is where a newcomer finds each thing: every module and
    package of the core has its row (a new module without one fails here)."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    table = doc[doc.index("## Where things live"):doc.index("## A prompt, end to end")]
    missing = [path.name for path in sorted(CORE.iterdir())
               if (path.suffix == ".py" and path.name != "__init__.py"
                   or path.is_dir() and (path / "__init__.py").exists())
               and f"`{path.name}{'/' if path.is_dir() else ''}`" not in table]
    assert not missing, f"give these a row in docs/architecture.md: {missing}"
