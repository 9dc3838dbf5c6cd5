"""The Model classes: OpenAI's own models and models on OpenAI-compatible servers.

Both are :class:`llmcli.remote.RemoteModel`: the kit runs ``execute`` (client, request,
reply or stream, typed errors, close); the hooks here make the SDK calls, and the
translation is in :mod:`._wire`. The ``openai`` package is imported inside ``execute`` only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Literal

from pydantic import Field

from llmcli.attachments import IMAGE_TYPES, TYPES
from llmcli.capabilities import PrefillSupport, ReasoningPrefill, SchemaSupport, ToolSupport
from llmcli.errors import ProviderError
from llmcli.models import Chunk, KeySpec, ReasoningPrefillOption, Request
from llmcli.models import Options as BaseOptions
from llmcli.remote import Call, HTTPFault, RemoteModel, RemoteOptions, StreamReader, WireRequest
from llmcli.tooltext import ToolTextStream, read_reply

from ._wire import (
    THINKING_PREFILL_REFUSED,
    TOOL_CHOICES,
    Backend,
    ChunkReader,
    EchoMode,
    PrefillStyle,
    SchemaField,
    ToolMode,
    build_create_kwargs,
    capability_for,
    completion_events,
    provider_message,
)

__all__ = [
    "CHAT_MODELS",
    "OPENAI_KEY",
    "REASONING_MODELS",
    "UNSUPPORTED_MODELS",
    "ChatOptions",
    "CompatibleModel",
    "OpenAIChat",
    "OpenAIReasoning",
    "ReasoningOptions",
    "openai_model",
]

OPENAI_KEY = KeySpec("openai", "OPENAI_API_KEY")

CHAT_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano")
REASONING_MODELS = ("gpt-5", "gpt-5-mini", "gpt-5-nano", "o1", "o3", "o3-mini", "o4-mini")
#: Models without vision (OpenAI's model pages): attachments are refused before a request.
TEXT_ONLY_MODELS = ("o3-mini", "gpt-3.5")
#: Reasoning models that take no system or developer message (see ``prefill_note``).
UNSUPPORTED_MODELS = ("o1-mini", "o1-preview")


class ChatOptions(RemoteOptions, ReasoningPrefillOption):
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass")
    stop: str | list[str] | None = Field(None, description="Stop sequence(s)")
    seed: int | None = Field(None, description="Best-effort deterministic sampling")


class ReasoningOptions(RemoteOptions, ReasoningPrefillOption):
    # No temperature/top_p: OpenAI's reasoning models reject them; failing at -o time is
    # clearer than a 400 after the request.
    max_tokens: int | None = Field(
        None, ge=1, description="Most tokens to generate, reasoning included "
        "(sent as max_completion_tokens)")
    stop: str | list[str] | None = Field(None, description="Stop sequence(s)")
    seed: int | None = Field(None, description="Best-effort deterministic sampling")
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = Field(
        None, description="How much the model thinks before answering")


class _ChatCompletionsModel(RemoteModel):
    """Shared machinery; subclasses set ``backend`` (and ``provider_name``) in ``__init__``."""

    backend: Backend
    base_url_env = "OPENAI_BASE_URL"
    default_base_url = "https://api.openai.com/v1"

    def endpoint(self, request: Request) -> str:
        # A configured server has its own URL; OPENAI_BASE_URL is for OpenAI's models.
        return self.backend.base_url or super().endpoint(request)

    def import_sdk(self) -> Any:
        import openai  # lazy: listing models must not pay for the SDK

        return openai

    def build(self, request: Request) -> WireRequest:
        return WireRequest(build_create_kwargs(request, self.backend))

    def connect(self, call: Call) -> Any:
        return self._client(call.sdk.OpenAI, call)

    def connect_async(self, call: Call) -> Any:
        return self._client(call.sdk.AsyncOpenAI, call)

    def _client(self, kind: Any, call: Call) -> Any:
        args: dict[str, Any] = {
            # Keyless local servers still need some bearer value for the SDK to start.
            "api_key": call.request.key or "no-key-needed",
            "base_url": call.base_url,
            "max_retries": call.max_retries,
        }
        if call.timeout is not None:
            args["timeout"] = call.sdk.Timeout(call.timeout, connect=call.connect_timeout)
        client = kind(**args)
        if self.backend.base_url is not None:
            # The SDK picks up OPENAI_ORG_ID / OPENAI_PROJECT_ID from the environment;
            # those identify an OpenAI account and are not for third-party servers.
            client.organization = None
            client.project = None
        return client

    def send(self, client: Any, wire: WireRequest, call: Call) -> Any:
        return client.chat.completions.create(**wire.params)

    def read_complete(self, reply: Any, call: Call) -> Iterator[Chunk]:
        return completion_events(reply, self.provider_name)

    def stream_reader(self, call: Call) -> StreamReader:
        return ChunkReader()

    def http_fault(self, exc: BaseException, call: Call) -> HTTPFault | ProviderError | None:
        openai, name = call.sdk, self.provider_name
        if isinstance(exc, openai.APIStatusError):
            return HTTPFault(exc.status_code, provider_message(exc))
        if isinstance(exc, openai.APIConnectionError):
            return None  # a timeout or a lost connection: the kit words it
        if isinstance(exc, openai.APIResponseValidationError):
            return ProviderError(f"{name}: the server's response is not valid: "
                                 f"{provider_message(exc)}", provider=self.provider_id)
        if isinstance(exc, openai.APIError):
            # No status: an error event inside a stream that had started fine.
            return ProviderError(f"{name}: the server reported an error mid-stream: "
                                 f"{provider_message(exc)}", provider=self.provider_id)
        return None

    def not_found_hint(self, call: Call) -> str:
        return f"Check the model name {self.backend.api_model!r} and the base URL {call.base_url}"

    def get_schema_support(self, options: BaseOptions) -> SchemaSupport:
        return SchemaSupport.NATIVE if self.backend.schema_field else SchemaSupport.VALIDATED

    def schema_refusal(self, options: BaseOptions, prefill: str) -> str | None:
        if (prefill and self.backend.style != "none"
                and self.get_schema_support(options) is SchemaSupport.NATIVE):
            # The server's grammar starts at the first generated token, after the prefill:
            # a JSON prefill and a schema cannot both hold.
            return (f"this server enforces the schema ({self.backend.schema_field}) from the "
                    "first generated token, so it cannot continue a prefill; drop --prefill "
                    "(the schema already fixes how the reply starts)")
        return None


class OpenAIChat(_ChatCompletionsModel):
    """An OpenAI chat model: prefill emulated through the system message."""

    prefill_support = PrefillSupport.EMULATED
    needs_key = OPENAI_KEY
    #: Images (``image_url`` parts) and PDFs (``file`` parts); see :func:`openai_model` for
    #: the models without vision.
    attachment_types = frozenset(TYPES)
    Options = ChatOptions  # type: ignore[assignment]
    reasoning = False
    #: Function calling (``tools``, ``tool_calls`` streamed as deltas); the prefill stays
    #: emulated: the system message asks for it as the start of the reply's text.
    tool_support = ToolSupport.NATIVE

    provider_name = provider_id = "OpenAI"

    def __init__(self, model_id: str, api_model: str | None = None,
                 aliases: tuple[str, ...] = ()) -> None:
        self.model_id = model_id
        self.aliases = aliases
        self.backend = Backend(provider=self.provider_name, api_model=api_model or model_id,
                               style="none", reasoning=self.reasoning,
                               schema_field="response_format")

    def prefill_note(self) -> str:
        return "the system message asks the model to start with the prefill"


class OpenAIReasoning(OpenAIChat):
    """An OpenAI reasoning model (gpt-5, o-series): developer message, reasoning options."""

    Options = ReasoningOptions  # type: ignore[assignment]
    reasoning = True

    def prefill_note(self) -> str:
        return "the developer message asks the model to start with the prefill"

    def reasoning_prefills(self) -> dict[ReasoningPrefill, str]:
        # Chat Completions returns no reasoning text for OpenAI's models (the reasoning
        # summaries are in the Responses API, which this plugin does not call), and takes
        # no prefill: it can only be asked for.
        return {ReasoningPrefill.EMULATE: "emulated"}


class OpenAIUnsupported(OpenAIReasoning):
    """o1-mini and o1-preview: no system or developer message, so nowhere to ask for the
    prefill except by rewriting the user's own prompt, which we refuse to do silently."""

    prefill_support = PrefillSupport.UNSUPPORTED
    attachment_types: frozenset[str] = frozenset()  # no vision

    def prefill_note(self) -> str:
        return ("it takes no system or developer message, so the prefill cannot be requested "
                "without rewriting your prompt")

    #: o1-mini and o1-preview have no function calling.
    tool_support = ToolSupport.NONE

    def get_schema_support(self, options: BaseOptions) -> SchemaSupport:
        # No structured outputs, and no system message to ask for the schema in.
        return SchemaSupport.UNSUPPORTED


def _short(message: str) -> str:
    return message if len(message) <= 120 else message[:117] + "..."


def openai_model(api_model: str, model_id: str | None = None) -> OpenAIChat:
    """The right class for an OpenAI model name; ``model_id`` is the name the user typed
    (``openai/gpt-4o``) when it differs."""
    model_id = model_id or api_model
    if api_model.startswith(UNSUPPORTED_MODELS):
        return OpenAIUnsupported(model_id, api_model)
    # gpt-5-chat-latest and the like are chat models despite the family name.
    model: OpenAIChat
    if api_model.startswith(("o1", "o3", "o4", "gpt-5")) and "-chat" not in api_model:
        model = OpenAIReasoning(model_id, api_model)
    else:
        model = OpenAIChat(model_id, api_model)
    if api_model.startswith(TEXT_ONLY_MODELS):
        model.attachment_types = frozenset()
    return model


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
        schema_field: SchemaField | None = None,
        images: bool = False,
        tools: ToolMode = "none",
        native_choices: tuple[str, ...] | None = None,
    ) -> None:
        self.model_id = model_id
        # The server takes image_url parts (a vision model behind it): the user says so
        # with 'openai-servers add --images'.
        self.attachment_types = IMAGE_TYPES if images else frozenset()
        self.aliases = aliases
        self.prefill_style = prefill_style
        self.prefill_support = capability_for(prefill_style, echo_stream)
        self.needs_key = KeySpec(key_name or model_id, key_env) if key_name or key_env else None
        self.provider_name = self.provider_id = f"{model_id} ({base_url})"
        self.backend = Backend(
            provider=self.provider_name,
            api_model=model_name,
            base_url=base_url,
            style=prefill_style,
            echo_stream=echo_stream,
            echo_complete=echo_complete,
            schema_field=schema_field,
            tools=tools,
            native_choices=TOOL_CHOICES if native_choices is None else native_choices,
        )
        #: Declared (``openai-servers add --tools``) or probed: see :data:`ToolMode`.
        self.tool_support = ToolSupport(tools)
        # llama.cpp's server (schema in "json_schema") takes a GBNF grammar in "grammar".
        self.grammar_support = schema_field == "json_schema"

    def read_complete(self, reply: Any, call: Call) -> Iterator[Chunk]:
        events = super().read_complete(reply, call)
        if self.backend.tools_as_text(call.request):
            return read_reply(events, call.request.prefill)
        return events

    def stream_reader(self, call: Call) -> StreamReader:
        # The reader both templates feed (execute and execute_async), so that a streamed
        # reply through the grammar method is read back as a call on either.
        reader = super().stream_reader(call)
        if self.backend.tools_as_text(call.request):
            return ToolTextStream(reader, call.request.prefill)
        return reader

    def key_hint(self) -> str:
        if self.needs_key is None:
            return ("no key is configured for this server; add one with 'llmcli "
                    "openai-servers add ID ... --key-name NAME --replace'.")
        return super().key_hint()

    def get_prefill_support(self, options: BaseOptions, stream: bool = True) -> PrefillSupport:
        if getattr(options, "reasoning_prefill", None) is ReasoningPrefill.EMULATE:
            return PrefillSupport.EMULATED
        return capability_for(self.prefill_style, self.backend.echo(stream))

    def reasoning_prefills(self) -> dict[ReasoningPrefill, str]:
        # skip: chat_template_kwargs {"enable_thinking": false}, the prefill in the server's
        # style. after: a server thinks inside the assistant turn its template opens, so a
        # client cannot put the prefill after thinking it has not seen yet.
        skip = "emulated" if self.prefill_style == "none" else "native"
        return {ReasoningPrefill.SKIP: skip, ReasoningPrefill.EMULATE: "emulated"}

    def fallback(self, fault: HTTPFault, request: Request) -> tuple[Request, str] | None:
        # llama-server refuses a prefill while the template thinks: the same request with
        # the thinking closed (skip) is one it takes. Once: the retried request is skip.
        policy = getattr(request.options, "reasoning_prefill", None)
        if (fault.status != 400 or THINKING_PREFILL_REFUSED not in fault.message
                or not request.prefill or policy is not None):
            return None
        options = request.options.model_copy(update={"reasoning_prefill": ReasoningPrefill.SKIP})
        note = ("reasoning_prefill skip: the server refused a prefill with thinking on "
                f"({_short(fault.message)})")
        return replace(request, options=options), note

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
