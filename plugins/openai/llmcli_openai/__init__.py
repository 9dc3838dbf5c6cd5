"""llmcli plugin: OpenAI models and OpenAI-compatible servers.

* OpenAI chat and reasoning models (``gpt-4o``, ``gpt-5``, ...; any other as ``openai/<id>``):
  prefill emulated through the system/developer message.
* Servers listed in ``openai-servers.json`` (``llmcli openai-servers add/list/remove``), each
  with its native prefill style, and ``<preset>/<model>`` names (``ollama/qwen2.5:7b``) for
  the presets.

Importing this module, registering and listing models never imports ``openai``: the SDK is
imported when a model runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmcli.errors import ConfigError, RefusedModelError
from llmcli.models import Model

from ._models import (
    CHAT_MODELS,
    REASONING_MODELS,
    UNSUPPORTED_MODELS,
    CompatibleModel,
    openai_model,
)
from ._servers import (
    PRESETS,
    Preset,
    ServerEntry,
    default_tools,
    load_servers,
    preset_echo,
    raw_mentions,
)

__all__ = ["register_commands", "register_models", "resolve_model"]


def _server_model(entry: ServerEntry) -> CompatibleModel:
    return CompatibleModel(
        entry.id,
        model_name=entry.model_name,
        base_url=entry.base_url,
        prefill_style=entry.prefill_style,
        echo_stream=entry.echo(stream=True),
        echo_complete=entry.echo(stream=False),
        key_name=entry.key_name,
        key_env=entry.key_env,
        aliases=tuple(entry.aliases),
        schema_field=entry.schema_field,
        images=entry.images,
        tools=entry.tool_mode(),
        native_choices=entry.native_choices(),
    )


def register_models(register: Callable[[Model], None]) -> None:
    for name in (*CHAT_MODELS, *REASONING_MODELS, *UNSUPPORTED_MODELS):
        register(openai_model(name))
    try:
        servers = load_servers()
    except ConfigError:
        # One broken file must not take every other model down; resolve_model reports it
        # when a name from that file is asked for, and 'openai-servers list' always does.
        return
    for entry in servers.servers:
        register(_server_model(entry))


def resolve_model(name: str) -> Model | None:
    """``openai/<id>``, ``<preset>/<model name>``, servers added since loading; and the
    servers-file error when the file is malformed and mentions ``name``."""
    prefix, sep, rest = name.partition("/")
    if sep and rest:
        if prefix == "openai":
            return openai_model(rest, model_id=name)
        preset = PRESETS.get(prefix)
        if preset is not None:
            _refuse_nested(prefix, preset, rest)
            echo = preset_echo(preset)
            return CompatibleModel(
                name, model_name=rest, base_url=preset.base_url,
                prefill_style=preset.prefill_style, echo_stream=echo, echo_complete=echo,
                key_name=preset.key_name, key_env=preset.key_env,
                schema_field=preset.schema_field, tools=default_tools(preset.schema_field),
            )
        return None
    # Servers added after the plugins were loaded (same process) are found here too.
    try:
        servers = load_servers()
    except ConfigError:
        # The error register_models skipped: report it when the name is from that file.
        if raw_mentions(name):
            raise
        return None
    for entry in servers.servers:
        if name == entry.id or name in entry.aliases:
            return _server_model(entry)
    return None


def _refuse_nested(prefix: str, preset: Preset, rest: str) -> None:
    """A preset's model name that starts with another preset (``vllm/ollama/x``,
    ``vllm/vllm/x``): the server is asked for a model named like a preset, which only
    another llmcli would resolve, and send on again; when that server is ``llmcli serve``
    itself (``vllm/`` is localhost:8000, serve's own address) the request comes back, once
    per nesting and per retry. A hosted API's own model names may start with a preset's
    name (``openrouter/deepseek/deepseek-chat``), so only the presets for servers on this
    machine are checked."""
    inner = rest.partition("/")[0]
    if preset.local and inner.lower() in PRESETS:
        raise RefusedModelError(
            f"Model '{prefix}/{rest}' nests the preset {inner!r} inside {prefix!r}: the "
            f"server at {preset.base_url} would be asked for a model named like a preset "
            "(a request that can come back to llmcli); name one preset only")


def register_commands(cli: Any) -> None:
    from ._commands import openai_servers

    cli.add_command(openai_servers)
