"""Request preparation: every check that needs no network, before any request.

:func:`prepare_response` takes a model and a :class:`~llmcli.spec.PromptSpec` and makes the
:class:`~llmcli.response.Response`: options validated (:func:`validate_options`), prefill and
schema capability checked (naming alternatives when a prefill is refused), the key resolved
(:func:`resolve_key`) and, when logging, the log opened. It asks the plugin registry for other
models only to name alternatives in an error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from llmcli import config
from llmcli import schema as schemas
from llmcli.attachments import Attachment, describe_types
from llmcli.capabilities import PrefillSupport, SchemaSupport, ToolSupport
from llmcli.errors import (
    AttachmentError,
    AttachmentUnsupportedError,
    KeyNeededError,
    LLMCLIError,
    OptionsError,
    PrefillUnsupportedError,
    ToolDefinitionError,
    ToolsUnsupportedError,
)
from llmcli.record import Message
from llmcli.request import Options, Request
from llmcli.response import AsyncResponse, BaseResponse, Conversation, Response
from llmcli.spec import Logger, PromptSpec

if TYPE_CHECKING:
    from llmcli.contract import Model

__all__ = ["NATIVE_PREFILL", "prepare_async_response", "prepare_attachments", "prepare_response",
           "resend_attachments", "resolve_key", "validate_options"]

_R = TypeVar("_R", bound=BaseResponse)


def validate_options(model: Model, options: Mapping[str, Any]) -> Options:
    try:
        return model.Options(**options)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        # A model's own validator says "Value error, temperature is not accepted…": keep
        # its words, not pydantic's prefix.
        reason = str(error["msg"])
        for prefix in ("Value error, ", "Assertion failed, "):
            reason = reason.removeprefix(prefix)
        if error["type"] == "extra_forbidden":
            known = ", ".join(model.Options.model_fields) or "none"
            message = f"Unknown option {where!r} for {model.model_id} (known: {known})"
        elif where:
            message = f"Option {where!r} for {model.model_id}: {reason}"
        else:  # a check across options: its message names them
            message = f"Options for {model.model_id}: {reason}"
        raise OptionsError(message) from None


def _check_reasoning_prefill(model: Model, options: Options) -> None:
    policy = getattr(options, "reasoning_prefill", None)
    if policy is None:
        return
    taken = model.reasoning_prefills()
    if policy not in taken:
        takes = ", ".join(str(p) for p in taken) or "none (it is not a reasoning model)"
        raise OptionsError(f"Option 'reasoning_prefill' for {model.model_id}: {policy} is "
                           f"not supported (it takes: {takes})")


def resolve_key(model: Model, explicit: str | None = None) -> str | None:
    spec = model.needs_key
    if spec is None:
        return None
    key = config.get_key(spec.name, spec.env_var, explicit)
    if not key:
        raise KeyNeededError(model.model_id, spec.name, spec.env_var)
    config.remember_secret(key)
    return key


def _usable_now(model: Model) -> bool:
    if model.needs_key is None:
        return True
    try:
        return config.get_key(model.needs_key.name, model.needs_key.env_var) is not None
    except LLMCLIError:  # a broken keys file: not usable until it is fixed
        return False


NATIVE_PREFILL = (PrefillSupport.EATS_PREFIX, PrefillSupport.ECHOES_PREFIX)


def _others_that(can: Callable[[Model], bool], exclude: Model) -> list[str]:
    """Up to five other registered models that ``can`` (with their default options), for
    an error that refuses ``exclude``: those usable now (local, or with a key set) first,
    else in registration order."""
    from llmcli.plugins import registered_models

    able = [m for m in registered_models() if m is not exclude and can(m)]
    able.sort(key=lambda m: not _usable_now(m))  # stable: registration order otherwise
    return [m.model_id for m in able[:5]]


def _alternatives(exclude: Model) -> list[str]:
    """Models that take a prefill natively (eats or echoes; emulation is what a strict
    refusal avoids), for the error that refuses one."""
    return _others_that(lambda m: m.get_prefill_support(m.Options()) in NATIVE_PREFILL,
                        exclude)


def _takers(media_type: str | None, exclude: Model) -> list[str]:
    """Models that take attachments (of ``media_type``; any, for None), for the error that
    refuses one."""
    def takes(m: Model) -> bool:
        types = m.get_attachment_types(m.Options())
        return bool(types) if media_type is None else media_type in types

    return _others_that(takes, exclude)


def _refuse(model: Model, media_type: str | None, takes: frozenset[str]) -> LLMCLIError:
    others = _takers(media_type, model)
    which = "attachments" if media_type is None else f"{media_type} attachments"
    if takes:
        message = (f"{model.model_id} does not take {which} (it takes "
                   f"{describe_types(takes)})")
    else:
        message = f"{model.model_id} cannot take {which} (it cannot see images or read files)"
    if others:
        message += "; models that can: " + ", ".join(others)
    return AttachmentUnsupportedError(message)


def prepare_attachments(model: Model, options: Options,
                        attachments: tuple[Attachment, ...]) -> tuple[Attachment, ...]:
    """The prompt's attachments read (or fetched) and checked against what the model takes:
    a model that takes none is refused before any file is read."""
    if not attachments:
        return ()
    takes = model.get_attachment_types(options)
    if not takes:
        raise _refuse(model, None, takes)
    resolved = tuple(a.resolve() for a in attachments)
    for attachment in resolved:
        if attachment.type not in takes:
            raise _refuse(model, attachment.type, takes)
    return resolved


def resend_attachments(model: Model, options: Options,
                       history: list[Message]) -> list[Message]:
    """A continued conversation's turns with their attachments' content (``-c``): from the
    log where it was stored, else read again from its path or URL, which must still hold
    the same bytes (the same sha256). One clear error otherwise."""
    takes = model.get_attachment_types(options)
    turns: list[Message] = []
    for message in history:
        if not message.attachments:
            turns.append(message)
            continue
        again: list[Attachment] = []
        for attachment in message.attachments:
            if attachment.type not in takes:
                raise _refuse(model, attachment.type, takes)
            again.append(_read_again(attachment))
        # The turn as it was, its attachments read again: its tool calls and results too.
        turns.append(replace(message, attachments=tuple(again)))
    return turns


def _read_again(attachment: Attachment) -> Attachment:
    if attachment.content is not None:
        return attachment.resolve()
    unstored = (f"The conversation's attachment {attachment.label} was not stored in the log "
                "(use --store-attachments to keep attachments' content)")
    if attachment.path is None and attachment.url is None:
        raise AttachmentError(f"{unstored} and names no file or URL to read it from")
    source = Attachment(path=attachment.path, url=attachment.url, type=attachment.type)
    try:
        fresh = source.resolve()
    except AttachmentError as exc:
        raise AttachmentError(f"{unstored}, and cannot be read again: {exc}") from None
    if attachment.sha256 and fresh.sha256 != attachment.sha256:
        raise AttachmentError(f"{unstored}, and {attachment.label} has changed since it "
                              "was sent (its sha256 differs)")
    return fresh


def _tool_alternatives(exclude: Model) -> list[str]:
    """Models that call tools, for the error that refuses tools."""
    return _others_that(lambda m: m.get_tool_support(m.Options()) is not ToolSupport.NONE,
                        exclude)


def _tool_support(model: Model, spec: PromptSpec, options: Options) -> ToolSupport | None:
    """How this request's tools are called (None without tools); refused before any
    request where the model cannot call them."""
    if not spec.tools and not spec.tool_results:
        return None
    support = model.get_tool_support(options)
    if support is ToolSupport.NONE:
        raise ToolsUnsupportedError(model.model_id, _tool_alternatives(model))
    if spec.grammar is not None or spec.schema is not None:
        raise schemas.SchemaUnsupportedError(
            "Give tools or a schema/grammar, not both: a reply that may call a tool is "
            "constrained by the tools")
    names = [tool.name for tool in spec.tools]
    if spec.tool_choice not in ("auto", "required", "none", *names):
        raise ToolDefinitionError(
            f"tool_choice {spec.tool_choice!r}: give auto, required, none or one of the "
            f"tools ({', '.join(names) or 'none given'})")
    return support


def _open_log() -> Logger:
    # Opened now, not when the response ends: a prompt that cannot be logged fails before
    # its request is sent. The log package imports sqlite-utils, so only when logging.
    from llmcli.log import LogStore

    return LogStore().log_once


def prepare_response(model: Model, spec: PromptSpec | str, /, **fields: Any) -> Response:
    """Prepare the response to ``spec`` (or to a prompt's text and ``fields``, the
    :class:`~llmcli.spec.PromptSpec` fields); nothing is sent until it is iterated or
    ``text()`` is called.

    Every check that can fail without the network fails here, before any request: options,
    prefill capability, schema (valid, and honoured by this model with this prefill), key,
    and (when logging) that the log can be opened."""
    return _prepare(Response, model, PromptSpec.of(spec, **fields))


def prepare_async_response(model: Model, spec: PromptSpec | str, /,
                           **fields: Any) -> AsyncResponse:
    """:func:`prepare_response` for an event loop: the same checks, before any request, and
    an :class:`~llmcli.response.AsyncResponse` over the model's ``execute_async``."""
    return _prepare(AsyncResponse, model, PromptSpec.of(spec, **fields))


def _prepare(kind: type[_R], model: Model, spec: PromptSpec) -> _R:
    if not spec.prompt.strip() and not spec.tool_results:
        # The same rule as the command line's: nothing to send is an error, not a request.
        raise LLMCLIError("Empty prompt: the prompt has no text")
    validated = validate_options(model, spec.options)
    _check_reasoning_prefill(model, validated)
    stream = spec.stream and model.can_stream
    support = model.get_prefill_support(validated, stream=stream)
    prefill = spec.prefill or ""
    if prefill and support is PrefillSupport.UNSUPPORTED:
        raise PrefillUnsupportedError(model.model_id, model.prefill_note(), _alternatives(model))
    schema, grammar = spec.schema, spec.grammar
    parsed_schema: dict[str, Any] | None = None
    schema_support: SchemaSupport | None = None
    if schema is not None:
        parsed_schema = schemas.parse_schema(schema)
        schema_support = model.get_schema_support(validated)
        if schema_support is SchemaSupport.UNSUPPORTED:
            raise schemas.SchemaUnsupportedError(
                f"{model.model_id} cannot honour a schema (structured output); run "
                "'llmcli models' to see which models can")
        refusal = model.schema_refusal(validated, prefill)
        if refusal:
            raise schemas.SchemaUnsupportedError(f"{model.model_id}: {refusal}")
    if grammar is not None:
        if schema is not None:
            raise schemas.InvalidSchemaError("Give a schema or a grammar, not both")
        if not grammar.strip():
            raise schemas.InvalidSchemaError("Empty grammar")
        if not model.grammar_support:
            raise schemas.SchemaUnsupportedError(
                f"{model.model_id} cannot enforce a grammar; --grammar works with local "
                "models and llama.cpp servers")
    attachments = prepare_attachments(model, validated, spec.attachments)
    tool_support = _tool_support(model, spec, validated)
    resolved_key = resolve_key(model, spec.key)
    conversation = spec.conversation
    if conversation is not None and conversation.model is not model:
        # A conversation continued with another model keeps its history.
        conversation.model = model
    history = (conversation.history(excluding=spec.continues)
               if conversation is not None else [])
    if any(m.attachments for m in history):
        history = resend_attachments(model, validated, history)
    request = Request(
        model_id=model.model_id,
        prompt=spec.prompt,
        system=spec.system,
        history=history,
        attachments=attachments,
        prefill=prefill,
        prefill_support=support,
        options=validated,
        stream=stream,
        key=resolved_key,
        schema=parsed_schema,
        schema_support=schema_support,
        grammar=grammar,
        instruction=(schemas.instruction(parsed_schema)
                     if schema_support is SchemaSupport.VALIDATED and parsed_schema else ""),
        tools=spec.tools,
        tool_support=tool_support,
        tool_results=spec.tool_results,
        tool_choice=spec.tool_choice,
    )
    log = spec.log
    logger: Logger | None
    if callable(log):
        logger = log
    elif log and config.logging_enabled():
        logger = _open_log()
    else:
        logger = None
    if conversation is None:
        # Every response belongs to a conversation, as on the command line: a plain
        # model.prompt() starts a new one.
        conversation = Conversation(model)
    response = kind(model, request, conversation=conversation, logger=logger, spec=spec)
    response.continues = spec.continues
    response.schema_retries = max(0, spec.schema_retries)
    response.store_attachments = spec.store_attachments
    conversation.responses.append(response)
    return response
