"""Mistral chat completions on the wire: request building, reading replies and stream events,
stop reasons, error bodies, and the retry window the SDK is given. Pure: no I/O, no SDK
import (SDK objects are read by attribute)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmcli import schema as schemas
from llmcli.capabilities import SchemaSupport, StopReason
from llmcli.models import Chunk, Message, Request, ToolCall, Usage
from llmcli.remote import HTTPFault, WireRequest, error_body, result_turns

if TYPE_CHECKING:
    from llmcli_mistral._models import MistralOptions

__all__ = ["RETRIED_STATUSES", "EventReader", "RetryPlan", "build_request", "call_id",
           "error_message_from_body", "read_completion", "retry_plan",
           "status_fault", "tool_fields"]

#: The statuses the mistralai SDK retries for chat (429, 500, 502, 503, 504).
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})


def _message(message: Message) -> dict[str, Any]:
    """A turn on the wire: plain text, or (with images) a ``text`` chunk then an
    ``image_url`` chunk per image, whose ``image_url`` is a data URL (the SDK's
    ``ImageURLChunk``, as Mistral's vision guide writes it)."""
    if not message.attachments:
        return {"role": message.role, "content": message.content}
    chunks = [{"type": "text", "text": message.content},
              *({"type": "image_url", "image_url": a.data_url()} for a in message.attachments)]
    return {"role": message.role, "content": chunks}


def build_request(request: Request) -> WireRequest:
    """Keyword arguments for ``client.chat.complete`` / ``client.chat.stream``."""
    options: MistralOptions = request.options  # type: ignore[assignment]
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    for message in request.messages():
        messages += _turn(message)
    if request.prefill:
        # Without prefix: true a trailing assistant message is a 400 (code 3230). The reply
        # then starts with the prefill again; the core strips that echo.
        messages.append({"role": "assistant", "content": request.prefill, "prefix": True})
    params: dict[str, Any] = {"model": request.model_id, "messages": messages,
                              **options.given("max_tokens", "temperature", "top_p",
                                              "random_seed", "stop")}
    if request.schema is not None and request.schema_support is SchemaSupport.NATIVE:
        # The SDK's typed dict names the schema ``schema_definition``; the wire says "schema".
        schema = schemas.closed(request.schema)
        params["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "reply", "schema_definition": schema, "strict": schemas.is_strict(schema)}}
    if request.tools:
        params.update(tool_fields(request))
    return WireRequest(params)


# -- tools (function calling) -----------------------------------------------------------------

#: Mistral refuses a tool call id that is not 9 letters or digits (400, code 3280).
_CALL_ID = re.compile(r"[A-Za-z0-9]{9}")


def call_id(value: str) -> str:
    """A call id Mistral accepts: its own ids as they are, any other (a call made by another
    provider earlier in the conversation) as 9 hex digits of its sha256, the same for the
    call and its result."""
    if _CALL_ID.fullmatch(value):
        return value
    return hashlib.sha256(value.encode()).hexdigest()[:9]


def _turn(message: Message) -> list[dict[str, Any]]:
    """One turn: the assistant's calls in ``tool_calls`` (arguments as JSON text), each
    result a ``role: tool`` message (``tool_call_id``, ``name``) before the user's text."""
    if message.tool_calls:
        turn: dict[str, Any] = {"role": "assistant", "tool_calls": [
            call.as_function(call_id(call.id)) for call in message.tool_calls]}
        if message.content:
            turn["content"] = message.content
        return [turn]
    if message.tool_results:
        return result_turns(message, lambda result: {
            "role": "tool", "tool_call_id": call_id(result.call_id), "name": result.name,
            "content": result.output}, _message)
    return [_message(message)]


def tool_fields(request: Request) -> dict[str, Any]:
    """``tools`` and ``tool_choice``: auto, any (llmcli's required), none, or one function."""
    choice = request.tool_choice
    wire_choice: Any = (
        "any" if choice == "required" else choice if choice in ("auto", "none")
        else {"type": "function", "function": {"name": choice}})
    return {"tools": [tool.as_function() for tool in request.tools], "tool_choice": wire_choice}


def _arguments(value: Any) -> Any:
    """A call's arguments: the SDK's ``Arguments`` is an object or its JSON text."""
    if isinstance(value, dict):
        return value
    text = value if isinstance(value, str) else ""
    try:
        return json.loads(text) if text.strip() else {}
    except ValueError:
        return text  # not JSON: the chain reports malformed arguments


class _StreamedCalls:
    """``delta.tool_calls`` by index. Mistral sends each call whole in one delta; pieces of
    the arguments' text, should they come, are joined as OpenAI's are."""

    def __init__(self) -> None:
        self.calls: dict[int, list[Any]] = {}

    def add(self, pieces: Any) -> None:
        if not isinstance(pieces, list):
            return  # None or the SDK's Unset
        for piece in pieces:
            index = getattr(piece, "index", 0)
            entry = self.calls.setdefault(index if isinstance(index, int) else 0, ["", "", ""])
            if isinstance(getattr(piece, "id", None), str) and piece.id != "null":
                entry[0] = piece.id
            function = piece.function
            entry[1] += function.name or ""
            if isinstance(function.arguments, dict):
                entry[2] = function.arguments
            elif isinstance(function.arguments, str):
                entry[2] += function.arguments

    def done(self) -> Iterator[ToolCall]:
        for index in sorted(self.calls):
            ident, name, arguments = self.calls[index]
            yield ToolCall(ident or f"call{index:05d}", name, _arguments(arguments))
        self.calls.clear()


# -- replies ----------------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    """Message content is a string, or a list of chunks (text, and thinking for reasoning
    models, which is not part of the reply)."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for chunk in content:
            if getattr(chunk, "type", None) == "text":
                parts.append(chunk.text)
            elif isinstance(chunk, dict) and chunk.get("type") == "text":
                parts.append(chunk.get("text", ""))
        return "".join(parts)
    return ""  # Unset


#: Mistral's finish reasons in llmcli's vocabulary; others ("error") pass through.
_STOP_REASONS = {
    "stop": StopReason.END_TURN,
    "length": StopReason.MAX_TOKENS,
    "model_length": StopReason.MAX_TOKENS,
    "tool_calls": StopReason.TOOL_USE,
}


def _usage(usage: Any, finish_reason: Any) -> Usage:
    reason = finish_reason if isinstance(finish_reason, str) else None
    if reason is not None and reason in _STOP_REASONS:
        reason = _STOP_REASONS[reason].value
    result = Usage(stop_reason=reason)
    if usage is not None and hasattr(usage, "prompt_tokens"):
        result.input_tokens = usage.prompt_tokens
        result.output_tokens = usage.completion_tokens
    return result


def read_completion(response: Any) -> Iterator[Chunk]:
    choice = response.choices[0]
    yield _text_of(choice.message.content)
    for call in choice.message.tool_calls if isinstance(choice.message.tool_calls, list) else []:
        ident = call.id if isinstance(call.id, str) and call.id != "null" else "call00000"
        yield ToolCall(ident, call.function.name, _arguments(call.function.arguments))
    yield _usage(response.usage, choice.finish_reason)


class EventReader:
    """A stream's events, one at a time (a :class:`llmcli.remote.StreamReader`): text deltas
    of choice 0, its tool calls once it finishes, then the usage once a finish_reason has
    arrived (only then)."""

    def __init__(self) -> None:
        self.usage_info: Any = None
        self.finish_reason: Any = None
        self.calls = _StreamedCalls()

    def feed(self, event: Any) -> Iterator[Chunk]:
        chunk = event.data
        if getattr(chunk, "usage", None) is not None:
            self.usage_info = chunk.usage
        if not chunk.choices:
            return
        choice = chunk.choices[0]
        text = _text_of(choice.delta.content)
        if text:
            yield text
        self.calls.add(choice.delta.tool_calls)
        if isinstance(choice.finish_reason, str):
            self.finish_reason = choice.finish_reason
            yield from self.calls.done()

    def end(self) -> Iterator[Chunk]:
        if self.finish_reason is not None:
            yield _usage(self.usage_info, self.finish_reason)


# -- retries ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPlan:
    """Arguments for the SDK's ``BackoffStrategy`` (all in milliseconds)."""

    initial_interval: int
    max_interval: int
    exponent: float
    max_elapsed_time: int
    jitter_ms: int


def retry_plan(max_retries: int, initial_ms: int = 500, max_ms: int = 8000,
               jitter_ms: int = 250, slack_ms: int = 1000) -> RetryPlan | None:
    """The SDK's backoff sized for about ``max_retries`` retries, or None for no retrying.

    mistralai bounds retries by elapsed time, not by count. The window is the sum of the
    first ``max_retries`` backoff delays at their longest (the SDK sleeps the exponential
    delay plus its jitter, capped at ``max_ms``) plus ``slack_ms`` per attempt for the
    requests themselves; a ``Retry-After`` from the server is waited out as asked. Once the
    window is spent, the last error response is what the caller gets.
    """
    if max_retries <= 0:
        return None
    delays = sum(min(initial_ms * 2**n + jitter_ms, max_ms) for n in range(max_retries))
    return RetryPlan(initial_ms, max_ms, 2.0, delays + slack_ms * max_retries, jitter_ms)


# -- errors -----------------------------------------------------------------------------------


def error_message_from_body(body: Any) -> tuple[str | None, str | None]:
    """(code or type, message) from a Mistral error body.

    Bodies seen: ``{"object": "error", "message", "type", "param", "code"}``,
    ``{"message": "Unauthorized", "request_id"}``, ``{"detail": ...}`` (validation)."""
    body = error_body(body)
    if body is None or isinstance(body, str):
        return None, body
    if not isinstance(body, dict):
        return None, None
    code = body.get("code") or body.get("type")
    message = body.get("message")
    if message is None and "detail" in body:
        message = body["detail"]
    if isinstance(message, (dict, list)):
        message = json.dumps(message)
    return (str(code) if code else None), (str(message) if message is not None else None)


def status_fault(status: int | None, body: Any, fallback: str) -> HTTPFault:
    code, message = error_message_from_body(body)
    return HTTPFault(status, message or fallback, f"code {code}" if code else "")
