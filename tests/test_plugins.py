"""Plugin loading: hooks are checked when a plugin loads, so a misspelled or unknown hook, or
one with the wrong signature, is a clear one-line error instead of a hook silently unused."""

from __future__ import annotations

import importlib.metadata as md
import types
from collections.abc import Callable

import pytest
from click.testing import CliRunner
from llmcli_testmodels import TestModel

import llmcli
from llmcli import plugins
from llmcli.cli import cli
from llmcli.errors import PluginError


def plugin_module(**attrs: object) -> types.ModuleType:
    module = types.ModuleType("llmcli_probe")
    for name, value in attrs.items():
        setattr(module, name, value)
    plugins.register_plugin_module("llmcli-probe", module)
    return module


def register_one(register: Callable[..., None]) -> None:
    register(TestModel("probe-model", llmcli.PrefillSupport.EATS_PREFIX))


def test_hooks_are_found_and_helpers_ignored() -> None:
    import codecs

    from llmcli.models import resolve_key

    def resolve_model(name: str) -> None:
        return None

    def register_commands(cli: object) -> None:
        pass

    plugin_module(register_models=register_one, resolve_model=resolve_model,
                  register_commands=register_commands, _register_helper=lambda: None,
                  helper=lambda a, b: None, CONSTANT=1,
                  # imported from the core or the standard library: not hooks
                  resolve_key=resolve_key, register_error=codecs.register_error)
    (plugin,) = plugins.load_plugins()
    assert [m.model_id for m in plugin.models] == ["probe-model"]
    assert plugin.models[0].plugin == "llmcli-probe"
    assert plugin.resolve_model is resolve_model
    assert plugin.register_commands is register_commands
    assert llmcli.get_model("probe-model").model_id == "probe-model"


@pytest.mark.parametrize(("name", "hint"), [
    ("register_model", "did you mean register_models?"),
    ("regster_models", "did you mean register_models?"),
    ("resolve_models", "did you mean resolve_model?"),
    ("register_command", "did you mean register_commands?"),
    ("register_tool", "did you mean register_tools?"),
    ("register_widgets", "Hooks: register_models(register), resolve_model(name), "
                         "register_commands(cli), register_tools(register)"),
])
def test_a_misspelled_or_unknown_hook_fails_at_load_time(name: str, hint: str) -> None:
    plugin_module(**{name: register_one})
    with pytest.raises(PluginError) as info:
        plugins.load_plugins()
    message = str(info.value)
    assert f"Plugin 'llmcli-probe' (llmcli_probe) defines {name}, which is not a hook" in message
    assert hint in message
    assert "\n" not in message
    with pytest.raises(PluginError):  # every later use fails the same way, none half-loads
        llmcli.get_models()


@pytest.mark.parametrize("hook", [lambda: None, lambda a, b: None, 42])
def test_a_hook_with_the_wrong_shape_fails_at_load_time(hook: object) -> None:
    plugin_module(register_models=hook)
    with pytest.raises(PluginError, match=r"register_models.*register"):
        plugins.load_plugins()


@pytest.mark.parametrize("args", [["--help"], ["models"], ["-m", "anything", "hi"]])
def test_the_cli_reports_a_broken_plugin_in_one_line(args: list[str]) -> None:
    plugin_module(register_model=register_one)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "defines register_model, which is not a hook" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_every_installed_plugin_passes_the_check(load_plugins) -> None:
    names = sorted({ep.dist.name for ep in md.entry_points(group=plugins.ENTRY_POINT_GROUP)
                    if ep.dist is not None})
    assert names
    load_plugins(*names)
    assert sorted(p.name for p in plugins.load_plugins()) == names


def test_plugins_cli_reports_commands_from_the_checked_hook() -> None:
    def register_commands(cli: object) -> None:
        pass

    plugin_module(register_commands=register_commands)
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    assert '"commands": true' in result.stdout
