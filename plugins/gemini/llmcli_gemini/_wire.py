"""Gemini ``generateContent`` on the wire: which ids continue a trailing model turn, request
building, reading replies and stream chunks, error bodies. Pure: no I/O, no SDK import (SDK
objects are read by attribute)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from llmcli.capabilities import PrefillSupport, SchemaSupport, StopReason
from llmcli.models import Attachment, Chunk, Request, Usage, emulation_instruction
from llmcli.remote import HTTPFault, WireRequest, error_body

if TYPE_CHECKING:
    from llmcli_gemini._models import GeminiOptions

__all__ = ["build_request", "error_message_from_body", "native_prefill", "read_chunks",
           "read_response", "status_fault"]

# gemini-<major>[.<minor>]-<variant>[-preview...|-<nnn>]: gemini-2.5-flash, gemini-3-pro-preview,
# gemini-3.5-flash-lite, gemini-3.1-pro-preview-customtools.
_ID = re.compile(r"^gemini-(\d+)(?:\.(\d+))?-(?P<variant>[a-z]+(?:-lite)?)(?P<rest>-.*)?$")
#: The first version whose models all reject a trailing model turn (Google's "latest model"
#: page: "Starting with Gemini 3.6 Flash and Gemini 3.5 Flash-Lite ... and all future Gemini
#: model releases ... prefilling model turns is no longer supported").
_FIRST_WITHOUT_PREFILL = (3, 6)


def native_prefill(model_id: str) -> bool:
    """Whether the API continues a trailing ``model`` turn for this model.

    Before 3.5 every model does; in 3.5, Flash does and Flash-Lite does not; from 3.6 none.
    An id whose version cannot be read (``gemini-flash-latest``, which moves) is treated as
    a new model: emulation never produces the 400."""
    match = _ID.match(model_id)
    if match is None:
        return False
    version = (int(match.group(1)), int(match.group(2) or 0))
    if version < (3, 5):
        return True
    if version < _FIRST_WITHOUT_PREFILL:
        return match["variant"] == "flash"
    return False


def _join_system(system: str | None, extra: str) -> str:
    return f"{system}\n\n{extra}" if system else extra


def _content(role: str, text: str, attachments: tuple[Attachment, ...] = ()) -> dict[str, Any]:
    parts = [*(attachment_part(a) for a in attachments), {"text": text}]
    return {"role": "model" if role == "assistant" else "user", "parts": parts}


def attachment_part(attachment: Attachment) -> dict[str, Any]:
    """An ``inline_data`` part (the SDK's ``Part.inline_data``, a ``Blob``): the bytes
    themselves (the SDK sends them base64-encoded as ``inlineData``) and their media type.
    Placed before the text, as Google's image-understanding guide does."""
    return {"inline_data": {"mime_type": attachment.type, "data": attachment.content}}


def build_request(request: Request) -> WireRequest:
    """Keyword arguments for ``client.models.generate_content`` (and ``_stream``)."""
    options: GeminiOptions = request.options  # type: ignore[assignment]
    contents = [_content(m.role, m.content, m.attachments) for m in request.messages()]
    system = request.system
    if request.prefill and request.prefill_support is PrefillSupport.EATS_PREFIX:
        contents.append(_content("assistant", request.prefill))
    elif request.prefill and request.prefill_support is PrefillSupport.EMULATED:
        system = _join_system(system, emulation_instruction(request.prefill))
    config: dict[str, Any] = {}
    if system:
        config["system_instruction"] = system
    config.update(options.given("max_output_tokens", "temperature", "top_p", "top_k", "seed",
                                "stop_sequences"))
    if request.schema is not None and request.schema_support is SchemaSupport.NATIVE:
        config["response_mime_type"] = "application/json"
        config["response_json_schema"] = request.schema
    return WireRequest({"model": request.model_id, "contents": contents, "config": config})


# -- replies ----------------------------------------------------------------------------------

#: Gemini's finish reasons in llmcli's vocabulary; others pass through, lower-cased.
_STOP_REASONS = {
    "STOP": StopReason.END_TURN,
    "MAX_TOKENS": StopReason.MAX_TOKENS,
    "SAFETY": StopReason.CONTENT_FILTER,
    "RECITATION": StopReason.CONTENT_FILTER,
    "BLOCKLIST": StopReason.CONTENT_FILTER,
    "PROHIBITED_CONTENT": StopReason.CONTENT_FILTER,
    "SPII": StopReason.CONTENT_FILTER,
    "IMAGE_SAFETY": StopReason.CONTENT_FILTER,
}


def _reason(value: Any) -> str | None:
    """A finish reason (an SDK enum or a string) in llmcli's words."""
    if value is None:
        return None
    name = str(getattr(value, "value", value))
    if name in ("FINISH_REASON_UNSPECIFIED", ""):
        return None
    return _STOP_REASONS[name].value if name in _STOP_REASONS else name.lower()


def _text(response: Any) -> str:
    """The reply's text: candidate 0's text parts, without thought summaries."""
    candidates = getattr(response, "candidates", None) or []
    if not candidates or candidates[0].content is None:
        return ""
    parts = candidates[0].content.parts or []
    return "".join(p.text for p in parts if getattr(p, "text", None) and not p.thought)


def _finish(response: Any) -> str | None:
    candidates = getattr(response, "candidates", None) or []
    if candidates:
        return _reason(candidates[0].finish_reason)
    feedback = getattr(response, "prompt_feedback", None)
    if feedback is not None and getattr(feedback, "block_reason", None) is not None:
        return StopReason.CONTENT_FILTER.value  # the prompt itself was blocked
    return None


def _usage(metadata: Any, stop_reason: str | None) -> Usage:
    usage = Usage(stop_reason=stop_reason)
    if metadata is None:
        return usage
    usage.input_tokens = metadata.prompt_token_count
    output = metadata.candidates_token_count
    thoughts = getattr(metadata, "thoughts_token_count", None)
    if output is not None or thoughts:
        # Thinking tokens are billed as output; llmcli's output counts them, as OpenAI's
        # completion_tokens does, and names them in the details.
        usage.output_tokens = (output or 0) + (thoughts or 0)
    if thoughts:
        usage.details["reasoning_tokens"] = thoughts
    cached = getattr(metadata, "cached_content_token_count", None)
    if cached:
        usage.details["cached_tokens"] = cached
    return usage


def read_response(response: Any) -> Iterator[Chunk]:
    yield _text(response)
    yield _usage(response.usage_metadata, _finish(response))


def read_chunks(chunks: Iterable[Any]) -> Iterator[Chunk]:
    """Text as it arrives, then the usage once a finish reason has arrived (only then)."""
    metadata: Any = None
    finish: str | None = None
    for chunk in chunks:
        text = _text(chunk)
        if text:
            yield text
        if chunk.usage_metadata is not None:
            metadata = chunk.usage_metadata
        finish = _finish(chunk) or finish
    if finish is not None:
        yield _usage(metadata, finish)


# -- errors -----------------------------------------------------------------------------------


def error_message_from_body(body: Any) -> tuple[str | None, str | None]:
    """(status, message) from Google's error body ``{"error": {"code", "message",
    "status"}}``, either part None when absent."""
    body = error_body(body)
    if body is None or isinstance(body, str):
        return None, body
    if isinstance(body, list) and body:
        body = body[0]  # a non-SSE stream's error arrives as a one-element array
    if not isinstance(body, dict):
        return None, None
    error = body.get("error", body)
    if not isinstance(error, dict):
        return None, str(error)
    message = error.get("message")
    status = error.get("status")
    return (str(status) if status else None), (str(message) if message is not None else None)


def status_fault(code: int | None, body: Any, fallback: str) -> HTTPFault:
    status, message = error_message_from_body(body)
    return HTTPFault(code, message or fallback, status or "")

