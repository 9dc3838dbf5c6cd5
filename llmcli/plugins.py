"""Plugin loading and the registry of models. A plugin is a distribution with an entry point
in group ``llmcli`` whose target module defines any of the hooks in :data:`HOOKS`:

* ``register_models(register)`` — call ``register(model)`` for each :class:`llmcli.Model`;
* ``resolve_model(name) -> Model | None`` — models named on demand (``anthropic/<any id>``);
* ``register_commands(cli)`` — add click commands to the ``llmcli`` group;
* ``register_tools(register)`` — call ``register(tool)`` for each :class:`llmcli.Tool` (or
  plain function) that ``-T NAME`` may offer a model.

Hooks are checked when the plugin loads, so a mistake fails loudly instead of leaving a
hook silently unused: every public callable of the module named like a hook (``register_…``,
``resolve_…``) or close to one must be one of these (functions imported from llmcli or the
standard library are not looked at), and each hook must accept its one argument. Anything
else fails with :class:`llmcli.errors.PluginError`; a helper that only looks like a hook
takes a leading underscore.

Loading a plugin must stay cheap: provider SDKs and torch are imported only when a model runs.
``LLMCLI_LOAD_PLUGINS`` (comma-separated distribution or entry-point names; empty for none)
restricts which installed plugins load — the test suite uses it to stay hermetic.

This module imports no model code (plugins do): the models can ask it for the others.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType
from typing import TYPE_CHECKING, Any

from llmcli.errors import PluginError

if TYPE_CHECKING:
    from llmcli.contract import Model
    from llmcli.tools import Tool

__all__ = ["ENTRY_POINT_GROUP", "HOOKS", "HookSpec", "Plugin", "load_plugins",
           "register_plugin_module", "registered_models", "registered_tools", "reset"]

ENTRY_POINT_GROUP = "llmcli"


@dataclass(frozen=True)
class HookSpec:
    """One hook a plugin module may define: its name, its one argument and its purpose."""

    name: str
    argument: str
    purpose: str

    @property
    def signature(self) -> str:
        return f"{self.name}({self.argument})"


#: Every hook, by name. docs/plugins.md documents each (a test checks it).
HOOKS: dict[str, HookSpec] = {
    spec.name: spec
    for spec in (
        HookSpec("register_models", "register",
                 "call register(model) for each llmcli.Model instance"),
        HookSpec("resolve_model", "name",
                 "return a Model for a name the plugin recognises (anthropic/<any id>), "
                 "else None"),
        HookSpec("register_commands", "cli", "add click commands to the llmcli group"),
        HookSpec("register_tools", "register",
                 "call register(tool) for each llmcli.Tool or plain function that -T may "
                 "offer a model"),
    )
}

_HOOK_PREFIXES = ("register_", "resolve_")


@dataclass
class Plugin:
    name: str
    module: ModuleType
    version: str | None = None
    models: list[Model] = field(default_factory=list)
    #: The module's hooks, checked (None where it defines none).
    resolve_model: Callable[[str], Model | None] | None = None
    register_commands: Callable[[Any], None] | None = None
    tools: list[Tool] = field(default_factory=list)


def _allowed() -> set[str] | None:
    value = os.environ.get("LLMCLI_LOAD_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _hook_list() -> str:
    return ", ".join(spec.signature for spec in HOOKS.values())


def _check_hook(plugin: str, module: ModuleType, spec: HookSpec, value: object) -> None:
    import inspect

    where = f"Plugin {plugin!r} ({module.__name__})"
    if not callable(value):
        raise PluginError(f"{where}: {spec.name} must be a function {spec.signature}, "
                          f"not {type(value).__name__}")
    try:
        inspect.signature(value).bind(None)
    except TypeError:
        raise PluginError(f"{where}: the hook {spec.name} must take one argument: "
                          f"def {spec.signature}") from None
    except ValueError:
        pass  # no signature to inspect (a builtin): trust it


def _imported_from_core_or_stdlib(value: object) -> bool:
    # `from llmcli.models import resolve_key` is not a misspelled hook.
    top = (getattr(value, "__module__", None) or "").partition(".")[0]
    return top == "llmcli" or top in sys.stdlib_module_names


def _hooks(plugin: str, module: ModuleType) -> dict[str, Callable[..., Any]]:
    """The module's hooks, after checking that it defines no unknown or misspelled one."""
    hooks: dict[str, Callable[..., Any]] = {}
    for attr, value in vars(module).items():
        if attr in HOOKS:
            _check_hook(plugin, module, HOOKS[attr], value)
            hooks[attr] = value
            continue
        if (attr.startswith("_") or not callable(value) or isinstance(value, type)
                or _imported_from_core_or_stdlib(value)):
            continue
        close = difflib.get_close_matches(attr, HOOKS, n=1, cutoff=0.8)
        if close or attr.startswith(_HOOK_PREFIXES):
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise PluginError(
                f"Plugin {plugin!r} ({module.__name__}) defines {attr}, which is not a "
                f"hook{hint}. Hooks: {_hook_list()}; a helper's name starts with '_'."
            )
    return hooks


def _build(name: str, module: ModuleType, version: str | None) -> Plugin:
    hooks = _hooks(name, module)
    plugin = Plugin(name=name, module=module, version=version,
                    resolve_model=hooks.get("resolve_model"),
                    register_commands=hooks.get("register_commands"))
    register_models = hooks.get("register_models")
    if register_models is not None:
        def register(model: Model) -> None:
            model.plugin = name
            plugin.models.append(model)

        register_models(register)
    register_tools = hooks.get("register_tools")
    if register_tools is not None:
        from llmcli.tools import as_tools

        def register_tool(tool: Any) -> None:
            plugin.tools.extend(as_tools([tool]))

        register_tools(register_tool)
    return plugin


def load_plugins() -> list[Plugin]:
    """Load (once) every allowed installed plugin plus any registered in-process."""
    global _plugins
    if _plugins is not None:
        return _plugins
    allowed = _allowed()
    plugins: list[Plugin] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else ep.name
        if allowed is not None and dist not in allowed and ep.name not in allowed:
            continue
        version = ep.dist.version if ep.dist is not None else None
        plugins.append(_build(dist, ep.load(), version))
    for name, module in _extra_modules:
        plugins.append(_build(name, module, None))
    _plugins = plugins
    return plugins


def registered_tools() -> list[Tool]:
    """The tools ``-T`` may name: llmcli's built-ins, then each plugin's, by name (a later
    one with a name already taken is left out)."""
    from llmcli.tools import builtin_tools

    tools: dict[str, Tool] = {}
    for tool in [*builtin_tools(), *(t for p in load_plugins() for t in p.tools)]:
        tools.setdefault(tool.name, tool)
    return list(tools.values())


def registered_models() -> list[Model]:
    """Every model the loaded plugins registered, in loading order."""
    return [model for plugin in load_plugins() for model in plugin.models]


_plugins: list[Plugin] | None = None
_extra_modules: list[tuple[str, ModuleType]] = []


def register_plugin_module(name: str, module: ModuleType) -> None:
    """Register a plugin module in-process (tests, embedding applications)."""
    _extra_modules.append((name, module))
    reset()


def reset(clear_extra: bool = False) -> None:
    """Forget loaded plugins so the next call loads them again."""
    global _plugins
    _plugins = None
    if clear_extra:
        _extra_modules.clear()
