"""The Anthropic Messages API on the wire: which ids take a prefill, request building, reading
replies and stream events, error bodies. Pure: no I/O, no SDK import (SDK objects are read by
attribute), so it is cheap to import and testable without a network."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from llmcli import schema as schemas
from llmcli import tooltext
from llmcli.capabilities import PrefillSupport, ReasoningPrefill, SchemaSupport
from llmcli.models import (
    Attachment,
    Chunk,
    Message,
    Reasoning,
    Request,
    ToolCall,
    Usage,
    emulation_instruction,
)
from llmcli.remote import HTTPFault, WireRequest, error_body

if TYPE_CHECKING:
    from llmcli_anthropic._models import ClaudeOptions

__all__ = ["EventReader", "build_request", "error_message_from_body", "native_prefill",
           "read_message", "status_fault"]

# claude-<family>-<major>[-<minor>][-<yyyymmdd>] (Claude 4 and later) or the older
# claude-<major>[-<minor>]-<family>[-<date>] (Claude 3.x). A minor version is one or two
# digits; an eight-digit group is a snapshot date, not a version.
_NEW_STYLE = re.compile(r"^claude-[a-z]+-(\d+)(?:-(\d{1,2}))?(?:-\d{8})?(?:-.*)?$")
_OLD_STYLE = re.compile(r"^claude-(\d+)(?:-(\d{1,2}))?-[a-z]+")
#: The first version that rejects assistant prefill (400 "does not support assistant message
#: prefill").
_FIRST_WITHOUT_PREFILL = (4, 6)


#: The first version with structured outputs (``output_config.format``): Haiku, Sonnet and
#: Opus 4.5 and later, per Anthropic's structured-outputs documentation.
_FIRST_WITH_STRUCTURED_OUTPUTS = (4, 5)


def _version(model_id: str) -> tuple[int, int] | None:
    match = _NEW_STYLE.match(model_id) or _OLD_STYLE.match(model_id)
    if match is None:
        return None
    return (int(match.group(1)), int(match.group(2) or 0))


def structured_outputs(model_id: str) -> bool:
    """Whether the model takes a JSON Schema in ``output_config.format``. Unrecognised ids
    are not assumed to: an unknown field is a 400, while the validated mode works anywhere."""
    version = _version(model_id)
    return version is not None and version >= _FIRST_WITH_STRUCTURED_OUTPUTS


def native_prefill(model_id: str) -> bool:
    """Whether the API accepts a trailing assistant message (prefill) for this model.

    Unrecognised ids are treated as new models: emulation never produces a 400, while
    a native prefill sent to a model that rejects it always does.
    """
    match = _NEW_STYLE.match(model_id) or _OLD_STYLE.match(model_id)
    if match is None:
        return False
    version = (int(match.group(1)), int(match.group(2) or 0))
    return version < _FIRST_WITHOUT_PREFILL


def _join_system(system: str | None, extra: str) -> str:
    return f"{system}\n\n{extra}" if system else extra


def _message(message: Message, tools: bool = True) -> dict[str, Any]:
    """A turn on the wire: plain text, or (with attachments) content blocks, the images and
    documents first as Anthropic's vision guide recommends, then the text; a turn with tool
    calls or results as :func:`_tool_message` writes it where the request declares ``tools``.

    Without them the API refuses ``tool_use`` and ``tool_result`` blocks (400 "Requests which
    include `tool_use` or `tool_result` blocks must define tools."), so a conversation that
    used tools and goes on without (``-c`` with no ``-T``) has its calls and results as text
    (:func:`llmcli.tooltext.text_turns`)."""
    if message.tool_calls or message.tool_results:
        if tools:
            return _tool_message(message)
        [turn] = tooltext.text_turns(message)
        message = dataclasses.replace(message, content=turn["content"], tool_calls=(),
                                      tool_results=())
    if not message.attachments:
        return {"role": message.role, "content": message.content}
    blocks = [attachment_block(a) for a in message.attachments]
    return {"role": message.role, "content": [*blocks, {"type": "text", "text": message.content}]}


def attachment_block(attachment: Attachment) -> dict[str, Any]:
    """An ``image`` block (png, jpeg, gif, webp) or a ``document`` block (PDF) with a base64
    source (the SDK's ``ImageBlockParam`` / ``DocumentBlockParam``)."""
    source = {"type": "base64", "media_type": attachment.type, "data": attachment.base64()}
    return {"type": "image" if attachment.is_image else "document", "source": source}


def thinking_sent(options: ClaudeOptions, prefill: str) -> bool:
    """Whether the request turns thinking on: ``-o thinking`` (or a budget), unless a
    prefill comes with ``-o reasoning_prefill skip`` (then the prefill is native where the
    model takes one: the API forbids a prefill with thinking on)."""
    skipped = bool(prefill) and options.reasoning_prefill is ReasoningPrefill.SKIP
    return options.thinking_on and not skipped


def build_request(request: Request) -> WireRequest:
    """Keyword arguments for ``client.messages.create``, and the prefill as sent."""
    options: ClaudeOptions = request.options  # type: ignore[assignment]
    messages: list[dict[str, Any]] = [_message(m, bool(request.tools))
                                      for m in request.messages()]
    system = request.system
    sent_prefill: str | None = None
    prefill = request.prefill
    if prefill and request.prefill_support is PrefillSupport.EATS_PREFIX:
        # The API 400s on a final assistant message that ends in whitespace, and on an empty
        # one; send it trimmed (or not at all) and let the core reconcile the difference.
        trimmed = prefill.rstrip()
        if trimmed:
            messages.append({"role": "assistant", "content": trimmed})
        if trimmed != prefill:
            sent_prefill = trimmed
    elif prefill and request.prefill_support is PrefillSupport.EMULATED:
        system = _join_system(system, emulation_instruction(prefill))
    params: dict[str, Any] = {
        "model": request.model_id,
        "max_tokens": options.max_tokens,
        "messages": messages,
    }
    if system:
        params["system"] = system
    params.update(options.given("stop_sequences"))
    if request.schema is not None and request.schema_support is SchemaSupport.NATIVE:
        # Anthropic's JSON outputs: every object must be closed (additionalProperties false).
        params["output_config"] = {"format": {"type": "json_schema",
                                              "schema": schemas.closed(request.schema)}}
    if thinking_sent(options, prefill):
        if native_prefill(request.model_id):
            params["thinking"] = {"type": "enabled", "budget_tokens": options.budget}
        else:
            # Claude 4.6 and later size their thinking themselves; a fixed budget is
            # deprecated there (Opus 4.7 has adaptive thinking only).
            params["thinking"] = {"type": "adaptive"}
    if request.tools:
        params.update(_tool_params(request))
    return WireRequest(params, sent_prefill)


# -- tools (tool_use / tool_result) -----------------------------------------------------------


def _tool_message(message: Message) -> dict[str, Any]:
    """One turn; a turn with tool calls or results as content blocks (``tool_use`` on the
    assistant's, ``tool_result`` first on the user's, as the API requires, then its images
    and documents and its text)."""
    if not message.tool_calls and not message.tool_results:
        return {"role": message.role, "content": message.content}
    blocks: list[dict[str, Any]] = []
    for result in message.tool_results:
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": result.call_id,
                                 "content": result.output}
        if result.error:
            block["is_error"] = True
        blocks.append(block)
    blocks += [attachment_block(a) for a in message.attachments]
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    blocks += [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
               for call in message.tool_calls]
    return {"role": message.role, "content": blocks}


def _tool_params(request: Request) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` (auto, any, none or one tool)."""
    choice = request.tool_choice
    wire_choice: dict[str, Any] = (
        {"type": "auto"} if choice == "auto" else {"type": "any"} if choice == "required"
        else {"type": "none"} if choice == "none" else {"type": "tool", "name": choice})
    return {"tools": [{"name": tool.name, "description": tool.description,
                       "input_schema": dict(tool.parameters)} for tool in request.tools],
            "tool_choice": wire_choice}


class _ToolUse:
    """A streamed ``tool_use`` block: its id and name from ``content_block_start``, its
    input as the ``input_json_delta`` pieces, parsed at ``content_block_stop``."""

    def __init__(self, block: Any) -> None:
        self.id, self.name = block.id, block.name
        self.parts: list[str] = []

    def call(self) -> ToolCall:
        text = "".join(self.parts)
        try:
            arguments = json.loads(text) if text.strip() else {}
        except ValueError:
            arguments = text  # not an object: the chain reports malformed arguments
        return ToolCall(self.id, self.name, arguments)


# -- replies ----------------------------------------------------------------------------------


def read_message(message: Any) -> Iterator[Chunk]:
    # With thinking on, the content also holds thinking blocks (``thinking``, with its
    # ``signature``; ``redacted_thinking`` is encrypted and has no text): the reasoning,
    # never the reply.
    for block in message.content:
        if block.type == "thinking" and getattr(block, "thinking", ""):
            yield Reasoning(block.thinking)
    yield "".join(block.text for block in message.content if block.type == "text")
    for block in message.content:
        if block.type == "tool_use":
            yield ToolCall(block.id, block.name, dict(block.input))
    usage = Usage(output_tokens=message.usage.output_tokens, stop_reason=message.stop_reason)
    _take_input(usage, message.usage)
    yield usage


def _take_input(usage: Usage, raw: Any, earlier: Any = None) -> None:
    """Anthropic counts a prompt in three parts: ``input_tokens`` (not cached),
    ``cache_read_input_tokens`` and ``cache_creation_input_tokens``. llmcli's ``input_tokens``
    is the whole prompt (as OpenAI's ``prompt_tokens`` and the local runtime count it), and
    ``details["cached_tokens"]`` the part read from a cache."""
    total = raw.input_tokens
    if total is None:
        return

    def count(name: str) -> int:
        value = getattr(raw, name, None)
        if value is None and earlier is not None:
            value = getattr(earlier, name, None)
        return value or 0

    read = count("cache_read_input_tokens")
    created = count("cache_creation_input_tokens")
    usage.input_tokens = total + read + created
    if read:
        usage.details["cached_tokens"] = read
    else:
        usage.details.pop("cached_tokens", None)


class EventReader:
    """A stream's events, one at a time (a :class:`llmcli.remote.StreamReader`): text deltas
    (thinking deltas as :class:`Reasoning`; a signature delta has nothing to show), each tool
    use once its block stops, then the usage once ``message_stop`` has arrived (only
    then)."""

    def __init__(self) -> None:
        self.usage = Usage()
        self.start: Any = None
        self.finished = False
        self.tool_uses: dict[int, _ToolUse] = {}

    def feed(self, event: Any) -> Iterator[Chunk]:
        usage, tool_uses = self.usage, self.tool_uses
        if event.type == "message_start":
            self.start = event.message.usage
            _take_input(usage, self.start)
        elif event.type == "content_block_start":
            if event.content_block.type == "tool_use":
                tool_uses[event.index] = _ToolUse(event.content_block)
        elif event.type == "content_block_stop":
            if event.index in tool_uses:
                yield tool_uses.pop(event.index).call()
        elif event.type == "content_block_delta":
            if event.delta.type == "text_delta":
                yield event.delta.text
            elif event.delta.type == "thinking_delta" and event.delta.thinking:
                yield Reasoning(event.delta.thinking)
            elif event.delta.type == "input_json_delta" and event.index in tool_uses:
                tool_uses[event.index].parts.append(event.delta.partial_json)
        elif event.type == "message_delta":
            usage.stop_reason = event.delta.stop_reason
            usage.output_tokens = event.usage.output_tokens
            if getattr(event.usage, "input_tokens", None) is not None:
                # Cumulative counts, where a server sends them here (message_start's may be
                # provisional); a cache field it leaves out keeps message_start's value.
                _take_input(usage, event.usage, self.start)
        elif event.type == "message_stop":
            self.finished = True

    def end(self) -> Iterator[Chunk]:
        if self.finished:
            yield self.usage


# -- errors -----------------------------------------------------------------------------------

#: Error types that arrive inside a 200 stream (an SSE ``error`` event) mapped to the status
#: the same error has as an HTTP response.
_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
    # Bedrock's event-stream exceptions (the SDK turns them into error events).
    "validationException": 400,
    "accessDeniedException": 403,
    "modelTimeoutException": 408,
    "throttlingException": 429,
    "modelStreamErrorException": 500,
    "internalServerException": 500,
    "serviceUnavailableException": 503,
}


def error_message_from_body(body: Any) -> tuple[str | None, str | None]:
    """(error type, message) from an Anthropic error body, either part None when absent."""
    body = error_body(body)
    if body is None or isinstance(body, str):
        return None, body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = error.get("message")
            return error.get("type"), str(message) if message is not None else None
        if isinstance(body.get("message"), str):
            return None, body["message"]
    return None, None


def status_fault(status: int | None, body: Any, fallback: str) -> HTTPFault:
    """An HTTP error (or an ``error`` event inside a 200 stream) as the kit reads it."""
    error_type, message = error_message_from_body(body)
    if status == 200 and error_type in _TYPE_STATUS:
        status = _TYPE_STATUS[error_type]  # an error event inside a stream
    return HTTPFault(status, message or fallback, error_type or "")
