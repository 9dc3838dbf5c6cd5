"""Mistral models: the table, their options, and the model class on
:class:`llmcli.remote.RemoteModel` (the SDK calls; the translation is in :mod:`._wire`)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

from pydantic import Field

from llmcli.attachments import IMAGE_TYPES
from llmcli.capabilities import PrefillSupport, SchemaSupport, ToolSupport
from llmcli.errors import ProviderError
from llmcli.models import Chunk, KeySpec, Request, StrList
from llmcli.models import Options as BaseOptions
from llmcli.remote import BaseURLOption, Call, HTTPFault, RemoteModel, RemoteOptions, WireRequest

from . import _wire

__all__ = ["KNOWN_MODELS", "RETRY_TUNING", "MistralModel", "MistralOptions"]

#: (model id, aliases). Every Mistral chat model takes ``prefix: true`` and echoes it.
KNOWN_MODELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mistral-large-latest", ("mistral-large",)),
    ("mistral-medium-latest", ("mistral-medium",)),
    ("mistral-small-latest", ("mistral-small",)),
    ("codestral-latest", ("codestral",)),
    ("open-mistral-nemo", ("mistral-nemo",)),
)

#: The models that see images (Mistral's vision page: Pixtral, Mistral Small 3.1 and later,
#: Medium 3, Large 3): ``image_url`` chunks with a data URL. Documents are not sent (the API
#: takes them by URL only).
VISION_MODELS = ("pixtral", "mistral-small-latest", "mistral-medium", "mistral-large-latest",
                 "mistral-small-25", "mistral-large-25")

#: Keyword arguments for :func:`._wire.retry_plan` (tests shrink the delays).
RETRY_TUNING: dict[str, int] = {}
#: The jitter that mistralai adds to each backoff delay when its ``BackoffStrategy`` takes no
#: ``jitter_ms`` (the releases before that argument): up to one second.
SDK_FIXED_JITTER_MS = 1000


class MistralOptions(RemoteOptions, BaseURLOption):
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


class _SDK:
    """The few SDK names this plugin uses, wherever this mistralai version keeps them."""

    def __init__(self) -> None:
        try:  # mistralai >= 2 moved everything under mistralai.client
            from mistralai.client import Mistral, errors
            from mistralai.client.utils import BackoffStrategy, RetryConfig
        except ImportError:  # mistralai 1.x (the oldest allowed: make test-oldest-sdks)
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

    @property
    def takes_jitter(self) -> bool:
        """Newer releases take ``jitter_ms``; older ones add up to a second of their own."""
        return "jitter_ms" in inspect.signature(self.BackoffStrategy).parameters

    def retry_config(self, max_retries: int) -> Any:
        tuning = dict(RETRY_TUNING)
        if not self.takes_jitter:
            # The window must cover the SDK's own jitter, or fewer retries fit in it.
            tuning["jitter_ms"] = SDK_FIXED_JITTER_MS
        plan = _wire.retry_plan(max_retries, **tuning)
        if plan is None:
            return self.RetryConfig("none", self.BackoffStrategy(0, 0, 1.0, 0), False)
        args: list[Any] = [plan.initial_interval, plan.max_interval, plan.exponent,
                           plan.max_elapsed_time]
        if self.takes_jitter:
            args.append(plan.jitter_ms)
        return self.RetryConfig("backoff", self.BackoffStrategy(*args),
                                retry_connection_errors=True)


class MistralModel(RemoteModel):
    provider_name = "Mistral"
    base_url_env = "MISTRAL_BASE_URL"
    default_base_url = "https://api.mistral.ai"
    #: mistralai bounds retries by elapsed time, so the count is not known.
    retries_counted = False
    needs_key = KeySpec("mistral", "MISTRAL_API_KEY")
    can_stream = True
    prefill_support = PrefillSupport.ECHOES_PREFIX
    Options = MistralOptions

    def __init__(self, model_id: str, aliases: tuple[str, ...] = ()) -> None:
        self.model_id = model_id
        self.aliases = aliases
        self.attachment_types = IMAGE_TYPES if model_id.startswith(VISION_MODELS) else frozenset()

    def prefill_note(self) -> str:
        return "prefix: true; the API echoes the prefill, llmcli keeps one copy"

    #: Function calling: ``tools``, ``tool_choice``, ``tool_calls`` (each call whole in one
    #: streamed delta), ``role: tool`` results; the prefill stays ``prefix: true``.
    tool_support = ToolSupport.NATIVE

    #: response_format json_schema (strict where the schema allows).
    schema_support = SchemaSupport.NATIVE

    def schema_refusal(self, options: BaseOptions, prefill: str) -> str | None:
        if prefill:
            # Not documented together, and a schema enforced from the first generated
            # token cannot also continue a JSON prefill: refuse rather than guess.
            return ("Mistral's response_format json_schema is not documented with prefix "
                    "(prefill); drop --prefill (the schema already fixes how the reply starts)")
        return None

    # -- the kit's hooks -------------------------------------------------------------------

    def import_sdk(self) -> _SDK:
        return _SDK()

    def build(self, request: Request) -> WireRequest:
        return _wire.build_request(request)

    def connect(self, call: Call) -> Any:
        sdk: _SDK = call.sdk
        return sdk.Mistral(
            api_key=call.request.key,
            server_url=call.base_url,
            retry_config=sdk.retry_config(call.max_retries),
            timeout_ms=int(call.timeout * 1000) if call.timeout else None,
        )

    def send(self, client: Any, wire: WireRequest, call: Call) -> Any:
        if call.request.stream:
            return client.chat.stream(**wire.params)
        return client.chat.complete(**wire.params)

    def read_complete(self, reply: Any, call: Call) -> Iterator[Chunk]:
        return _wire.read_completion(reply)

    def stream_reader(self, call: Call) -> _wire.EventReader:
        return _wire.EventReader()

    def connect_async(self, call: Call) -> Any:
        return self.connect(call)  # one client object holds both transports

    async def send_async(self, client: Any, wire: WireRequest, call: Call) -> Any:
        if call.request.stream:
            return await client.chat.stream_async(**wire.params)
        return await client.chat.complete_async(**wire.params)

    async def close_async(self, client: Any) -> None:
        http = getattr(getattr(client, "sdk_configuration", None), "async_client", None)
        close = getattr(http, "aclose", None)
        if callable(close):
            await close()

    def http_fault(self, exc: BaseException, call: Call) -> HTTPFault | ProviderError | None:
        if isinstance(exc, call.sdk.status_errors):
            fallback = str(getattr(exc, "message", "") or exc)
            return _wire.status_fault(getattr(exc, "status_code", None),
                                      getattr(exc, "body", None), fallback)
        return None

    def retried_status(self, status: int) -> bool:
        return status in _wire.RETRIED_STATUSES

    def close(self, client: Any) -> None:
        http = getattr(getattr(client, "sdk_configuration", None), "client", None)
        super().close(http)
