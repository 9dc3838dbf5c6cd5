"""Errors as each wire shows them, and llmcli's errors mapped to HTTP statuses.

A response never carries a traceback or a key: messages are llmcli's one-line messages, passed
through :func:`llmcli.config.scrub`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmcli.config import scrub
from llmcli.errors import (
    AttachmentError,
    AttachmentUnsupportedError,
    InvalidSchemaError,
    KeyNeededError,
    LLMCLIError,
    OptionsError,
    PrefillUnsupportedError,
    ProviderError,
    RefusedModelError,
    SchemaUnsupportedError,
    SchemaValidationError,
    ToolDefinitionError,
    ToolsUnsupportedError,
    UnknownModelError,
)

__all__ = ["WireError", "anthropic_body", "from_exception", "openai_body"]


@dataclass
class WireError(Exception):
    """An error to answer with: HTTP status, one-line message, and OpenAI's ``type``/``code``."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None

    def __str__(self) -> str:
        return self.message


def _provider_status(exc: ProviderError) -> tuple[int, str, str]:
    """The status a client should see for an upstream failure.

    The upstream's 401/403 is not the client's fault (it is this server's key for the
    provider), so it is a 502, not a 401 that an SDK would read as "your key is wrong"."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    cause = exc.__cause__
    if cause is not None:
        names |= {cls.__name__ for cls in type(cause).__mro__}
    status = exc.status
    if status is None and isinstance(cause, ProviderError):
        status = cause.status
    if "ProviderTimeoutError" in names or status == 408:
        return 504, "upstream_timeout", "timeout"
    if status == 429:
        return 429, "rate_limit_error", "rate_limit_exceeded"
    if status in (401, 403):
        return 502, "upstream_error", "upstream_authentication_failed"
    if status in (400, 404, 413, 422):
        return status, "invalid_request_error", "upstream_rejected_request"
    if status in (503, 529):
        return 503, "upstream_error", "upstream_overloaded"
    return 502, "upstream_error", "upstream_failed"


#: What a client is told of an exception llmcli did not word itself (the details go to
#: standard error under LLMCLI_DEBUG only): its text may hold anything (a path, a file's
#: contents, a URL), so it never goes into a response.
INTERNAL_ERROR = "Internal server error (the server's operator can see details with LLMCLI_DEBUG=1)"


def from_exception(exc: BaseException) -> WireError:
    """The answer for anything raised while preparing or running a response. Only messages
    llmcli wrote for the user (:class:`WireError`, :class:`LLMCLIError`) are shown; anything
    else is a generic 500."""
    if isinstance(exc, WireError):
        return exc
    if not isinstance(exc, LLMCLIError):
        return WireError(500, INTERNAL_ERROR, "server_error", "internal_error")
    message = scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if isinstance(exc, UnknownModelError):
        return WireError(404, message, "invalid_request_error", "model_not_found", "model")
    if isinstance(exc, RefusedModelError):
        return WireError(400, message, "invalid_request_error", "model_refused", "model")
    if isinstance(exc, PrefillUnsupportedError):
        return WireError(400, message, "invalid_request_error", "prefill_unsupported",
                         "messages")
    if isinstance(exc, AttachmentUnsupportedError):
        return WireError(400, message, "invalid_request_error", "attachments_unsupported",
                         "messages")
    if isinstance(exc, AttachmentError):
        return WireError(400, message, "invalid_request_error", "invalid_attachment",
                         "messages")
    if isinstance(exc, OptionsError):
        return WireError(400, message, "invalid_request_error", "unsupported_parameter")
    if isinstance(exc, ToolsUnsupportedError | ToolDefinitionError):
        return WireError(400, message, "invalid_request_error", "tools_unsupported", "tools")
    if isinstance(exc, InvalidSchemaError | SchemaUnsupportedError):
        return WireError(400, message, "invalid_request_error", "unsupported_response_format",
                         "response_format")
    if isinstance(exc, SchemaValidationError):
        # The model's replies kept failing the schema (the validated mode's retries spent).
        return WireError(502, message, "upstream_error", "schema_validation_failed")
    if isinstance(exc, KeyNeededError):
        # The operator has not set the provider's key: the server, not the client, must act.
        return WireError(503, message, "server_error", "upstream_key_missing")
    if isinstance(exc, ProviderError):
        status, type_, code = _provider_status(exc)
        return WireError(status, message, type_, code)
    return WireError(500, message, "server_error", "internal_error")


def openai_body(error: WireError) -> dict[str, Any]:
    return {"error": {"message": error.message, "type": error.type, "param": error.param,
                      "code": error.code}}


_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                    403: "permission_error", 404: "not_found_error", 408: "timeout_error",
                    413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}


def anthropic_body(error: WireError) -> dict[str, Any]:
    fallback = "invalid_request_error" if 400 <= error.status < 500 else "api_error"
    type_ = _ANTHROPIC_TYPES.get(error.status, fallback)
    return {"type": "error", "error": {"type": type_, "message": error.message}}
