"""The two wire formats as pydantic models, and their translation into one :class:`Chat`.

Each wire's request becomes the same neutral shape (system prompt, earlier turns, the user
prompt, the prefill, the sampling fields), so the rest of the server knows no dialect. The
prefill rules live here, in one place per wire:

* OpenAI: the final assistant message is the prefill, whether it is marked ``"prefix": true``
  (Mistral, DeepSeek), sent with ``continue_final_message: true`` and
  ``add_generation_prompt: false`` (vLLM; both true is a 400, as vLLM does), or simply last
  (llama.cpp since PR 13174). ``prefix`` has three states (standardcompletions): an explicit
  ``"prefix": false``, or ``add_generation_prompt: true`` sent without
  ``continue_final_message`` (what vLLM does with it), makes the final assistant message a
  finished turn, not a prefill (``"prefix": true`` wins over ``add_generation_prompt``).
* Anthropic: a trailing assistant message is the prefill (Anthropic's own semantics);
  thinking blocks a client sends back in earlier assistant turns are not part of the text.

Unknown request fields are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmcli.attachments import Attachment
from llmcli.errors import AttachmentError, ToolDefinitionError
from llmcli.record import Message, ToolCall, ToolResult
from llmcli.serve.errors import WireError
from llmcli.tools import Tool

__all__ = [
    "AnthropicRequest",
    "Chat",
    "OpenAIRequest",
    "WireOption",
    "anthropic_chat",
    "openai_chat",
    "parse",
]


#: Bounds on a request (a body is at most --max-body bytes besides): messages in one
#: request, stop sequences and their length, and the tokens a reply may be asked for.
MAX_MESSAGES = 4096
MAX_STOP = 16
MAX_STOP_LENGTH = 256
MAX_TOKENS_LIMIT = 262_144

Tokens = Annotated[int, Field(le=MAX_TOKENS_LIMIT)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Wire):
    """A content part: text, or (read by :func:`_content`) an image or a document."""

    type: str
    text: str | None = None
    #: OpenAI's ``image_url`` part: ``{"url": "data:..."}`` (or the URL alone).
    image_url: dict[str, Any] | str | None = None
    #: OpenAI's ``file`` part: ``{"file_data": "data:...", "filename": ...}``.
    file: dict[str, Any] | None = None
    #: Anthropic's ``image`` and ``document`` blocks: ``{"type": "base64", "media_type",
    #: "data"}``.
    source: dict[str, Any] | None = None
    #: Anthropic's ``tool_use`` block (``id``, ``name``, ``input``) and ``tool_result`` block
    #: (``tool_use_id``, ``content``: text or text blocks, ``is_error``).
    id: Any = None
    name: Any = None
    input: Any = None
    tool_use_id: Any = None
    content: Any = None
    is_error: Any = None


class OpenAIMessage(_Wire):
    role: str
    content: str | list[TextPart] | None = None
    #: Mistral's and DeepSeek's marker of a final assistant message to continue; three
    #: states: absent (None), true (a prefill), false (a finished turn).
    prefix: bool | None = None
    #: An assistant message's function calls; a ``role: tool`` message's call id.
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Wire):
    include_usage: bool = False


class OpenAIRequest(_Wire):
    """``POST /v1/chat/completions``: OpenAI's fields plus vLLM's prefill extensions."""

    model: str | None = None
    messages: list[OpenAIMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    #: {"type": "json_schema", "json_schema": {"schema": ...}}, "json_object" or "text".
    response_format: dict[str, Any] | None = None
    # vLLM's extensions.
    echo: bool = False
    continue_final_message: bool = False
    #: vLLM's default is true; None: not sent (which matters: see :func:`openai_chat`).
    add_generation_prompt: bool | None = None


class AnthropicMessage(_Wire):
    role: Literal["user", "assistant"]
    content: str | list[TextPart]


class AnthropicRequest(_Wire):
    """``POST /v1/messages``."""

    model: str | None = None
    messages: list[AnthropicMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: str | list[TextPart] | None = None
    max_tokens: Tokens | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    tools: list[Any] | None = None
    tool_choice: dict[str, Any] | None = None


@dataclass(frozen=True)
class WireOption:
    """A sampling field as the client named it, and the llmcli option names it may map to
    (the first one the model has wins: Mistral calls the seed ``random_seed``)."""

    wire_name: str
    candidates: tuple[str, ...]
    value: Any
    #: Drop it silently when the model has no such option (Anthropic's ``max_tokens`` is
    #: required by its API, so every client sends it).
    optional: bool = False


@dataclass
class Chat:
    """One request, whatever wire it came in on."""

    model: str | None
    system: str | None
    history: list[Message]
    prompt: str
    prefill: str
    options: list[WireOption] = field(default_factory=list)
    stream: bool = False
    #: The reply carries prefill + continuation (vLLM's ``echo``), not the continuation.
    echo: bool = False
    include_usage: bool = False
    #: The reply's JSON Schema (OpenAI's ``response_format``), or None.
    schema: dict[str, Any] | None = None
    #: Images and documents sent with the final user message (earlier turns carry theirs).
    attachments: tuple[Attachment, ...] = ()
    #: The client's tools (offered to the model, never run here), the choice, and the
    #: results the final user turn carries.
    tools: tuple[Tool, ...] = ()
    tool_choice: str = "auto"
    tool_results: tuple[ToolResult, ...] = ()


T = TypeVar("T", bound=BaseModel)


def parse(cls: type[T], body: bytes) -> T:
    """The request body as ``cls``; malformed JSON or a wrong field type is a 400 that names
    the field."""
    try:
        return cls.model_validate_json(body or b"")
    except ValidationError as exc:
        error = exc.errors()[0]
        if error["type"] == "json_invalid":
            raise WireError(400, f"The request body is not valid JSON: {error['msg']}") from None
        where = ".".join(str(p) for p in error["loc"])
        if error["type"] == "model_type" and not where:
            raise WireError(400, "The request body must be a JSON object") from None
        raise WireError(400, f"Invalid field {where!r}: {error['msg']}", param=where) from None


#: Content parts that are the model's reasoning, sent back by clients with earlier turns
#: (Anthropic's thinking blocks): not part of a turn's text.
REASONING_PARTS = ("thinking", "redacted_thinking")


def _text(content: str | list[TextPart] | None, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for i, part in enumerate(content):
        if part.type in REASONING_PARTS:
            continue
        if part.type != "text" or part.text is None:
            raise WireError(400, f"{where}.content[{i}]: only text content is supported "
                            f"(got {part.type!r})", param=f"{where}.content")
        texts.append(part.text)
    return "".join(texts)


# -- attachments: image (and PDF) parts, from the request's bytes only -------------------------
#
# llmcli serve never fetches a URL or reads a file because of a request: an image given by
# URL is refused with a 400 (even for a remote backend that could fetch it itself: the
# server logs what it sent by sha256, and a URL would be fetched outside its limits). Only
# base64 content (data: URLs, Anthropic's base64 sources) becomes an Attachment.

NO_URLS = ("llmcli serve does not fetch URLs: send the {what} inline as base64 (a data: URL "
           "on the OpenAI wire, a base64 source on the Anthropic wire)")


def _from_data_url(url: str, where: str, what: str) -> Attachment:
    if not url.startswith("data:"):
        raise WireError(400, f"{where}: {NO_URLS.format(what=what)}", param=where)
    header, sep, data = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        raise WireError(400, f"{where}: a data: URL with base64 content is expected "
                        "(data:image/png;base64,...)", param=where)
    return _decoded(data, header.removesuffix(";base64") or None, where)


def _decoded(data: Any, media_type: Any, where: str) -> Attachment:
    if not isinstance(data, str) or (media_type is not None and not isinstance(media_type, str)):
        raise WireError(400, f"{where}: the data must be base64 text", param=where)
    try:
        return Attachment.from_base64(data, media_type)
    except AttachmentError as exc:
        raise WireError(400, f"{where}: {exc}", code="invalid_attachment", param=where) from None


def _attachment(part: TextPart, where: str) -> Attachment | None:
    """The attachment in a content part (None for a part that is not one)."""
    if part.type == "image_url":  # OpenAI
        url = part.image_url.get("url") if isinstance(part.image_url, dict) else part.image_url
        if not isinstance(url, str):
            raise WireError(400, f"{where}.image_url.url is required", param=where)
        return _from_data_url(url, where, "image")
    if part.type == "file":  # OpenAI
        data = (part.file or {}).get("file_data")
        if not isinstance(data, str):
            raise WireError(400, f"{where}: a file part needs file_data (a data: URL); "
                            "uploaded file ids are not supported", param=where)
        return _from_data_url(data, where, "file")
    if part.type in ("image", "document"):  # Anthropic
        source = part.source or {}
        if source.get("type") != "base64":
            raise WireError(400, f"{where}: {NO_URLS.format(what=part.type)}", param=where)
        return _decoded(source.get("data"), source.get("media_type"), where)
    return None


def _content(content: str | list[TextPart] | None, where: str
             ) -> tuple[str, tuple[Attachment, ...]]:
    """A message's text and its attachments (images, PDFs) in order."""
    if content is None or isinstance(content, str):
        return content or "", ()
    texts: list[str] = []
    attachments: list[Attachment] = []
    for i, part in enumerate(content):
        if part.type in REASONING_PARTS:  # sent back with an earlier turn: not its text
            continue
        attachment = _attachment(part, f"{where}.content[{i}]")
        if attachment is not None:
            attachments.append(attachment)
        elif part.type == "text" and part.text is not None:
            texts.append(part.text)
        else:
            raise WireError(400, f"{where}.content[{i}]: only text, image and document "
                            f"content is supported (got {part.type!r})",
                            param=f"{where}.content")
    return "".join(texts), tuple(attachments)


Turn = tuple[str, str, tuple[Attachment, ...]]


def _turns(messages: list[Turn], what: str
           ) -> tuple[list[Message], str, tuple[Attachment, ...]]:
    """Earlier turns, the user prompt and its attachments, from (role, text, attachments)
    without the prefill. Only user turns may carry attachments."""
    if not messages or messages[-1][0] != "user":
        raise WireError(400, f"The {what} must end with a user message, or with an assistant "
                        "message (the prefill) right after one", param="messages")
    if not messages[-1][1].strip():
        # The command line's rule too: nothing to answer is an error, not a request.
        raise WireError(400, f"The {what}'s final user message is empty", param="messages")
    for role, _, attachments in messages:
        if attachments and role != "user":
            raise WireError(400, "Only user messages may carry images or documents",
                            param="messages")
    history = [Message("user" if role == "user" else "assistant", text, attachments)
               for role, text, attachments in messages[:-1]]
    return history, messages[-1][1], messages[-1][2]


def _options(*fields: tuple[str, tuple[str, ...], Any]) -> list[WireOption]:
    return [WireOption(name, names, value) for name, names, value in fields if value is not None]


def _openai_options(request: OpenAIRequest) -> list[WireOption]:
    """The OpenAI wire's sampling fields as options: ``max_completion_tokens`` (else the
    older ``max_tokens``), temperature, top_p, stop and seed."""
    max_tokens = request.max_completion_tokens
    max_name = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, max_name = request.max_tokens, "max_tokens"
    return _options(
        (max_name, MAX_TOKENS, max_tokens),
        ("temperature", ("temperature",), request.temperature),
        ("top_p", ("top_p",), request.top_p),
        ("stop", STOP, _stops([request.stop] if isinstance(request.stop, str)
                              else request.stop, "stop")),
        ("seed", SEED, request.seed),
    )


def _stops(stops: list[str] | None, name: str) -> list[str] | None:
    if stops is None:
        return None
    if len(stops) > MAX_STOP:
        raise WireError(400, f"{name}: at most {MAX_STOP} stop sequences (got {len(stops)})",
                        param=name)
    for stop in stops:
        if not stop or len(stop) > MAX_STOP_LENGTH:
            raise WireError(400, f"{name}: each stop sequence has 1 to {MAX_STOP_LENGTH} "
                            f"characters (got {len(stop)})", param=name)
    return stops


MAX_TOKENS = ("max_tokens",)
SEED = ("seed", "random_seed")
STOP = ("stop", "stop_sequences")


def openai_chat(request: OpenAIRequest) -> Chat:
    if request.continue_final_message and request.add_generation_prompt is not False:
        raise WireError(400, "Cannot set both continue_final_message and add_generation_prompt "
                        "to true", param="continue_final_message")
    if request.n not in (None, 1):
        raise WireError(400, "Only n=1 is supported", param="n")
    if request.tools or any(m.tool_calls or m.role == "tool" for m in request.messages):
        return _openai_tool_chat(request)
    system: list[str] = []
    turns: list[Turn] = []
    last = len(request.messages) - 1
    for i, message in enumerate(request.messages):
        where = f"messages[{i}]"
        if message.role in ("system", "developer"):
            system.append(_text(message.content, where))
        elif message.role in ("user", "assistant"):
            turns.append((message.role, *_content(message.content, where)))
        else:
            raise WireError(400, f"{where}.role: {message.role!r} messages are not supported "
                            "(use system, user or assistant)", param=f"{where}.role")
        if message.prefix and (i != last or message.role != "assistant"):
            raise WireError(400, f"{where}: only the final assistant message may have "
                            '"prefix": true', param=f"{where}.prefix")
    final = request.messages[-1]
    if request.continue_final_message and final.role != "assistant":
        raise WireError(400, "continue_final_message is set but the final message is not from "
                        "the assistant", param="continue_final_message")
    # A trailing assistant message is the prefill: marked with "prefix", flagged with
    # continue_final_message, or simply last (llama.cpp); all three mean the same here.
    # Unless the request says it is a finished turn: "prefix": false, or a generation
    # prompt asked for (add_generation_prompt true without continue_final_message).
    finished = final.prefix is False or (
        final.prefix is not True and request.add_generation_prompt is True
        and not request.continue_final_message)
    if final.role == "assistant" and finished:
        why = ('"prefix": false' if final.prefix is False
               else "add_generation_prompt true without continue_final_message")
        raise WireError(400, f"The final assistant message is a finished turn ({why}), not a "
                        "prefill, and llmcli answers a user message: end the conversation with "
                        "one, or send the assistant message as a prefill", param="messages")
    prefill = ""
    if turns and turns[-1][0] == "assistant" and final.role == "assistant":
        prefill = _prefill(turns.pop())
    history, prompt, attachments = _turns(turns, "conversation")
    return Chat(
        model=request.model,
        system="\n\n".join(system) if system else None,
        history=history,
        prompt=prompt,
        prefill=prefill,
        options=_openai_options(request),
        stream=request.stream,
        echo=request.echo,
        include_usage=bool(request.stream_options and request.stream_options.include_usage),
        schema=_response_format(request.response_format),
        attachments=attachments,
    )


def _prefill(turn: Turn) -> str:
    if turn[2]:
        raise WireError(400, "The prefill (the final assistant message) cannot carry images "
                        "or documents", param="messages")
    return turn[1]


def _response_format(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI's ``response_format`` as a JSON Schema: ``json_schema`` gives its schema,
    ``json_object`` any object; the model's schema support decides how it is honoured."""
    if value is None:
        return None
    kind = value.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise WireError(400, "response_format.json_schema.schema must be a JSON Schema "
                            "object", param="response_format")
        return schema
    raise WireError(400, f"response_format.type {kind!r} is not supported (use text, "
                    "json_object or json_schema)", param="response_format")


def anthropic_chat(request: AnthropicRequest) -> Chat:
    if request.tools or request.tool_choice or any(
            not isinstance(m.content, str) and any(b.type in TOOL_BLOCKS for b in m.content)
            for m in request.messages):
        return _anthropic_tool_chat(request)
    turns: list[Turn] = [(m.role, *_content(m.content, f"messages[{i}]"))
                         for i, m in enumerate(request.messages)]
    prefill = _prefill(turns.pop()) if turns[-1][0] == "assistant" else ""
    history, prompt, attachments = _turns(turns, "messages")
    system = None
    if request.system is not None:
        system = _text(request.system, "system") or None
    options = _anthropic_options(request)
    return Chat(model=request.model, system=system, history=history, prompt=prompt,
                prefill=prefill, options=options, stream=request.stream,
                attachments=attachments)


def _anthropic_options(request: AnthropicRequest) -> list[WireOption]:
    options = _options(
        ("temperature", ("temperature",), request.temperature),
        ("top_p", ("top_p",), request.top_p),
        ("top_k", ("top_k",), request.top_k),
        ("stop_sequences", STOP, _stops(request.stop_sequences, "stop_sequences")),
    )
    if request.max_tokens is not None:
        options.insert(0, WireOption("max_tokens", MAX_TOKENS, request.max_tokens, True))
    return options


# -- tools ------------------------------------------------------------------------------------


def _tool(name: Any, description: Any, parameters: Any, where: str) -> Tool:
    """A client's tool: offered to the model, never run by the server."""
    if not isinstance(parameters, dict):
        parameters = {"type": "object", "properties": {}}
    try:
        return Tool(str(name), str(description or ""), parameters)
    except ToolDefinitionError as exc:
        raise WireError(400, f"{where}: {exc}", param=where) from None


def _openai_tools(request: OpenAIRequest) -> tuple[tuple[Tool, ...], str]:
    tools = []
    for i, item in enumerate(request.tools or []):
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or item.get("type", "function") != "function":
            raise WireError(400, f"tools[{i}]: only function tools are supported",
                            param=f"tools[{i}]")
        tools.append(_tool(function.get("name"), function.get("description"),
                           function.get("parameters"), f"tools[{i}]"))
    choice = request.tool_choice
    if isinstance(choice, dict):
        choice = str((choice.get("function") or {}).get("name"))
    return tuple(tools), choice or "auto"


def _arguments(text: Any, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise WireError(400, f"{where}.function.arguments must be a JSON object's text",
                        param=where)
    return value


def _openai_tool_chat(request: OpenAIRequest) -> Chat:
    """A request with tools, or with earlier calls and results: the turns as Messages
    carrying them (``role: tool`` results join the user turn that follows)."""
    tools, choice = _openai_tools(request)
    system: list[str] = []
    turns: list[Message] = []
    results: list[ToolResult] = []
    names: dict[str, str] = {}
    for i, message in enumerate(request.messages):
        where = f"messages[{i}]"
        text = _text(message.content, where)
        if message.role in ("system", "developer"):
            system.append(text)
        elif message.role == "tool":
            call_id = message.tool_call_id or ""
            if call_id not in names:
                raise WireError(400, f"{where}: a 'tool' message must answer a tool call "
                                "(tool_call_id) of an earlier assistant message",
                                param=f"{where}.tool_call_id")
            results.append(ToolResult(call_id, names[call_id], text))
        elif message.role == "user":
            turns.append(Message("user", text, tool_results=tuple(results)))
            results = []
        elif message.role == "assistant":
            if results:
                turns.append(Message("user", "", tool_results=tuple(results)))
                results = []
            calls = []
            for j, call in enumerate(message.tool_calls or []):
                function = call.get("function") or {}
                calls.append(ToolCall(str(call.get("id")), str(function.get("name")),
                                      _arguments(function.get("arguments"),
                                                 f"{where}.tool_calls[{j}]")))
                names[str(call.get("id"))] = str(function.get("name"))
            turns.append(Message("assistant", text, tool_calls=tuple(calls)))
        else:
            raise WireError(400, f"{where}.role: {message.role!r} messages are not supported",
                            param=f"{where}.role")
    if results:
        turns.append(Message("user", "", tool_results=tuple(results)))
    prefill = ""
    if turns and turns[-1].role == "assistant" and not turns[-1].tool_calls:
        prefill = turns.pop().content
    if not turns or turns[-1].role != "user":
        raise WireError(400, "The conversation must end with a user or tool message, or with "
                        "an assistant message (the prefill) right after one", param="messages")
    final = turns.pop()
    if not final.content.strip() and not final.tool_results:
        raise WireError(400, "The conversation's final user message is empty",
                        param="messages")
    return Chat(
        model=request.model, system="\n\n".join(system) if system else None, history=turns,
        prompt=final.content, prefill=prefill,
        options=_openai_options(request),
        stream=request.stream, echo=request.echo,
        include_usage=bool(request.stream_options and request.stream_options.include_usage),
        tools=tools, tool_choice=choice, tool_results=final.tool_results,
    )


#: Anthropic's content blocks that carry tool calls and their results.
TOOL_BLOCKS = ("tool_use", "tool_result")

#: Anthropic's ``tool_choice`` types as llmcli's choices (``tool`` names one tool).
ANTHROPIC_CHOICE = {"auto": "auto", "any": "required", "none": "none"}


def _anthropic_tools(request: AnthropicRequest) -> tuple[tuple[Tool, ...], str]:
    tools = []
    for i, item in enumerate(request.tools or []):
        where = f"tools[{i}]"
        if not isinstance(item, dict) or item.get("type", "custom") != "custom":
            kind = item.get("type") if isinstance(item, dict) else None
            raise WireError(400, f"{where}: only custom tools (name, description, "
                            f"input_schema) are supported (got type {kind!r})", param=where)
        if not isinstance(item.get("name"), str) or not isinstance(item.get("input_schema"),
                                                                   dict):
            raise WireError(400, f"{where}: a tool needs a name and an input_schema object",
                            param=where)
        tools.append(_tool(item["name"], item.get("description"), item["input_schema"], where))
    choice = request.tool_choice or {"type": "auto"}
    kind = choice.get("type")
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise WireError(400, "tool_choice: type 'tool' needs the tool's name",
                            param="tool_choice")
        return tuple(tools), name
    if kind not in ANTHROPIC_CHOICE:
        raise WireError(400, f"tool_choice.type must be auto, any, tool or none (got {kind!r})",
                        param="tool_choice")
    return tuple(tools), ANTHROPIC_CHOICE[kind]


def _tool_result_text(block: TextPart, where: str) -> str:
    """A ``tool_result``'s content: a string, or text blocks (joined)."""
    content = block.content
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise WireError(400, f"{where}.content must be a string or a list of text blocks",
                        param=where)
    texts = []
    for item in content:
        if not isinstance(item, dict) or item.get("type") != "text" \
                or not isinstance(item.get("text"), str):
            raise WireError(400, f"{where}.content: only text blocks are supported in a "
                            "tool_result", param=where)
        texts.append(item["text"])
    return "".join(texts)


def _anthropic_tool_chat(request: AnthropicRequest) -> Chat:
    """A request with tools, or with earlier ``tool_use`` / ``tool_result`` blocks: each turn
    a Message carrying its calls (assistant) or its results (user)."""
    tools, choice = _anthropic_tools(request)
    turns: list[Message] = []
    names: dict[str, str] = {}
    for i, message in enumerate(request.messages):
        where = f"messages[{i}]"
        blocks = ([TextPart(type="text", text=message.content)]
                  if isinstance(message.content, str) else message.content)
        texts: list[str] = []
        attachments: list[Attachment] = []
        calls: list[ToolCall] = []
        results: list[ToolResult] = []
        for j, block in enumerate(blocks):
            at = f"{where}.content[{j}]"
            if block.type in REASONING_PARTS:  # sent back with a tool_use: not its text
                continue
            if block.type == "text" and isinstance(block.text, str):
                texts.append(block.text)
            elif block.type == "tool_use":
                if message.role != "assistant":
                    raise WireError(400, f"{at}: tool_use blocks belong in assistant messages",
                                    param=at)
                if not isinstance(block.id, str) or not block.id \
                        or not isinstance(block.name, str) or not block.name \
                        or not isinstance(block.input, dict):
                    raise WireError(400, f"{at}: a tool_use block needs an id, a name and an "
                                    "input object", param=at)
                calls.append(ToolCall(block.id, block.name, block.input))
                names[block.id] = block.name
            elif block.type == "tool_result":
                if message.role != "user":
                    raise WireError(400, f"{at}: tool_result blocks belong in user messages",
                                    param=at)
                call_id = block.tool_use_id
                if not isinstance(call_id, str) or call_id not in names:
                    raise WireError(400, f"{at}: tool_use_id {call_id!r} does not answer a "
                                    "tool_use block of an earlier assistant message", param=at)
                output = _tool_result_text(block, at)
                error = (output.splitlines() or ["the tool failed"])[0] \
                    if block.is_error is True else None
                results.append(ToolResult(call_id, names[call_id], output, error))
            elif (attachment := _attachment(block, at)) is not None:
                if message.role != "user":
                    raise WireError(400, "Only user messages may carry images or documents",
                                    param="messages")
                attachments.append(attachment)
            else:
                raise WireError(400, f"{at}: only text, image, document, tool_use and "
                                f"tool_result content is supported (got {block.type!r})",
                                param=at)
        turns.append(Message(message.role, "".join(texts), tuple(attachments),
                             tool_calls=tuple(calls), tool_results=tuple(results)))
    prefill = ""
    if turns[-1].role == "assistant":
        if turns[-1].tool_calls:
            raise WireError(400, "The final assistant message (the prefill) cannot hold "
                            "tool_use blocks: send their tool_result blocks in a user message",
                            param="messages")
        prefill = _prefill(("assistant", turns.pop().content, ()))
    if not turns or turns[-1].role != "user":
        raise WireError(400, "The messages must end with a user message, or with an "
                        "assistant message (the prefill) right after one", param="messages")
    final = turns.pop()
    if not final.content.strip() and not final.tool_results:
        raise WireError(400, "The messages' final user message is empty", param="messages")
    system = _text(request.system, "system") or None if request.system is not None else None
    return Chat(model=request.model, system=system, history=turns, prompt=final.content,
                prefill=prefill, options=_anthropic_options(request), stream=request.stream,
                attachments=final.attachments, tools=tools, tool_choice=choice,
                tool_results=final.tool_results)
