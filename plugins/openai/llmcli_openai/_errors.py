"""Turn whatever the openai SDK raises into one :class:`ProviderError` line a user can act on.

Pure: the mapping reads the exception's class and attributes and never does I/O. The
provider's own message is kept (it usually says what is wrong); keys are scrubbed from it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from llmcli.errors import ProviderError, http_status_error, transport_error

__all__ = ["ErrorContext", "map_error", "scrub"]

# OpenAI-style secret keys, also when a server echoes them partly masked ("sk-ab***cd").
_KEY_PATTERN = re.compile(r"\bsk-[A-Za-z0-9_*\-]{4,}")
_MAX_MESSAGE = 300


@dataclass(frozen=True)
class ErrorContext:
    provider: str
    api_model: str
    base_url: str
    key_hint: str = ""
    timeout: float | None = None
    max_retries: int = 2
    secrets: tuple[str, ...] = field(default=())


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _KEY_PATTERN.sub("sk-***", text)


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _provider_message(exc: Any) -> str:
    """The server's own words: ``error.message`` from the JSON body, or the raw body text."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, str) and message:
            return message
        detail = body.get("detail")  # some compatible servers answer FastAPI-style
        if detail:
            return str(detail)
    if isinstance(body, str) and body.strip():
        return body.strip()
    message = getattr(exc, "message", None) or str(exc)
    # The SDK's own text for a status error is "Error code: 401 - <message>"; drop the prefix.
    return re.sub(r"^Error code: \d+( - )?", "", message) or message


def _retries(ctx: ErrorContext) -> str:
    n = ctx.max_retries
    return f"after {n} {'retry' if n == 1 else 'retries'}"


def map_error(exc: BaseException, ctx: ErrorContext, mid_stream: bool = False) -> ProviderError:
    """The :class:`ProviderError` for an SDK (or JSON decoding) exception; ``mid_stream``
    when the stream had started (the SDK does not retry then)."""
    import openai  # only ever called after the SDK has run, so this import is free

    p = ctx.provider
    status: int | None = None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        error = http_status_error(
            p, status, _one_line(scrub(_provider_message(exc), ctx.secrets)),
            key_hint=ctx.key_hint + ".", retried=f" {_retries(ctx)}" if ctx.max_retries else "",
            not_found_hint=(f"Check the model name {ctx.api_model!r} and the base URL "
                            f"{ctx.base_url}"),
            provider_id=p,
        )
        error.args = (scrub(str(error), ctx.secrets),)
        return error
    elif isinstance(exc, openai.APIConnectionError):
        # APITimeoutError is a kind of APIConnectionError. Once a stream has started the
        # SDK does not retry; before that it has retried max_retries times.
        cause = exc.__cause__
        timed_out = isinstance(exc, openai.APITimeoutError)
        if mid_stream:
            kind = "stalled" if timed_out else "stream"
        else:
            kind = "timeout" if timed_out else "connect"
        retried = f" {_retries(ctx)}" if ctx.max_retries and not mid_stream else ""
        error = transport_error(
            p, kind, detail=str(cause) if cause is not None else "", limit=ctx.timeout,
            url=ctx.base_url, retried=retried, provider_id=p,
        )
        return ProviderError(_one_line(scrub(str(error), ctx.secrets)), provider=p)
    elif isinstance(exc, openai.APIResponseValidationError):
        text = f"{p}: the server's response is not valid: {_provider_message(exc)}"
    elif isinstance(exc, openai.APIError):
        # No status: an error event inside a stream that had started fine.
        text = f"{p}: the server reported an error mid-stream: {_provider_message(exc)}"
    elif isinstance(exc, json.JSONDecodeError):
        # From the SDK: a "data:" line or a response body that is not JSON.
        text = f"{p}: malformed response from the server (invalid JSON: {exc})"
    else:
        text = f"{p}: {type(exc).__name__}: {exc}"
    return ProviderError(_one_line(scrub(text, ctx.secrets)), status=status, provider=p)
