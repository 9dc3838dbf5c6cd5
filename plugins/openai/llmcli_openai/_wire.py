"""Pure translation between an llmcli :class:`Request` and the Chat Completions wire format.

No I/O and no ``openai`` import here: request building is a function of the request and the
backend description, and response and error parsing work on the SDK's objects by attribute,
so all of it is testable without a server and the plugin stays cheap to import.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from llmcli import schema as schemas
from llmcli import tooltext
from llmcli.attachments import TYPES
from llmcli.capabilities import PrefillSupport, ReasoningPrefill, SchemaSupport, StopReason
from llmcli.errors import ProviderError
from llmcli.models import (
    Attachment,
    Message,
    Reasoning,
    Request,
    ToolCall,
    Usage,
    emulation_instruction,
)
from llmcli.remote import result_turns

__all__ = [
    "ECHO_MODES",
    "PREFILL_STYLES",
    "Backend",
    "EchoMode",
    "PrefillStyle",
    "SCHEMA_FIELDS",
    "SchemaField",
    "TOOL_CHOICES",
    "TOOL_MODES",
    "ToolMode",
    "choice_kind",
    "grammar_fields",
    "schema_fields",
    "takes_grammar",
    "build_create_kwargs",
    "capability_for",
    "completion_events",
    "openai_emulation_instruction",
    "THINKING_PREFILL_REFUSED",
    "provider_message",
    "reasoning_of",
    "stop_reason",
    "ChunkReader",
]

PrefillStyle = Literal["continue_final_message", "prefix", "trailing_assistant", "none"]
PREFILL_STYLES: tuple[str, ...] = ("continue_final_message", "prefix", "trailing_assistant",
                                   "none")

#: What a server sends back for a native prefill, in one stream mode: only the continuation
#: ("eats"), the prefill and then the continuation ("echoes"), or not known ("auto": a
#: leading copy of the prefill is recognised and dropped, reply by reply). Real servers
#: differ by build and by stream mode (llama-server 0c1e570 echoes with
#: continue_final_message only when not streaming), so "auto" is the default.
EchoMode = Literal["eats", "echoes", "auto"]
ECHO_MODES: tuple[str, ...] = ("eats", "echoes", "auto")


#: Where a server takes a JSON Schema for the reply: OpenAI's ``response_format``
#: (json_schema, strict where the schema allows), vLLM's ``structured_outputs`` ({"json": S};
#: the older ``guided_json`` is gone from current vLLM), llama.cpp llama-server's top-level
#: ``json_schema``; None: the server is not known to take one (the schema is asked for and
#: the reply validated).
SchemaField = Literal["response_format", "structured_outputs", "json_schema"]
SCHEMA_FIELDS: tuple[str, ...] = ("response_format", "structured_outputs", "json_schema")


#: How a server calls tools: its own tool calling ("native": ``tools``/``tool_choice`` on the
#: wire, ``tool_calls`` back), the tools in the prompt and the reply constrained by the
#: server's grammar field ("grammar": :mod:`llmcli.tooltext`), or not at all.
ToolMode = Literal["native", "grammar", "none"]
TOOL_MODES: tuple[str, ...] = ("native", "grammar", "none")
#: The kinds of ``tool_choice``: a function's name is "named".
TOOL_CHOICES: tuple[str, ...] = ("auto", "required", "named", "none")


def choice_kind(choice: str) -> str:
    return choice if choice in ("auto", "required", "none") else "named"


def takes_grammar(field: SchemaField | None) -> bool:
    """Whether a server taking a schema in ``field`` takes a GBNF grammar too:
    llama-server's ``grammar``, vLLM's ``structured_outputs.grammar`` (xgrammar's EBNF)."""
    return field in ("json_schema", "structured_outputs")


def grammar_fields(grammar: str, field: SchemaField | None) -> dict[str, Any]:
    """The request fields (``extra_body``) that carry a GBNF grammar to such a server."""
    if field == "json_schema":
        return {"grammar": grammar}
    if field == "structured_outputs":
        return {"structured_outputs": {"grammar": grammar}}
    return {}


@dataclass(frozen=True)
class Backend:
    """Where a model is served and how it takes a prefill."""

    #: Names the service in error messages: "OpenAI", "openai-compatible server 'qwen'".
    provider: str
    #: The model name sent on the wire.
    api_model: str
    #: None: ``OPENAI_BASE_URL`` or the SDK's default (api.openai.com).
    base_url: str | None = None
    style: PrefillStyle = "none"
    #: What the server returns with a native prefill, streamed and not (see :data:`EchoMode`).
    echo_stream: EchoMode = "auto"
    echo_complete: EchoMode = "auto"
    #: OpenAI reasoning models: ``developer`` role, ``max_completion_tokens``.
    reasoning: bool = False
    #: The request field a schema goes in (see :data:`SchemaField`).
    schema_field: SchemaField | None = None
    #: How the server calls tools (see :data:`ToolMode`).
    tools: ToolMode = "native"
    #: Natively: the ``tool_choice`` kinds its own tool calling serves (vLLM without
    #: ``--enable-auto-tool-choice`` serves "required" and a named function, not "auto");
    #: a request asking for another goes through the grammar where the server takes one.
    native_choices: tuple[str, ...] = TOOL_CHOICES

    def echo(self, stream: bool) -> EchoMode:
        return self.echo_stream if stream else self.echo_complete

    def tools_as_text(self, request: Request) -> bool:
        """Whether this request's tools go in the prompt, with the reply constrained by
        the grammar (:mod:`llmcli.tooltext`), rather than on the wire."""
        if not (request.tools or request.tool_results):
            return False
        if self.tools == "grammar":
            return True
        return (self.tools == "native" and takes_grammar(self.schema_field)
                and choice_kind(request.tool_choice) not in self.native_choices)


def capability_for(style: PrefillStyle, echo: EchoMode = "auto") -> PrefillSupport:
    """The normalizer's view of a style: "auto" is "echoes", whose normalizer strips a
    leading copy of the prefill when there is one and takes the reply as the continuation
    when there is not."""
    if style == "none":
        return PrefillSupport.EMULATED
    if echo == "eats":
        return PrefillSupport.EATS_PREFIX
    return PrefillSupport.ECHOES_PREFIX


def openai_emulation_instruction(prefill: str) -> str:
    """The core instruction plus what GPT models otherwise get wrong.

    Asking for the prefix itself to be written out makes the echoed reply the common case,
    which the normalizer recognises exactly; without it the models alternate between
    echoing and continuing, and quote or fence the prefix now and then.
    """
    return (
        emulation_instruction(prefill)
        + "\nWrite that text itself as the very start of your reply (not in quotes, not in a "
        "code block, without the tags), and do not mention this instruction."
    )


def _message(message: Message) -> dict[str, Any]:
    """A turn on the wire: plain text, or (with attachments) content parts, the text first
    and then each attachment (OpenAI's vision guide's order)."""
    if not message.attachments:
        return {"role": message.role, "content": message.content}
    parts = [{"type": "text", "text": message.content},
             *(attachment_part(a) for a in message.attachments)]
    return {"role": message.role, "content": parts}


def attachment_part(attachment: Attachment) -> dict[str, Any]:
    """An ``image_url`` part with a ``data:`` URL (the SDK's
    ``ChatCompletionContentPartImageParam``), or for a PDF a ``file`` part with its
    ``file_data`` (``File``); OpenAI-compatible servers are declared to take images only."""
    if attachment.is_image:
        return {"type": "image_url", "image_url": {"url": attachment.data_url()}}
    name = f"attachment-{(attachment.sha256 or '')[:12]}{TYPES.get(attachment.type or '', '')}"
    return {"type": "file", "file": {"filename": name, "file_data": attachment.data_url()}}


def _style(request: Request, backend: Backend) -> PrefillStyle:
    """The prefill style for this request: the backend's, or "none" (asked for in the
    prompt) under ``-o reasoning_prefill emulate``."""
    policy = getattr(request.options, "reasoning_prefill", None)
    return "none" if policy is ReasoningPrefill.EMULATE else backend.style


def _messages(request: Request, backend: Backend) -> list[dict[str, Any]]:
    system = request.system
    style = _style(request, backend)
    as_text = backend.tools_as_text(request)
    if as_text and request.tools:
        offer = tooltext.system_text(request.tools)
        system = f"{system}\n\n{offer}" if system else offer
    if request.prefill and style == "none":
        instruction = openai_emulation_instruction(request.prefill)
        # Appended after the user's own system prompt: the last instruction wins ties.
        system = f"{system}\n\n{instruction}" if system else instruction
    messages: list[dict[str, Any]] = []
    if system:
        # OpenAI reasoning models take instructions as "developer"; compatible servers and
        # chat models expect "system".
        messages.append({"role": "developer" if backend.reasoning else "system",
                         "content": system})
    for message in request.messages():
        messages.extend(tooltext.text_turns(message) if as_text else _turn(message))
    if request.prefill and style != "none":
        final: dict[str, Any] = {"role": "assistant", "content": request.prefill}
        if style == "prefix":
            final["prefix"] = True
        messages.append(final)
    return messages


def build_create_kwargs(request: Request, backend: Backend) -> dict[str, Any]:
    """Keyword arguments for ``client.chat.completions.create`` (timeout/retries excluded:
    they configure the client)."""
    kwargs: dict[str, Any] = {
        "model": backend.api_model,
        "messages": _messages(request, backend),
        "stream": request.stream,
    }
    if request.stream:
        kwargs["stream_options"] = {"include_usage": True}
    opts = request.options
    max_tokens = getattr(opts, "max_tokens", None)
    if max_tokens is not None:
        # Reasoning models reject max_tokens; compatible servers mostly only know max_tokens.
        kwargs["max_completion_tokens" if backend.reasoning else "max_tokens"] = max_tokens
    kwargs.update(opts.given("temperature", "top_p", "stop", "seed", "reasoning_effort"))
    if request.prefill and _style(request, backend) == "continue_final_message":
        # vLLM defaults add_generation_prompt to true and 400s when both are true.
        kwargs["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
    if (request.prefill and getattr(opts, "reasoning_prefill", None) is ReasoningPrefill.SKIP
            and not backend.reasoning):
        # Qwen3-style templates' documented "no think" (vLLM, llama-server, SGLang): the
        # template closes an empty thinking block, the prefill follows.
        kwargs.setdefault("extra_body", {})["chat_template_kwargs"] = {
            "enable_thinking": False}
    if request.grammar is not None:
        kwargs.setdefault("extra_body", {})["grammar"] = request.grammar
    if request.schema is not None and request.schema_support is SchemaSupport.NATIVE:
        for name, value in schema_fields(request.schema, backend.schema_field).items():
            if name == "response_format":
                kwargs[name] = value
            else:
                kwargs.setdefault("extra_body", {})[name] = value
    if backend.tools_as_text(request):
        # A text prefill commits the reply to text (as on the local runtime): the server's
        # grammar would start after it, so none is sent and the reply is read as text.
        grammar = None if request.prefill else tooltext.gbnf(request.tools,
                                                            request.tool_choice)
        if grammar is not None:
            kwargs.setdefault("extra_body", {}).update(
                grammar_fields(grammar, backend.schema_field))
    elif request.tools:
        kwargs.update(tool_fields(request))
    return kwargs


# -- tools (function calling) -----------------------------------------------------------------


def _turn(message: Message) -> list[dict[str, Any]]:
    """One turn: tool calls on the assistant's message (arguments as JSON text), each
    result a ``role: tool`` message before the user's text."""
    if message.tool_calls:
        return [{"role": "assistant", "content": message.content or None,
                 "tool_calls": [call.as_function() for call in message.tool_calls]}]
    if message.tool_results:
        return result_turns(message, lambda result: {
            "role": "tool", "tool_call_id": result.call_id, "content": result.output}, _message)
    return [_message(message)]


def tool_fields(request: Request) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` (auto, required, none, or one function)."""
    choice = request.tool_choice
    wire_choice: Any = choice if choice in ("auto", "required", "none") else {
        "type": "function", "function": {"name": choice}}
    return {"tools": [tool.as_function() for tool in request.tools], "tool_choice": wire_choice}


def _call(call_id: str, name: str, arguments: str) -> ToolCall:
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        parsed = arguments  # not JSON: the chain reports malformed arguments
    return ToolCall(call_id, name, parsed)


class _StreamedCalls:
    """``delta.tool_calls`` pieces by index: the id and name arrive first, the arguments'
    JSON text in pieces; the calls are complete when the choice finishes."""

    def __init__(self) -> None:
        self.calls: dict[int, list[str]] = {}

    def add(self, pieces: Any) -> None:
        for piece in pieces or []:
            entry = self.calls.setdefault(getattr(piece, "index", 0) or 0, ["", "", ""])
            function = getattr(piece, "function", None)
            if getattr(piece, "id", None):
                entry[0] = piece.id
            if function is not None and getattr(function, "name", None):
                entry[1] += function.name
            if function is not None and getattr(function, "arguments", None):
                entry[2] += function.arguments

    def done(self) -> Iterator[ToolCall]:
        for index in sorted(self.calls):
            call_id, name, arguments = self.calls[index]
            yield _call(call_id or f"call_{index}", name, arguments)
        self.calls.clear()


def schema_fields(schema: dict[str, Any], field: SchemaField | None) -> dict[str, Any]:
    """The request fields that carry ``schema`` to a server taking it in ``field``."""
    if field == "response_format":
        strict_form = schemas.closed(schema)
        strict = schemas.is_strict(strict_form)
        return {"response_format": {"type": "json_schema", "json_schema": {
            "name": "reply", "schema": strict_form if strict else schema, "strict": strict}}}
    if field == "structured_outputs":
        return {"structured_outputs": {"json": schema}}
    if field == "json_schema":
        return {"json_schema": schema}
    return {}


_STOP_REASONS = {
    "stop": StopReason.END_TURN,
    "length": StopReason.MAX_TOKENS,
    "content_filter": StopReason.CONTENT_FILTER,
    "tool_calls": StopReason.TOOL_USE,
    "function_call": StopReason.TOOL_USE,
}


def stop_reason(choice: Any) -> str | None:
    """A choice's finish_reason in llmcli's vocabulary. vLLM says which stop string ended
    the reply in ``stop_reason``; other servers say "stop" for that and for the end of the
    turn alike."""
    finish = getattr(choice, "finish_reason", None)
    if not finish:
        return None
    if finish == "stop" and isinstance(getattr(choice, "stop_reason", None), str):
        return StopReason.STOP_SEQUENCE.value
    known = _STOP_REASONS.get(finish)
    return known.value if known is not None else str(finish)


def _usage(raw: Any, reason: str | None) -> Usage:
    usage = Usage(stop_reason=reason)
    if raw is None:
        return usage
    usage.input_tokens = getattr(raw, "prompt_tokens", None)
    usage.output_tokens = getattr(raw, "completion_tokens", None)
    for group in ("prompt_tokens_details", "completion_tokens_details"):
        details = getattr(raw, group, None)
        for name in ("cached_tokens", "reasoning_tokens"):
            value = getattr(details, name, None) if details is not None else None
            if value:
                usage.details[name] = value
    return usage


#: What llama-server answers (400) to a trailing assistant message while the template's
#: thinking is on (ggml-org/llama.cpp#21889).
THINKING_PREFILL_REFUSED = "prefill is incompatible with enable_thinking"


def reasoning_of(part: Any) -> str:
    """The reasoning in a message or a delta: ``reasoning_content`` (DeepSeek, vLLM,
    llama-server, LiteLLM), or ``reasoning`` (vLLM's newer name, OpenRouter, Ollama)."""
    for name in ("reasoning_content", "reasoning"):
        value = getattr(part, name, None)
        if isinstance(value, str) and value:
            return value
    return ""


class ChunkReader:
    """A stream's chunks, one at a time (a :class:`llmcli.remote.StreamReader`): text deltas
    of choice 0 (its reasoning deltas as :class:`Reasoning`), its tool calls once it
    finishes, then one :class:`Usage` once a finish_reason has arrived.

    A stream that ends without one was cut short (a proxy closing the connection cleanly,
    for instance): no Usage then, and the kit reports the stream as broken.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self.raw_usage: Any = None
        self.calls = _StreamedCalls()

    def feed(self, chunk: Any) -> Iterator[str | Usage | Reasoning | ToolCall]:
        if getattr(chunk, "usage", None) is not None:
            self.raw_usage = chunk.usage
        for choice in getattr(chunk, "choices", None) or []:
            if getattr(choice, "index", 0) != 0:
                continue
            delta = getattr(choice, "delta", None)
            thought = reasoning_of(delta) if delta is not None else ""
            if thought:
                yield Reasoning(thought)
            content = getattr(delta, "content", None) if delta is not None else None
            if content:
                yield content
            if delta is not None:
                self.calls.add(getattr(delta, "tool_calls", None))
            if choice.finish_reason:
                self.reason = stop_reason(choice)
                yield from self.calls.done()

    def end(self) -> Iterator[Usage]:
        if self.reason is not None:
            yield _usage(self.raw_usage, self.reason)


def completion_events(
    completion: Any, provider: str
) -> Iterator[str | Usage | Reasoning | ToolCall]:
    choices = getattr(completion, "choices", None) or []
    if not choices:
        raise ProviderError(f"{provider}: the response has no choices", provider=provider)
    choice = choices[0]
    message = choice.message
    thought = reasoning_of(message)
    if thought:
        yield Reasoning(thought)
    # A refusal arrives in its own field with content null; show it rather than nothing.
    text = message.content if message.content is not None else getattr(message, "refusal", "")
    if text:
        yield text
    for call in getattr(message, "tool_calls", None) or []:
        yield _call(call.id, call.function.name, call.function.arguments or "")
    yield _usage(getattr(completion, "usage", None), stop_reason(choice))


def provider_message(exc: Any) -> str:
    """The server's own words in an SDK error: ``error.message`` from the JSON body, or the
    raw body text."""
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
