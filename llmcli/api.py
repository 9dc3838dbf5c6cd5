"""The library's front door: find models, prompt them, continue logged conversations.

    resolve the model (here) → PromptSpec (llmcli.spec) → prepare_response: options,
    prefill capability, key, log (llmcli.prepare) → model.execute() → normalizer (in
    Response, llmcli.response) → record → log

The CLI calls this module (and reads the log to browse it); nothing in the core imports it.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from typing import Any, TypeVar

from llmcli import config
from llmcli.attachments import Attachment
from llmcli.chain import ChainResponse, ChainSettings
from llmcli.contract import AsyncModel, Model
from llmcli.errors import ConfigError, OptionsError, UnknownModelError
from llmcli.plugins import load_plugins, registered_models, registered_tools
from llmcli.prepare import (
    prepare_async_response,
    prepare_attachments,
    prepare_response,
    resolve_key,
    validate_options,
)
from llmcli.record import ResponseRecord, history
from llmcli.response import AsyncResponse, BaseResponse, Conversation, Response
from llmcli.spec import Logger, PromptSpec
from llmcli.tools import Tool

__all__ = ["get_models", "get_model", "get_async_model", "get_default_model", "prompt",
           "prompt_async", "validate_options", "resolve_key", "key_is_set",
           "load_conversation", "continue_reply", "Logger", "PromptSpec", "check_attachment"]

#: Preferred default when the user has not chosen one: the offline local model.
FALLBACK_DEFAULT = "smollm2"

_R = TypeVar("_R", bound=BaseResponse | ChainResponse)


def get_models() -> list[Model]:
    return registered_models()


def _names(model: Model) -> list[str]:
    return [model.model_id, *model.aliases]


def get_model(name: str | None = None) -> Model:
    """The model with this id or alias (case-insensitive); the default model when None."""
    if name is None:
        return get_default_model()
    # The user's aliases (llmcli aliases set) come first, as in llm: they may shadow any name.
    name = config.load_aliases().get(name, name)
    models = get_models()
    for model in models:
        if name in _names(model):
            return model
    lowered = name.lower()
    for model in models:
        if lowered in (n.lower() for n in _names(model)):
            return model
    for plugin in load_plugins():
        if plugin.resolve_model is not None:
            resolved = plugin.resolve_model(name)
            if resolved is not None:
                resolved.plugin = plugin.name
                return resolved
    all_names = [n for model in models for n in _names(model)]
    suggestions = difflib.get_close_matches(name, all_names, n=3, cutoff=0.5)
    if not suggestions:
        suggestions = [n for n in all_names if lowered in n.lower()][:3]
    raise UnknownModelError(name, suggestions)


def get_async_model(name: str | None = None) -> AsyncModel:
    """The model with this id or alias (the default model when None), as
    :func:`get_model` finds it, for an event loop: ``await model.prompt(...)``,
    ``async for chunk in model.prompt(...)`` (:class:`~llmcli.contract.AsyncModel`)."""
    return AsyncModel(get_model(name))


def get_default_model() -> Model:
    chosen = config.default_model()
    if chosen:
        return get_model(chosen)
    models = get_models()
    for model in models:
        if FALLBACK_DEFAULT in _names(model):
            return model
    for model in models:
        if model.needs_key is None or key_is_set(model):
            return model
    if models:
        return models[0]
    raise UnknownModelError("(default)", [])


def key_is_set(model: Model) -> bool:
    """Whether the model's key is available; False while the keys file is broken (only
    the models that need a stored key are affected by it)."""
    if model.needs_key is None:
        return True
    try:
        return config.get_key(model.needs_key.name, model.needs_key.env_var) is not None
    except ConfigError:
        return False


def check_attachment(model: Model, options: dict[str, Any],
                     attachment: Attachment) -> Attachment:
    """``attachment`` read (or fetched) now and checked against what ``model`` takes with
    ``options``: the one-line error a prompt would give, before anything is sent (chat's
    ``!attach``)."""
    (resolved,) = prepare_attachments(model, validate_options(model, options), (attachment,))
    return resolved


def load_conversation(conversation_id: str | None = None, *,
                      model: str | Model | None = None) -> Conversation:
    """A logged conversation, ready to continue: this id, or the most recent one.

    Its earlier turns come from the log by the same rule as for a conversation held in
    memory (:func:`llmcli.record.history`). It continues with ``model`` when given (an id,
    an alias or a Model), else with the model of its latest turn (a chat may have switched
    models with ``!model``)."""
    cid, row, records = _logged(conversation_id)
    if not isinstance(model, Model):
        model = get_model(model or (records[-1].model if records else row["model"]))
    return Conversation(model, id=cid, name=row["name"], history=history(records))


def _logged(conversation_id: str | None) -> tuple[str, dict[str, Any], list[ResponseRecord]]:
    """A logged conversation's id, row and records: this id, or the most recent one."""
    from llmcli.errors import ConversationError
    from llmcli.log import LogStore

    # Read only: continuing a conversation with logging off (``-c -n``) must work where
    # the log cannot be written (a read-only user directory), and must not create one.
    store = LogStore.for_reading()
    if store is None:
        raise ConversationError(f"No conversation with id {conversation_id!r}"
                                if conversation_id else
                                "No conversation to continue: none has been logged yet")
    try:
        cid = conversation_id or store.last_conversation_id()
        row, records = store.conversation(cid)
    finally:
        store.close()
    return cid, row, records


def continue_reply(conversation: Conversation | str | None = None, /, *,
                   model: str | Model | None = None, **fields: Any) -> Response:
    """Continue the last reply of a conversation where it was cut off (its token limit, an
    interruption): the same prompt, that reply's text as the prefill. ``conversation`` is a
    :class:`Conversation` (its last response this session, else its log), a logged
    conversation's id, or None for the most recent one. The new response's text is the whole
    reply, and the log links it to the reply it extends. ``fields`` are
    :class:`~llmcli.spec.PromptSpec` fields; ``options`` are merged over the reply's own."""
    from llmcli.errors import ConversationError
    from llmcli.record import continuable

    last_here = (conversation.responses[-1] if isinstance(conversation, Conversation)
                 and conversation.responses else None)
    if isinstance(last_here, Response):
        assert isinstance(conversation, Conversation)
        if model is not None:
            conversation.model = model if isinstance(model, Model) else get_model(model)
        return last_here.continue_reply(**fields)
    wanted = conversation.id if isinstance(conversation, Conversation) else conversation
    cid, row, records = _logged(wanted)
    last = next((r for r in reversed(records) if r.status != "pending"), None)
    if last is None:
        raise ConversationError(f"Conversation {cid} has no reply to continue")
    why = continuable(last)
    if why is not None:
        raise ConversationError(f"The last reply of conversation {cid} cannot be continued: "
                                f"{why}")
    chosen = model if isinstance(model, Model) else get_model(model or last.model)
    earlier = [r for r in records if r.id not in (last.id, last.continues_id)]
    target = Conversation(chosen, id=cid, name=row["name"], history=history(earlier))
    if isinstance(conversation, Conversation):  # keep the caller's object: its next turns
        conversation.model, conversation._loaded_history = chosen, target._loaded_history
        target = conversation
    options = {**json.loads(last.options_json or "{}"), **fields.pop("options", {})}
    if last.schema_json and "schema" not in fields:
        fields["schema"] = json.loads(last.schema_json)
    spec = PromptSpec(last.prompt, **{"system": last.system, **fields, "prefill": last.text,
                                      "options": options, "continues": last.id,
                                      "conversation": target})
    return prompt(chosen, spec)


def prompt(model: Model, prompt: str | PromptSpec, /, **fields: Any) -> Response:
    """Prepare the response to ``prompt``: a :class:`~llmcli.spec.PromptSpec`, or a prompt's
    text with the spec's fields as keywords (``options`` a dict, so no option name can clash
    with them). Nothing is sent until the response is iterated or ``text()`` is called; every
    check that needs no network fails here, before any request.

    The model's stored default options (``llmcli models options set``) apply beneath the
    spec's ``options``."""
    return _with_defaults(prepare_response, model, PromptSpec.of(prompt, **fields))


def prompt_async(model: Model, prompt: str | PromptSpec, /, **fields: Any) -> AsyncResponse:
    """:func:`prompt` for an event loop: the same checks, before any request, and the same
    stored default options, in an :class:`~llmcli.response.AsyncResponse` over the model's
    ``execute_async`` (nothing is sent until it is awaited or iterated)."""
    return _with_defaults(prepare_async_response, model, PromptSpec.of(prompt, **fields))


def _with_defaults(prepare: Callable[[Model, PromptSpec], _R], model: Model,
                   spec: PromptSpec) -> _R:
    """``prepare(model, spec)`` with the model's stored default options beneath the
    spec's."""
    defaults = config.load_model_options().get(model.model_id, {})
    try:
        return prepare(model, spec.replace(options={**defaults, **spec.options}))
    except OptionsError as exc:
        if not defaults:
            raise
        raise OptionsError(f"{exc} (stored defaults: llmcli models options show "
                           f"{model.model_id})") from None


def get_tools() -> list[Tool]:
    """The tools ``-T NAME`` may name: the built-ins (``llmcli_version``, ``llmcli_time``)
    and those plugins register (``register_tools``)."""
    return registered_tools()


def get_tool(name: str) -> Tool:
    """A registered tool by name (:class:`~llmcli.errors.ToolDefinitionError` if none)."""
    from llmcli.errors import ToolDefinitionError

    tools = {tool.name: tool for tool in get_tools()}
    if name not in tools:
        close = difflib.get_close_matches(name, tools, n=3)
        hint = f" (did you mean: {', '.join(close)}?)" if close else ""
        raise ToolDefinitionError(f"Unknown tool: {name!r}{hint}. Run 'llmcli tools list' "
                                  "to list them.")
    return tools[name]


def chain(model: Model, spec: PromptSpec, /, **settings: Any) -> ChainResponse:
    """The tool chain for ``spec`` (:class:`~llmcli.chain.ChainResponse`; ``settings``:
    ``chain_limit``, ``prefill_final``, ``before_call``, ``after_call``), with the model's
    stored default options beneath the spec's, as :func:`prompt` does."""
    chain_settings = ChainSettings(**settings)
    return _with_defaults(lambda m, s: ChainResponse(m, s, chain_settings), model, spec)
