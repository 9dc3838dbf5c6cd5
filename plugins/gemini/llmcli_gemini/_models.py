"""Gemini models: the table, their options and capability, and the model class on
:class:`llmcli.remote.RemoteModel` (the SDK calls; the translation is in :mod:`._wire`)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from pydantic import Field

from llmcli.attachments import TYPES
from llmcli.capabilities import PrefillSupport, SchemaSupport
from llmcli.errors import ProviderError
from llmcli.models import Chunk, KeySpec, Request, StrList
from llmcli.models import Options as BaseOptions
from llmcli.remote import BaseURLOption, Call, HTTPFault, RemoteModel, RemoteOptions, WireRequest

from . import _wire

__all__ = ["KNOWN_MODELS", "RETRY_TUNING", "GeminiModel", "GeminiOptions"]

#: Current models (Google's models page, Nov 2026), newest first, with their aliases.
KNOWN_MODELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gemini-3.6-flash", ("gemini-flash", "gemini-3.6-flash")),
    ("gemini-3.5-flash", ("gemini-3.5",)),
    ("gemini-3.5-flash-lite", ("gemini-flash-lite",)),
    ("gemini-3.1-pro-preview", ("gemini-pro", "gemini-3.1-pro")),
    ("gemini-3-flash-preview", ()),
)

#: The SDK's first retry waits this many seconds (its own default: 1.0); tests shrink it.
RETRY_TUNING: dict[str, float] = {"initial_delay": 1.0, "max_delay": 8.0}


class GeminiOptions(RemoteOptions, BaseURLOption):
    max_output_tokens: int | None = Field(
        default=None, ge=1, description="Most tokens to generate")
    temperature: float | None = Field(
        default=None, ge=0, le=2,
        description="Sampling temperature (Gemini 3.6+ reject sampling parameters)")
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus sampling")
    top_k: int | None = Field(default=None, ge=1, description="Top-k sampling")
    seed: int | None = Field(default=None, description="Seed for reproducible sampling")
    stop_sequences: StrList | None = Field(
        default=None, description="Stop at any of these (a string or a JSON list)")
    prefill_strict: bool = Field(
        default=False, description="Refuse a prefill rather than emulate it")


def prefill_support(model_id: str, options: GeminiOptions) -> PrefillSupport:
    if _wire.native_prefill(model_id):
        return PrefillSupport.EATS_PREFIX
    if options.prefill_strict:
        return PrefillSupport.UNSUPPORTED
    return PrefillSupport.EMULATED


class GeminiModel(RemoteModel):
    provider_name = "Gemini"
    provider_id = "gemini"
    base_url_env = "GOOGLE_GEMINI_BASE_URL"
    default_base_url = "https://generativelanguage.googleapis.com"
    end_marker = "finishReason"
    needs_key = KeySpec("gemini", "GEMINI_API_KEY")
    can_stream = True
    #: response_json_schema with response_mime_type application/json.
    schema_support = SchemaSupport.NATIVE
    Options = GeminiOptions
    #: Gemini models are multimodal: images and PDFs as ``inline_data`` parts.
    attachment_types = frozenset(TYPES)

    def __init__(self, model_id: str, aliases: tuple[str, ...] = ()) -> None:
        self.model_id = model_id
        self.aliases = aliases
        self.prefill_support = prefill_support(model_id, GeminiOptions())

    def get_prefill_support(self, options: BaseOptions, stream: bool = True) -> PrefillSupport:
        if not isinstance(options, GeminiOptions):
            options = GeminiOptions()
        return prefill_support(self.model_id, options)

    def prefill_note(self) -> str:
        if _wire.native_prefill(self.model_id):
            return "a trailing model turn is continued; the API returns only the rest"
        return ("Gemini 3.6+ and 3.5 Flash-Lite reject a trailing model turn; llmcli "
                "emulates it unless -o prefill_strict 1")

    def schema_refusal(self, options: BaseOptions, prefill: str) -> str | None:
        if prefill and self.get_prefill_support(options) is PrefillSupport.EATS_PREFIX:
            return ("Gemini's response schema constrains the reply from its first token, so "
                    "it cannot continue a native prefill; drop --prefill (the schema already "
                    "fixes how the reply starts), or use a model whose prefill is emulated")
        return None

    # -- the kit's hooks -------------------------------------------------------------------

    def import_sdk(self) -> Any:
        from google import genai

        return genai

    def build(self, request: Request) -> WireRequest:
        return _wire.build_request(request)

    def connect(self, call: Call) -> Any:
        types = call.sdk.types
        retry = types.HttpRetryOptions(attempts=call.max_retries + 1, **RETRY_TUNING)
        http = types.HttpOptions(
            base_url=call.base_url, retry_options=retry,
            timeout=int(call.timeout * 1000) if call.timeout else None)
        return call.sdk.Client(api_key=call.request.key, http_options=http)

    def send(self, client: Any, wire: WireRequest, call: Call) -> Any:
        if call.request.stream:
            # The SDK's stream is a generator: nothing is sent until it is read. Read the
            # first chunk here, so that a refused request (with the SDK's retries) fails as
            # a request, not as a stream that broke off.
            chunks = client.models.generate_content_stream(**wire.params)
            first = next(chunks, None)
            return itertools.chain([] if first is None else [first], chunks)
        return client.models.generate_content(**wire.params)

    def read_complete(self, reply: Any, call: Call) -> Iterator[Chunk]:
        return _wire.read_response(reply)

    def read_stream(self, stream: Any, call: Call) -> Iterator[Chunk]:
        return _wire.read_chunks(stream)

    def http_fault(self, exc: BaseException, call: Call) -> HTTPFault | ProviderError | None:
        if isinstance(exc, call.sdk.errors.APIError):
            fault = _wire.status_fault(exc.code, exc.details, fallback=str(exc.message or exc))
            if fault.status == 400 and "API key" in fault.message:
                # The Gemini API answers a bad key with 400 INVALID_ARGUMENT, not 401: say
                # how to set one all the same.
                return HTTPFault(400, f"{fault.message.rstrip('.')}. {self.key_hint()}",
                                 fault.kind)
            return fault
        return None

    def retried_status(self, status: int) -> bool:
        return status in (408, 429, 500, 502, 503, 504)
