"""Mistral chat completions on the wire: request building, reading replies and stream events,
stop reasons, error bodies, and the retry window the SDK is given. Pure: no I/O, no SDK
import (SDK objects are read by attribute)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmcli import schema as schemas
from llmcli.capabilities import SchemaSupport, StopReason
from llmcli.models import Chunk, Message, Request, Usage
from llmcli.remote import HTTPFault, WireRequest

if TYPE_CHECKING:
    from llmcli_mistral._models import MistralOptions

__all__ = ["RETRIED_STATUSES", "RetryPlan", "build_request", "error_message_from_body",
           "read_completion", "read_events", "retry_plan", "status_fault"]

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
    messages += [_message(m) for m in request.messages()]
    if request.prefill:
        # Without prefix: true a trailing assistant message is a 400 (code 3230). The reply
        # then starts with the prefill again; the core strips that echo.
        messages.append({"role": "assistant", "content": request.prefill, "prefix": True})
    params: dict[str, Any] = {"model": request.model_id, "messages": messages}
    for name in ("max_tokens", "temperature", "top_p", "random_seed"):
        value = getattr(options, name)
        if value is not None:
            params[name] = value
    if options.stop:
        params["stop"] = list(options.stop)
    if request.schema is not None and request.schema_support is SchemaSupport.NATIVE:
        # The SDK's typed dict names the schema ``schema_definition``; the wire says "schema".
        schema = schemas.closed(request.schema)
        params["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "reply", "schema_definition": schema, "strict": schemas.is_strict(schema)}}
    return WireRequest(params)


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
    yield _usage(response.usage, choice.finish_reason)


def read_events(events: Iterable[Any]) -> Iterator[Chunk]:
    """Text deltas of choice 0, then the usage once a finish_reason has arrived (only then)."""
    usage_info: Any = None
    finish_reason: Any = None
    for event in events:
        chunk = event.data
        if getattr(chunk, "usage", None) is not None:
            usage_info = chunk.usage
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        text = _text_of(choice.delta.content)
        if text:
            yield text
        if isinstance(choice.finish_reason, str):
            finish_reason = choice.finish_reason
    if finish_reason is not None:
        yield _usage(usage_info, finish_reason)


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
    if isinstance(body, (str, bytes)):
        try:
            body = json.loads(body)
        except ValueError:
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            return None, text.strip() or None
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
