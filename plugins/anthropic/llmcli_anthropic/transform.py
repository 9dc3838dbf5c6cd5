"""Pure transforms for the Anthropic Messages API: model facts, request building, error mapping.

Nothing here does I/O or imports the SDK, so it is cheap to import (``llmcli models`` loads
this plugin) and easy to test without a network.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import Field, model_validator

from llmcli.capabilities import PrefillSupport
from llmcli.errors import ProviderError, http_status_error
from llmcli.models import Options, Request, StrList, emulation_instruction

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_THINKING_BUDGET",
    "KNOWN_MODELS",
    "ClaudeOptions",
    "ModelInfo",
    "WireRequest",
    "build_request",
    "error_message_from_body",
    "map_status_error",
    "native_prefill",
    "prefill_support",
    "scrub",
]

PROVIDER = "anthropic"
DEFAULT_MAX_TOKENS = 4096
SAMPLING_PARAMETERS = ("temperature", "top_p", "top_k")
#: Anthropic's minimum thinking budget is 1024 tokens; 2048 leaves room under the default
#: max_tokens for the answer itself.
DEFAULT_THINKING_BUDGET = 2048


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    aliases: tuple[str, ...]


#: Current models (the anthropic SDK's own model list, Nov 2026), newest first. Floating
#: aliases (``opus``, ``sonnet``, ``haiku``) name the newest model of the family, as
#: Anthropic's do; the versioned aliases reach the 4.5 models, the last with native prefill.
KNOWN_MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("claude-opus-5-5", ("opus", "opus-5.5", "claude-opus-5.5")),
    ModelInfo("claude-sonnet-5-5", ("sonnet", "sonnet-5.5", "claude-sonnet-5.5")),
    ModelInfo("claude-haiku-5-5", ("haiku", "haiku-5.5", "claude-haiku-5.5")),
    ModelInfo("claude-opus-5", ("opus-5",)),
    ModelInfo("claude-sonnet-5", ("sonnet-5",)),
    ModelInfo("claude-opus-4-8", ("opus-4.8", "claude-opus-4.8")),
    ModelInfo("claude-opus-4-7", ("opus-4.7", "claude-opus-4.7")),
    ModelInfo("claude-sonnet-4-6", ("sonnet-4.6", "claude-sonnet-4.6")),
    ModelInfo("claude-opus-4-6", ("opus-4.6", "claude-opus-4.6")),
    ModelInfo("claude-opus-4-5", ("opus-4.5", "claude-opus-4.5")),
    ModelInfo("claude-sonnet-4-5", ("sonnet-4.5", "claude-sonnet-4.5")),
    ModelInfo("claude-haiku-4-5", ("haiku-4.5", "claude-haiku-4.5")),
)

# claude-<family>-<major>[-<minor>][-<yyyymmdd>] (Claude 4 and later) or the older
# claude-<major>[-<minor>]-<family>[-<date>] (Claude 3.x). A minor version is one or two
# digits; an eight-digit group is a snapshot date, not a version.
_NEW_STYLE = re.compile(r"^claude-[a-z]+-(\d+)(?:-(\d{1,2}))?(?:-\d{8})?(?:-.*)?$")
_OLD_STYLE = re.compile(r"^claude-(\d+)(?:-(\d{1,2}))?-[a-z]+")
#: The first version that rejects assistant prefill (400 "does not support assistant message
#: prefill").
_FIRST_WITHOUT_PREFILL = (4, 6)


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


class ClaudeOptions(Options):
    max_tokens: int = Field(
        default=DEFAULT_MAX_TOKENS, ge=1, description="Most tokens to generate"
    )
    stop_sequences: StrList | None = Field(
        default=None, description="Stop at any of these (a string or a JSON list)"
    )
    thinking: bool = Field(
        default=False, description="Extended thinking (prefill is then emulated)"
    )
    thinking_budget: int | None = Field(
        default=None, ge=1024, description="Thinking token budget, Claude <= 4.5 (implies thinking)"
    )
    prefill_strict: bool = Field(
        default=False, description="Refuse a prefill rather than emulate it"
    )
    timeout: float | None = Field(default=None, gt=0, description="Seconds to wait for the API")
    max_retries: int = Field(
        default=2, ge=0, description="Retries on 408/409/429/5xx/529 and connection errors"
    )
    base_url: str | None = Field(
        default=None, description="API base URL (default ANTHROPIC_BASE_URL)"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_sampling_parameters(cls, data: Any) -> Any:
        # The API version the anthropic SDK pins (2026-10-21) rejects temperature, top_p and
        # top_k on every model; say so instead of a bare "unknown option".
        if isinstance(data, dict):
            given = [name for name in SAMPLING_PARAMETERS if name in data]
            if given:
                raise ValueError(
                    f"{given[0]} is not accepted: the Anthropic API (version 2026-10-21) "
                    "rejects sampling parameters (temperature, top_p, top_k) on every model"
                )
        return data

    @property
    def thinking_on(self) -> bool:
        return self.thinking or self.thinking_budget is not None

    @model_validator(mode="after")
    def _budget_fits(self) -> ClaudeOptions:
        if self.thinking_on and self.budget >= self.max_tokens:
            raise ValueError(
                f"thinking_budget ({self.budget}) must be less than max_tokens "
                f"({self.max_tokens})"
            )
        return self

    @property
    def budget(self) -> int:
        return self.thinking_budget or DEFAULT_THINKING_BUDGET


def prefill_support(model_id: str, options: ClaudeOptions) -> PrefillSupport:
    """Native (eats) when the model and options allow it, otherwise emulated, or refused
    when the user asked for strict native prefill."""
    if native_prefill(model_id) and not options.thinking_on:
        return PrefillSupport.EATS_PREFIX
    if options.prefill_strict:
        return PrefillSupport.UNSUPPORTED
    return PrefillSupport.EMULATED


@dataclass
class WireRequest:
    """Keyword arguments for ``client.messages.create`` plus what was sent as the prefill."""

    params: dict[str, Any]
    #: The prefill as it went out on the wire when it differs from the user's, else None.
    sent_prefill: str | None = None


def _join_system(system: str | None, extra: str) -> str:
    return f"{system}\n\n{extra}" if system else extra


def build_request(request: Request) -> WireRequest:
    options = request.options
    assert isinstance(options, ClaudeOptions)
    messages: list[dict[str, Any]] = [
        {"role": m.role, "content": m.content} for m in request.messages()
    ]
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
    if options.stop_sequences:
        params["stop_sequences"] = list(options.stop_sequences)
    if options.thinking_on:
        if native_prefill(request.model_id):
            params["thinking"] = {"type": "enabled", "budget_tokens": options.budget}
        else:
            # Claude 4.6 and later size their thinking themselves; a fixed budget is
            # deprecated there (Opus 4.7 has adaptive thinking only).
            params["thinking"] = {"type": "adaptive"}
    return WireRequest(params, sent_prefill)


# -- errors -----------------------------------------------------------------------------

_KEY_PATTERN = re.compile(r"sk-ant-[A-Za-z0-9_\-]{6,}")
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
}


def scrub(text: str, key: str | None) -> str:
    """Remove the API key (and anything shaped like an Anthropic key) from a message."""
    if key:
        text = text.replace(key, "[redacted]")
    return _KEY_PATTERN.sub("[redacted]", text)


def error_message_from_body(body: Any) -> tuple[str | None, str | None]:
    """(error type, message) from an Anthropic error body, either part None when absent."""
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return None, body.strip() or None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = error.get("message")
            return error.get("type"), str(message) if message is not None else None
        if isinstance(body.get("message"), str):
            return None, body["message"]
    return None, None


def map_status_error(
    status: int | None,
    body: Any,
    *,
    fallback: str,
    key: str | None,
    retries: int,
) -> ProviderError:
    """One line a user can act on, from an HTTP error status and the provider's body."""
    error_type, message = error_message_from_body(body)
    if status == 200 and error_type in _TYPE_STATUS:
        status = _TYPE_STATUS[error_type]  # an error event inside a stream
    after = f" after {retries} {'retry' if retries == 1 else 'retries'}" if retries else ""
    return http_status_error(
        "Anthropic", status, scrub(message or fallback, key),
        key_hint="Run 'llmcli keys set anthropic' or set ANTHROPIC_API_KEY.",
        retried=after, kind=error_type or "",
    )
