"""Plugin loading. A plugin is a distribution with an entry point in group ``llmcli`` whose
target module exposes any of:

* ``register_models(register)`` — call ``register(model)`` for each :class:`llmcli.Model`;
* ``resolve_model(name) -> Model | None`` — models named on demand (``anthropic/<any id>``);
* ``register_commands(cli)`` — add click commands to the ``llmcli`` group.

Loading a plugin must stay cheap: provider SDKs and torch are imported only when a model runs.
``LLMCLI_LOAD_PLUGINS`` (comma-separated distribution or entry-point names; empty for none)
restricts which installed plugins load — the test suite uses it to stay hermetic.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType

from llmcli.models import Model

__all__ = ["ENTRY_POINT_GROUP", "Plugin", "load_plugins", "register_plugin_module", "reset"]

ENTRY_POINT_GROUP = "llmcli"


@dataclass
class Plugin:
    name: str
    module: ModuleType
    version: str | None = None
    models: list[Model] = field(default_factory=list)
    resolver: Callable[[str], Model | None] | None = None


_plugins: list[Plugin] | None = None
_extra_modules: list[tuple[str, ModuleType]] = []


def _allowed() -> set[str] | None:
    value = os.environ.get("LLMCLI_LOAD_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _build(name: str, module: ModuleType, version: str | None) -> Plugin:
    plugin = Plugin(name=name, module=module, version=version)
    register_models = getattr(module, "register_models", None)
    if register_models is not None:
        def register(model: Model) -> None:
            model.plugin = name
            plugin.models.append(model)

        register_models(register)
    plugin.resolver = getattr(module, "resolve_model", None)
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
