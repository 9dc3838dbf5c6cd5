"""The Model classes: OpenAI's own models and models on OpenAI-compatible servers.

Both run through the same ``execute``: build the request (pure, :mod:`._wire`), call the SDK,
turn its objects into chunks, and turn every SDK exception into a ProviderError
(:mod:`._errors`). The ``openai`` package is imported inside ``execute`` only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field

from llmcli.capabilities import PrefillSupport
from llmcli.models import Chunk, KeySpec, Model, Request
from llmcli.models import Options as BaseOptions

from ._errors import ErrorContext, map_error
from ._wire import (
    Backend,
    EchoMode,
    PrefillStyle,
    build_create_kwargs,
    capability_for,
    completion_events,
    stream_events,
)

__all__ = [
    "CHAT_MODELS",
    "OPENAI_KEY",
    "REASONING_MODELS",
    "UNSUPPORTED_MODELS",
    "CompatibleModel",
    "OpenAIChat",
    "OpenAIReasoning",
    "openai_model",
]

OPENAI_KEY = KeySpec("openai", "OPENAI_API_KEY")
OPENAI_KEY_HINT = "Set it with 'llmcli keys set openai' or the OPENAI_API_KEY variable"

CHAT_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano")
REASONING_MODELS = ("gpt-5", "gpt-5-mini", "gpt-5-nano", "o1", "o3", "o3-mini", "o4-mini")
#: Reasoning models that take no system or developer message (see ``prefill_note``).
UNSUPPORTED_MODELS = ("o1-mini", "o1-preview")

DEFAULT_MAX_RETRIES = 2


class ChatOptions(BaseOptions):
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass")
    stop: str | list[str] | None = Field(None, description="Stop sequence(s)")
    seed: int | None = Field(None, description="Best-effort deterministic sampling")
    timeout: float | None = Field(None, gt=0, description="Seconds to wait for the server")
    max_retries: int | None = Field(
        None, ge=0, le=10, description="Retries on 408/409/429/5xx and connection errors")


class ReasoningOptions(BaseOptions):
    # No temperature/top_p: OpenAI's reasoning models reject them; failing at -o time is
    # clearer than a 400 after the request.
    max_tokens: int | None = Field(
        None, ge=1, description="Most tokens to generate, reasoning included "
        "(sent as max_completion_tokens)")
    stop: str | list[str] | None = Field(None, description="Stop sequence(s)")
    seed: int | None = Field(None, description="Best-effort deterministic sampling")
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = Field(
        None, description="How much the model thinks before answering")
    timeout: float | None = Field(None, gt=0, description="Seconds to wait for the server")
    max_retries: int | None = Field(
        None, ge=0, le=10, description="Retries on 408/409/429/5xx and connection errors")


class _ChatCompletionsModel(Model):
    """Shared machinery; subclasses set ``backend`` and the key in ``__init__``."""

    backend: Backend

    def execute(self, request: Request) -> Iterator[Chunk]:
        import openai  # lazy: listing models must not pay for the SDK

        backend = self.backend
        options: Any = request.options
        timeout = getattr(options, "timeout", None)
        retries = getattr(options, "max_retries", None)
        max_retries = DEFAULT_MAX_RETRIES if retries is None else retries
        base_url = backend.base_url or os.environ.get("OPENAI_BASE_URL") or None
        ctx = ErrorContext(
            provider=backend.provider,
            api_model=backend.api_model,
            base_url=base_url or "https://api.openai.com/v1",
            key_hint=backend.key_hint,
            timeout=timeout,
            max_retries=max_retries,
            secrets=(request.key,) if request.key else (),
        )
        kwargs = build_create_kwargs(request, backend)
        client_args: dict[str, Any] = {
            # Keyless local servers still need some bearer value for the SDK to start.
            "api_key": request.key or "no-key-needed",
            "base_url": base_url,
            "max_retries": max_retries,
        }
        if timeout is not None:
            client_args["timeout"] = timeout
        started = False
        try:
            with openai.OpenAI(**client_args) as client:
                if backend.base_url is not None:
                    # The SDK picks up OPENAI_ORG_ID / OPENAI_PROJECT_ID from the environment;
                    # those identify an OpenAI account and are not for third-party servers.
                    client.organization = None
                    client.project = None
                result = client.chat.completions.create(**kwargs)
                started = True
                if request.stream:
                    yield from stream_events(result, backend.provider)
                else:
                    yield from completion_events(result, backend.provider)
        except (openai.OpenAIError, json.JSONDecodeError) as exc:
            # from None: the SDK's exception chain can carry request headers (the key).
            raise map_error(exc, ctx, mid_stream=started and request.stream) from None


class OpenAIChat(_ChatCompletionsModel):
    """An OpenAI chat model: prefill emulated through the system message."""

    prefill_support = PrefillSupport.EMULATED
    needs_key = OPENAI_KEY
    Options = ChatOptions  # type: ignore[assignment]
    reasoning = False

    def __init__(self, model_id: str, api_model: str | None = None,
                 aliases: tuple[str, ...] = ()) -> None:
        self.model_id = model_id
        self.aliases = aliases
        self.backend = Backend(provider="OpenAI", api_model=api_model or model_id,
                               style="none", reasoning=self.reasoning,
                               key_hint=OPENAI_KEY_HINT)

    def prefill_note(self) -> str:
        return "the system message asks the model to start with the prefill"


class OpenAIReasoning(OpenAIChat):
    """An OpenAI reasoning model (gpt-5, o-series): developer message, reasoning options."""

    Options = ReasoningOptions  # type: ignore[assignment]
    reasoning = True

    def prefill_note(self) -> str:
        return "the developer message asks the model to start with the prefill"


class OpenAIUnsupported(OpenAIReasoning):
    """o1-mini and o1-preview: no system or developer message, so nowhere to ask for the
    prefill except by rewriting the user's own prompt, which we refuse to do silently."""

    prefill_support = PrefillSupport.UNSUPPORTED

    def prefill_note(self) -> str:
        return ("it takes no system or developer message, so the prefill cannot be requested "
                "without rewriting your prompt")


def openai_model(api_model: str, model_id: str | None = None) -> OpenAIChat:
    """The right class for an OpenAI model name; ``model_id`` is the name the user typed
    (``openai/gpt-4o``) when it differs."""
    model_id = model_id or api_model
    if api_model.startswith(UNSUPPORTED_MODELS):
        return OpenAIUnsupported(model_id, api_model)
    # gpt-5-chat-latest and the like are chat models despite the family name.
    if api_model.startswith(("o1", "o3", "o4", "gpt-5")) and "-chat" not in api_model:
        return OpenAIReasoning(model_id, api_model)
    return OpenAIChat(model_id, api_model)


class CompatibleModel(_ChatCompletionsModel):
    """A model on a user-configured OpenAI-compatible server."""

    Options = ChatOptions  # type: ignore[assignment]

    def __init__(
        self,
        model_id: str,
        *,
        model_name: str,
        base_url: str,
        prefill_style: PrefillStyle,
        echo_stream: EchoMode = "auto",
        echo_complete: EchoMode = "auto",
        key_name: str | None = None,
        key_env: str | None = None,
        aliases: tuple[str, ...] = (),
    ) -> None:
        self.model_id = model_id
        self.aliases = aliases
        self.prefill_style = prefill_style
        self.prefill_support = capability_for(prefill_style, echo_stream)
        hint = ""
        if key_name or key_env:
            name = key_name or model_id
            self.needs_key = KeySpec(name, key_env)
            hint = f"Set it with 'llmcli keys set {name}'"
            if key_env:
                hint += f" or the {key_env} variable"
        else:
            self.needs_key = None
            hint = ("no key is configured for this server; add one with 'llmcli "
                    "openai-servers add ID ... --key-name NAME --replace'")
        self.backend = Backend(
            provider=f"{model_id} ({base_url})",
            api_model=model_name,
            base_url=base_url,
            style=prefill_style,
            echo_stream=echo_stream,
            echo_complete=echo_complete,
            key_hint=hint,
        )

    def get_prefill_support(self, options: BaseOptions, stream: bool = True) -> PrefillSupport:
        return capability_for(self.prefill_style, self.backend.echo(stream))

    def prefill_note(self) -> str:
        notes = {
            "continue_final_message": "continue_final_message on a trailing assistant message",
            "prefix": "prefix=true on the final assistant message",
            "trailing_assistant": "the server continues a trailing assistant message",
            "none": "the system message asks the model to start with the prefill",
        }
        note = notes[self.prefill_style]
        if self.prefill_style == "none":
            return note
        backend = self.backend
        if backend.echo_stream == backend.echo_complete == "auto":
            return note + "; an echoed prefill is recognised reply by reply"
        if backend.echo_stream == backend.echo_complete:
            return f"{note}; the server {backend.echo_stream} it"
        return (f"{note}; the server {backend.echo_stream} it streaming, "
                f"{backend.echo_complete} it otherwise")
