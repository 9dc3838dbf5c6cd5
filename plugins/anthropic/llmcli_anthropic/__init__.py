"""Anthropic Claude models for llmcli.

Claude up to 4.5 continues a trailing assistant message (native prefill, the API eats it);
Claude 4.6 and later reject one, so llmcli emulates the prefill through the system prompt.
The ``anthropic`` SDK is imported only when a model runs, so listing models stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from llmcli.capabilities import PrefillSupport
from llmcli.errors import ProviderError, transport_error
from llmcli.models import Chunk, KeySpec, Model, PrefillSent, Request, Usage
from llmcli.models import Options as BaseOptions
from llmcli_anthropic.transform import (
    KNOWN_MODELS,
    PROVIDER,
    ClaudeOptions,
    build_request,
    map_status_error,
    native_prefill,
    prefill_support,
    scrub,
)

__all__ = ["ClaudeModel", "ClaudeOptions", "register_models", "resolve_model"]

DEFAULT_BASE_URL = "https://api.anthropic.com"
#: HTTP statuses the SDK retries (its ``_should_retry``): after an error with one of these,
#: ``max_retries`` retries have already been spent.
_RETRIED_STATUSES = {408, 409, 429}


class ClaudeModel(Model):
    needs_key = KeySpec("anthropic", "ANTHROPIC_API_KEY")
    can_stream = True
    Options = ClaudeOptions  # type: ignore[assignment]

    def __init__(self, model_id: str, aliases: tuple[str, ...] = ()) -> None:
        self.model_id = model_id
        self.aliases = aliases
        self.prefill_support = prefill_support(model_id, ClaudeOptions())

    def get_prefill_support(self, options: BaseOptions, stream: bool = True) -> PrefillSupport:
        if not isinstance(options, ClaudeOptions):
            options = ClaudeOptions()
        return prefill_support(self.model_id, options)

    def prefill_note(self) -> str:
        # Shown by `llmcli models`, and as the reason when a strict prefill is refused.
        if native_prefill(self.model_id):
            return "emulated with -o thinking 1: the API forbids prefill with extended thinking"
        return "Claude 4.6+ reject assistant prefill; llmcli emulates it unless -o prefill_strict 1"

    # -- I/O -----------------------------------------------------------------------------

    def execute(self, request: Request) -> Iterator[Chunk]:
        import anthropic  # lazily: importing the SDK costs start-up time

        options = request.options
        assert isinstance(options, ClaudeOptions)
        wire = build_request(request)
        if wire.sent_prefill is not None:
            yield PrefillSent(wire.sent_prefill)
        base_url = options.base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL
        client_args: dict[str, Any] = {
            "api_key": request.key,
            "base_url": base_url,
            "max_retries": options.max_retries,
        }
        if options.timeout is not None:
            client_args["timeout"] = options.timeout
        convert = _ErrorConverter(anthropic, request.key, options, base_url)
        client = None
        try:
            client = anthropic.Anthropic(**client_args)
            if request.stream:
                yield from _stream(client, wire.params, convert)
            else:
                yield from _complete(client, wire.params)
        except ProviderError:
            raise
        except Exception as exc:
            raise convert(exc) from exc
        finally:
            if client is not None:
                client.close()  # one client per request: release its connection pool


def _complete(client: Any, params: dict[str, Any]) -> Iterator[Chunk]:
    message = client.messages.create(**params)
    # With thinking on, the content also holds thinking blocks; only text is the reply.
    yield "".join(block.text for block in message.content if block.type == "text")
    yield Usage(
        input_tokens=message.usage.input_tokens,
        output_tokens=message.usage.output_tokens,
        stop_reason=message.stop_reason,
    )


def _stream(
    client: Any, params: dict[str, Any], convert: Callable[..., ProviderError]
) -> Iterator[Chunk]:
    usage = Usage()
    finished = False
    stream = client.messages.create(**params, stream=True)
    with stream:
        try:
            for event in stream:
                if event.type == "message_start":
                    usage.input_tokens = event.message.usage.input_tokens
                elif event.type == "content_block_delta":
                    if event.delta.type == "text_delta":
                        yield event.delta.text
                elif event.type == "message_delta":
                    usage.stop_reason = event.delta.stop_reason
                    usage.output_tokens = event.usage.output_tokens
                elif event.type == "message_stop":
                    finished = True
        except Exception as exc:
            # Raised mid-stream (a dropped connection, an SSE error event): the core keeps
            # what arrived and logs it as partial.
            raise convert(exc, mid_stream=True) from exc
    if not finished:
        raise ProviderError(
            "Anthropic stream ended before message_stop (the connection was cut)",
            provider=PROVIDER,
        )
    yield usage


class _ErrorConverter:
    """Turns any SDK or transport exception into a one-line :class:`ProviderError`."""

    def __init__(self, sdk: Any, key: str | None, options: ClaudeOptions, base_url: str):
        self.sdk = sdk
        self.key = key
        self.options = options
        self.base_url = base_url

    def __call__(self, exc: BaseException, mid_stream: bool = False) -> ProviderError:
        sdk, retries = self.sdk, self.options.max_retries
        if isinstance(exc, sdk.APIStatusError):
            status = exc.status_code
            # An error event inside a stream arrives after the SDK's retries are over.
            retried = not mid_stream and (status in _RETRIED_STATUSES or status >= 500)
            return map_status_error(
                status, exc.body, fallback=exc.message, key=self.key,
                retries=retries if retried else 0,
            )
        after = f" after {retries} {'retry' if retries == 1 else 'retries'}" if retries else ""
        if isinstance(exc, sdk.APITimeoutError):
            kind, detail = "timeout", ""
        elif isinstance(exc, sdk.APIConnectionError):
            kind, detail = "connect", str(exc.__cause__ or exc)
        else:
            # Transport errors raised while reading a stream are not wrapped by the SDK.
            kind, detail = ("stream" if mid_stream else "other"), f"{type(exc).__name__}: {exc}"
        return transport_error(
            "Anthropic", kind, detail=scrub(detail, self.key), limit=self.options.timeout,
            url=scrub(self.base_url, self.key), retried=after, provider_id=PROVIDER,
        )


def register_models(register: Callable[[Model], None]) -> None:
    for info in KNOWN_MODELS:
        register(ClaudeModel(info.model_id, info.aliases))


def resolve_model(name: str) -> Model | None:
    """``anthropic/<any model id>``, or a bare ``claude-...`` id not in the list (a dated
    snapshot such as ``claude-haiku-4-5-20251001``)."""
    model_id = name.removeprefix(f"{PROVIDER}/")
    if model_id == name and not name.startswith("claude-"):
        return None
    if not model_id or any(c.isspace() for c in model_id):
        return None
    return ClaudeModel(model_id)
