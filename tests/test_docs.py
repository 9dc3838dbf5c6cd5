"""Docs are part of the feature: generated parts are current, every command is documented,
and the Python examples run."""

from __future__ import annotations

import re

import pytest

from tests import docs_tools

DOCS = docs_tools.DOCS
PY_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def test_generated_parts_are_current() -> None:
    parts = docs_tools.generated(docs_tools.core_cli())
    for doc in DOCS.rglob("*.md"):
        text = doc.read_text()
        assert docs_tools.update(text, parts) == text, (
            f"{doc} is out of date: run python tests/docs_tools.py")


def test_every_core_command_has_help_and_docs() -> None:
    cli = docs_tools.core_cli()
    reference = (DOCS / "cli.md").read_text()
    for path, command in docs_tools.cli_commands(cli):
        assert command.help or command.short_help, f"{' '.join(path)} has no help text"
        assert f"### `{' '.join(path)}`" in reference


def test_plugin_commands_are_documented(load_plugins) -> None:
    import importlib.metadata as md

    names = [ep.dist.name for ep in md.entry_points(group="llmcli")
             if ep.dist is not None and ep.dist.name != "llmcli-testmodels"]
    load_plugins(*names)
    from llmcli.cli import cli

    all_docs = "\n".join(p.read_text() for p in DOCS.rglob("*.md"))
    core = {" ".join(p) for p, _ in docs_tools.cli_commands(docs_tools.core_cli())}
    load_plugins(*names)
    for path, command in docs_tools.cli_commands(cli):
        name = " ".join(path)
        if name in core:
            continue
        assert command.help or command.short_help, f"{name} has no help text"
        assert name in all_docs, f"'{name}' is not mentioned in docs/"


def test_index_links_resolve() -> None:
    index = (DOCS / "index.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", index):
        assert (DOCS / target).exists(), target


def test_plugin_guide_example_runs() -> None:
    blocks = PY_BLOCK.findall((DOCS / "plugins.md").read_text())
    assert blocks
    namespace: dict = {}
    exec(compile(blocks[0], "docs/plugins.md", "exec"), namespace)


@pytest.mark.slow
def test_python_api_examples_run(load_plugins) -> None:
    pytest.importorskip("llmcli_local")
    load_plugins("llmcli-local")
    for i, block in enumerate(PY_BLOCK.findall((DOCS / "python-api.md").read_text())):
        exec(compile(block, f"docs/python-api.md[{i}]", "exec"), {})


def test_every_plugin_hook_is_documented_and_the_error_example_is_real(monkeypatch) -> None:
    import types

    from llmcli import plugins
    from llmcli.errors import PluginError

    guide = (DOCS / "plugins.md").read_text()
    for spec in plugins.HOOKS.values():
        assert f"`{spec.signature}`" in guide, spec.signature
    module = types.ModuleType("llmcli_echo")
    module.register_model = lambda register: None  # type: ignore[attr-defined]
    plugins.register_plugin_module("llmcli-echo", module)
    with pytest.raises(PluginError) as info:
        plugins.load_plugins()
    assert f"Error: {info.value}\n" in guide
