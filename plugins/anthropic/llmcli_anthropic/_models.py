"""Claude models: the table, their options and capability, and the model class on
:class:`llmcli.remote.RemoteModel` (the SDK calls; the translation is in :mod:`._wire`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import Field, model_validator

from llmcli.attachments import TYPES
from llmcli.capabilities import PrefillSupport, ReasoningPrefill, SchemaSupport, ToolSupport
from llmcli.errors import ProviderError
from llmcli.models import Chunk, KeySpec, ReasoningPrefillOption, Request, StrList
from llmcli.models import Options as BaseOptions
from llmcli.remote import (
    BaseURLOption,
    Call,
    HTTPFault,
    RemoteModel,
    RemoteOptions,
    StreamReader,
    WireRequest,
)

from . import _wire

__all__ = ["KNOWN_MODELS", "ClaudeModel", "ClaudeOptions", "prefill_support"]

#: Current models (the anthropic SDK's own model list, Nov 2026), newest first, with their
#: aliases. Floating aliases (``opus``, ``sonnet``, ``haiku``) name the newest model of the
#: family, as Anthropic's do; the versioned aliases reach the 4.5 models, the last with native
#: prefill.
KNOWN_MODELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("claude-opus-5-5", ("opus", "opus-5.5", "claude-opus-5.5")),
    ("claude-sonnet-5-5", ("sonnet", "sonnet-5.5", "claude-sonnet-5.5")),
    ("claude-haiku-5-5", ("haiku", "haiku-5.5", "claude-haiku-5.5")),
    ("claude-opus-5", ("opus-5",)),
    ("claude-sonnet-5", ("sonnet-5",)),
    ("claude-opus-4-8", ("opus-4.8", "claude-opus-4.8")),
    ("claude-opus-4-7", ("opus-4.7", "claude-opus-4.7")),
    ("claude-sonnet-4-6", ("sonnet-4.6", "claude-sonnet-4.6")),
    ("claude-opus-4-6", ("opus-4.6", "claude-opus-4.6")),
    ("claude-opus-4-5", ("opus-4.5", "claude-opus-4.5")),
    ("claude-sonnet-4-5", ("sonnet-4.5", "claude-sonnet-4.5")),
    ("claude-haiku-4-5", ("haiku-4.5", "claude-haiku-4.5")),
)

DEFAULT_MAX_TOKENS = 4096
#: Anthropic's minimum thinking budget is 1024 tokens; 2048 leaves room under the default
#: max_tokens for the answer itself.
DEFAULT_THINKING_BUDGET = 2048
SAMPLING_PARAMETERS = ("temperature", "top_p", "top_k")


class ClaudeOptions(RemoteOptions, BaseURLOption, ReasoningPrefillOption):
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
    skip = options.reasoning_prefill is ReasoningPrefill.SKIP
    if _wire.native_prefill(model_id) and (skip or not options.thinking_on):
        return PrefillSupport.EATS_PREFIX
    if options.prefill_strict:
        return PrefillSupport.UNSUPPORTED
    return PrefillSupport.EMULATED


class ClaudeModel(RemoteModel):
    provider_name = "Anthropic"
    base_url_env = "ANTHROPIC_BASE_URL"
    default_base_url = "https://api.anthropic.com"
    status_phrases = {529: ("is overloaded", "Try again later.")}
    end_marker = "message_stop"
    needs_key = KeySpec("anthropic", "ANTHROPIC_API_KEY")
    can_stream = True
    Options = ClaudeOptions
    #: Every Claude model in the table sees images and reads PDFs (Anthropic's vision and
    #: PDF-support pages).
    attachment_types = frozenset(TYPES)
    #: ``tool_use`` / ``tool_result``, streamed as ``input_json_delta``; text (a prefill)
    #: may come before a call.
    tool_support = ToolSupport.NATIVE

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
        if _wire.native_prefill(self.model_id):
            return "emulated with -o thinking 1: the API forbids prefill with extended thinking"
        return "Claude 4.6+ reject assistant prefill; llmcli emulates it unless -o prefill_strict 1"

    def reasoning_prefills(self) -> dict[ReasoningPrefill, str]:
        # after: the API wants a thinking block, signed by Anthropic, at the start of a
        # final assistant message: a client cannot close the thinking itself.
        # skip: thinking off for a prefilled call (native prefill up to 4.5).
        skip = "native" if _wire.native_prefill(self.model_id) else "emulated"
        return {ReasoningPrefill.SKIP: skip, ReasoningPrefill.EMULATE: "emulated"}

    def get_schema_support(self, options: BaseOptions) -> SchemaSupport:
        if _wire.structured_outputs(self.model_id):
            return SchemaSupport.NATIVE
        return SchemaSupport.VALIDATED

    def schema_refusal(self, options: BaseOptions, prefill: str) -> str | None:
        if (prefill and self.get_schema_support(options) is SchemaSupport.NATIVE
                and self.get_prefill_support(options) is PrefillSupport.EATS_PREFIX):
            # JSON outputs constrain the reply from its first token, which follows a native
            # prefill: a JSON prefill and the schema cannot both hold.
            return ("Anthropic's structured outputs (output_config.format) constrain the "
                    "reply from its first token, so they cannot continue a native prefill; "
                    "drop --prefill, or use a Claude 4.6+ model (its prefill is emulated)")
        return None

    # -- the kit's hooks -------------------------------------------------------------------

    def import_sdk(self) -> Any:
        import anthropic

        return anthropic

    def build(self, request: Request) -> WireRequest:
        return _wire.build_request(request)

    #: The SDK's client class (its asynchronous twin is ``Async`` + this name).
    client_class = "Anthropic"

    def client_args(self, call: Call) -> dict[str, Any]:
        """The client's arguments, the same for the synchronous and asynchronous one."""
        args: dict[str, Any] = {"api_key": call.request.key, "base_url": call.base_url,
                                "max_retries": call.max_retries}
        if call.timeout is not None:
            args["timeout"] = call.sdk.Timeout(call.timeout, connect=call.connect_timeout)
        return args

    def connect(self, call: Call) -> Any:
        return getattr(call.sdk, self.client_class)(**self.client_args(call))

    def connect_async(self, call: Call) -> Any:
        return getattr(call.sdk, f"Async{self.client_class}")(**self.client_args(call))

    def send(self, client: Any, wire: WireRequest, call: Call) -> Any:
        if call.request.stream:
            return client.messages.create(**wire.params, stream=True)
        return client.messages.create(**wire.params)

    def read_complete(self, reply: Any, call: Call) -> Iterator[Chunk]:
        return _wire.read_message(reply)

    def stream_reader(self, call: Call) -> StreamReader:
        return _wire.EventReader()

    def http_fault(self, exc: BaseException, call: Call) -> HTTPFault | ProviderError | None:
        if isinstance(exc, call.sdk.APIStatusError):
            return _wire.status_fault(exc.status_code, exc.body, fallback=exc.message)
        return None
