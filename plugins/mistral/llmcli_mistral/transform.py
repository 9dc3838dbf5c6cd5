"""Pure transforms for Mistral chat completions: options, request building, retry policy,
error mapping. No I/O and no SDK import here."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from llmcli.errors import ProviderError, http_status_error
from llmcli.models import Options, Request, StrList

__all__ = [
    "KNOWN_MODELS",
    "MistralOptions",
    "RetryPlan",
    "build_request",
    "error_message_from_body",
    "map_status_error",
    "retry_plan",
    "scrub",
]

PROVIDER = "mistral"
DEFAULT_SERVER_URL = "https://api.mistral.ai"

#: (model id, aliases). Every Mistral chat model takes ``prefix: true`` and echoes it.
KNOWN_MODELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mistral-large-latest", ("mistral-large",)),
    ("mistral-medium-latest", ("mistral-medium",)),
    ("mistral-small-latest", ("mistral-small",)),
    ("codestral-latest", ("codestral",)),
    ("open-mistral-nemo", ("mistral-nemo",)),
)

#: The statuses the mistralai SDK retries for chat (429, 500, 502, 503, 504).
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})


class MistralOptions(Options):
    max_tokens: int | None = Field(default=None, ge=1, description="Most tokens to generate")
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="Sampling temperature"
    )
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus sampling")
    stop: StrList | None = Field(
        default=None, description="Stop at any of these (a string or a JSON list)"
    )
    random_seed: int | None = Field(
        default=None, ge=0, description="Seed for reproducible sampling"
    )
    timeout: float | None = Field(default=None, gt=0, description="Seconds to wait for the API")
    max_retries: int = Field(
        default=2, ge=0, description="Sizes the retry window on 429/5xx (0: no retries)"
    )
    base_url: str | None = Field(
        default=None, description="API server URL (default MISTRAL_BASE_URL)"
    )


def build_request(request: Request) -> dict[str, Any]:
    """Keyword arguments for ``client.chat.complete`` / ``client.chat.stream``."""
    options = request.options
    assert isinstance(options, MistralOptions)
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages += [{"role": m.role, "content": m.content} for m in request.messages()]
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
    return params


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
    first ``max_retries`` backoff delays (with jitter) plus ``slack_ms`` per attempt for the
    requests themselves; a ``Retry-After`` from the server is waited out as asked. Once the
    window is spent, the last error response is what the caller gets.
    """
    if max_retries <= 0:
        return None
    delays = sum(min(initial_ms * 2**n, max_ms) + jitter_ms for n in range(max_retries))
    return RetryPlan(initial_ms, max_ms, 2.0, delays + slack_ms * max_retries, jitter_ms)


# -- errors -----------------------------------------------------------------------------


_BEARER = re.compile(r"Bearer\s+\S+")


def scrub(text: str, key: str | None) -> str:
    """Remove the API key, and any bearer token a message might quote."""
    if key:
        text = text.replace(key, "[redacted]")
    return _BEARER.sub("Bearer [redacted]", text)


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


def map_status_error(
    status: int | None, body: Any, *, fallback: str, key: str | None, retries: int
) -> ProviderError:
    code, message = error_message_from_body(body)
    # The SDK retries within a time window, so the exact count is not known here.
    after = " after retrying" if retries and status in RETRIED_STATUSES else ""
    return http_status_error(
        "Mistral", status, scrub(message or fallback, key),
        key_hint="Run 'llmcli keys set mistral' or set MISTRAL_API_KEY.",
        retried=after, kind=f"code {code}" if code else "",
    )

