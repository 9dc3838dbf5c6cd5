"""Mistral La Plateforme models for llmcli.

Prefill is native: the final assistant message carries ``prefix: true`` and the API answers
with the prefill followed by the continuation (it echoes), streaming too; the core strips
the echo. The ``mistralai`` SDK is imported only when a model runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from llmcli.capabilities import PrefillSupport, StopReason
from llmcli.errors import ProviderError, transport_error
from llmcli.models import Chunk, KeySpec, Model, Request, Usage
from llmcli_mistral.transform import (
    DEFAULT_SERVER_URL,
    KNOWN_MODELS,
    PROVIDER,
    MistralOptions,
    build_request,
    map_status_error,
    retry_plan,
    scrub,
)

__all__ = ["MistralModel", "MistralOptions", "register_models", "resolve_model"]


class MistralModel(Model):
    needs_key = KeySpec("mistral", "MISTRAL_API_KEY")
    can_stream = True
    prefill_support = PrefillSupport.ECHOES_PREFIX
    Options = MistralOptions  # type: ignore[assignment]

    def __init__(self, model_id: str, aliases: tuple[str, ...] = ()) -> None:
        self.model_id = model_id
        self.aliases = aliases

    def prefill_note(self) -> str:
        return "prefix: true; the API echoes the prefill, llmcli keeps one copy"

    def execute(self, request: Request) -> Iterator[Chunk]:
        sdk = _import_sdk()  # lazily: importing the SDK costs start-up time
        options = request.options
        assert isinstance(options, MistralOptions)
        params = build_request(request)
        server_url = options.base_url or os.environ.get("MISTRAL_BASE_URL") or DEFAULT_SERVER_URL
        convert = _ErrorConverter(sdk, request.key, options, server_url)
        client = None
        try:
            client = sdk.Mistral(
                api_key=request.key,
                server_url=server_url,
                retry_config=_retry_config(sdk, options.max_retries),
                timeout_ms=int(options.timeout * 1000) if options.timeout else None,
            )
            if request.stream:
                yield from _stream(client, params, convert)
            else:
                yield from _complete(client, params)
        except ProviderError:
            raise
        except Exception as exc:
            raise convert(exc) from exc
        finally:
            if client is not None:
                _close(client)


class _SDK:
    """The few SDK names this plugin uses, wherever this mistralai version keeps them."""

    def __init__(self) -> None:
        try:  # mistralai >= 2 moved everything under mistralai.client
            from mistralai.client import Mistral, errors
            from mistralai.client.utils import BackoffStrategy, RetryConfig
        except ImportError:  # pragma: no cover - mistralai 1.x
            from mistralai import Mistral  # type: ignore[attr-defined,no-redef]
            from mistralai import models as errors  # type: ignore[attr-defined,no-redef]
            from mistralai.utils import (  # type: ignore[no-redef]
                BackoffStrategy,
                RetryConfig,
            )
        self.Mistral = Mistral
        self.BackoffStrategy = BackoffStrategy
        self.RetryConfig = RetryConfig
        self.status_errors: tuple[type[BaseException], ...] = tuple(
            cls for cls in (getattr(errors, "MistralError", None), errors.SDKError,
                            getattr(errors, "HTTPValidationError", None))
            if isinstance(cls, type)
        )


def _import_sdk() -> _SDK:
    return _SDK()


def _close(client: Any) -> None:
    """Release the client's connection pool (one client per request)."""
    http = getattr(getattr(client, "sdk_configuration", None), "client", None)
    close = getattr(http, "close", None)
    if callable(close):
        close()


#: Keyword arguments for :func:`retry_plan` (tests shrink the delays).
RETRY_TUNING: dict[str, int] = {}


def _retry_config(sdk: _SDK, max_retries: int) -> Any:
    plan = retry_plan(max_retries, **RETRY_TUNING)
    if plan is None:
        return sdk.RetryConfig("none", sdk.BackoffStrategy(0, 0, 1.0, 0), False)
    backoff = sdk.BackoffStrategy(
        plan.initial_interval, plan.max_interval, plan.exponent, plan.max_elapsed_time,
        plan.jitter_ms,
    )
    return sdk.RetryConfig("backoff", backoff, retry_connection_errors=True)


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


def _complete(client: Any, params: dict[str, Any]) -> Iterator[Chunk]:
    response = client.chat.complete(**params)
    choice = response.choices[0]
    yield _text_of(choice.message.content)
    yield _usage(response.usage, choice.finish_reason)


def _stream(
    client: Any, params: dict[str, Any], convert: Callable[..., ProviderError]
) -> Iterator[Chunk]:
    usage_info: Any = None
    finish_reason: Any = None
    stream = client.chat.stream(**params)
    with stream:
        try:
            for event in stream:
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
        except Exception as exc:
            # Raised mid-stream (a dropped connection): the core keeps what arrived and logs
            # it as partial.
            raise convert(exc, mid_stream=True) from exc
    if finish_reason is None:
        raise ProviderError(
            "Mistral stream ended before a finish_reason (the connection was cut)",
            provider=PROVIDER,
        )
    yield _usage(usage_info, finish_reason)


class _ErrorConverter:
    """Turns any SDK or transport exception into a one-line :class:`ProviderError`."""

    def __init__(self, sdk: _SDK, key: str | None, options: MistralOptions, server_url: str):
        self.sdk = sdk
        self.key = key
        self.options = options
        self.server_url = server_url

    def __call__(self, exc: BaseException, mid_stream: bool = False) -> ProviderError:
        retries = self.options.max_retries
        if isinstance(exc, self.sdk.status_errors):
            status = getattr(exc, "status_code", None)
            body = getattr(exc, "body", None)
            fallback = str(getattr(exc, "message", "") or exc)
            return map_status_error(status, body, fallback=fallback, key=self.key,
                                    retries=retries)
        names = {cls.__name__ for cls in type(exc).__mro__}
        if "TimeoutException" in names:
            kind, detail = "timeout", ""
        elif names & {"ConnectError", "ConnectTimeout", "NoResponseError"}:
            kind, detail = "connect", str(exc)
        else:
            kind, detail = ("stream" if mid_stream else "other"), f"{type(exc).__name__}: {exc}"
        return transport_error(
            "Mistral", kind, detail=scrub(detail, self.key), limit=self.options.timeout,
            url=scrub(self.server_url, self.key), retried=" after retrying" if retries else "",
            provider_id=PROVIDER,
        )


def register_models(register: Callable[[Model], None]) -> None:
    for model_id, aliases in KNOWN_MODELS:
        register(MistralModel(model_id, aliases))


def resolve_model(name: str) -> Model | None:
    """``mistral/<any model id>`` (e.g. ``mistral/magistral-medium-latest``)."""
    prefix = f"{PROVIDER}/"
    if not name.startswith(prefix):
        return None
    model_id = name[len(prefix):]
    if not model_id or any(c.isspace() for c in model_id):
        return None
    return MistralModel(model_id)
