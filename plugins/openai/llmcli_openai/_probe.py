"""Find out what an OpenAI-compatible server does with a prefill, by asking it.

Servers disagree, and one server can disagree with itself between builds and between
streaming and not (llama-server 0c1e570 returns prefill + continuation for
``continue_final_message`` when not streaming, only the continuation when streaming). A probe
sends, per prefill style, two tiny deterministic requests (streamed and not, temperature 0,
``max_tokens`` 3) whose prefill has one obvious next word, and reads each reply:

* it starts with the prefill: **echoes**;
* it starts with the next word: **eats** (only the continuation came back);
* anything else: **ignores** (the server answered a new turn; the prefill did nothing);
* an HTTP error: **rejects** (the server refuses the form).

Styles are tried in order until one works in both modes; that one is chosen, or ``none``
(emulated) when none works.

Tools (:func:`probe_tools`): one tiny request (not streamed, temperature 0) with two tools per
``tool_choice`` kind: "required", the tool the question does not ask for by name (a server
that ignores the name calls the other, or answers in text), then "auto". Parsed ``tool_calls`` back
for "required" or the named tool: the server calls tools natively, for the kinds that did not
fail (vLLM without ``--enable-auto-tool-choice`` refuses "auto" with a 400 and serves the
other two by its own guided decoding; llama-server reads a named choice as "auto").
Refused or ignored (llama-server started with ``--no-jinja``: ``tools param requires --jinja
flag``): the grammar method where the server takes a grammar,
else none. Transport failures (no server, timeout, 401) are not verdicts:
they raise :class:`ProbeError` and nothing is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from llmcli.capabilities import PrefillSupport
from llmcli.errors import ProbeError
from llmcli.models import Request
from llmcli.tools import Tool

from ._models import ChatOptions
from ._servers import ModeOutcome, ProbeRecord, StyleProbe, ToolOutcome, ToolProbe
from ._wire import Backend, PrefillStyle, SchemaField, build_create_kwargs, takes_grammar

__all__ = ["PROBE_NEXT_WORD", "PROBE_PREFILL", "PROBE_PROMPT", "ProbeError", "STYLE_ORDER",
           "classify", "probe_server", "probe_tools"]

#: A request the model would never answer with this text on its own (so an echo is
#: unmistakable), and whose continuation is one obvious word (so a continuation is told
#: apart from a new turn).
PROBE_PROMPT = "Reply with the single word OK."
PROBE_PREFILL = "Monday, Tuesday, Wednesday, Thursday,"
PROBE_NEXT_WORD = "Friday"
PROBE_MAX_TOKENS = 3

#: Native styles, most explicit first: a server that honours ``continue_final_message`` says
#: so on the wire; ``trailing_assistant`` relies on the server's default.
STYLE_ORDER: tuple[PrefillStyle, ...] = ("continue_final_message", "trailing_assistant",
                                         "prefix")


def classify(text: str) -> ModeOutcome:
    """The verdict on one reply to the probe request."""
    if text.startswith(PROBE_PREFILL):
        return "echoes"
    # A few tokens may cut the word short ("Fri"), and a server may keep the space.
    start = text.lstrip()
    if start and (start.startswith(PROBE_NEXT_WORD) or PROBE_NEXT_WORD.startswith(start)):
        return "eats"
    return "ignores"


def _request(stream: bool) -> Request:
    options = ChatOptions.model_validate(
        {"max_tokens": PROBE_MAX_TOKENS, "temperature": 0, "seed": 0})
    return Request(model_id="probe", prompt=PROBE_PROMPT, system=None, history=[],
                   prefill=PROBE_PREFILL, prefill_support=PrefillSupport.EATS_PREFIX,
                   options=options, stream=stream)


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ask(client: Any, backend: Backend, stream: bool) -> str:
    kwargs = build_create_kwargs(_request(stream), backend)
    kwargs.pop("stream_options", None)  # not every server knows it; usage is not needed
    result = client.chat.completions.create(**kwargs)
    if not stream:
        choices = result.choices or []
        return (choices[0].message.content or "") if choices else ""
    parts = []
    for chunk in result:
        for choice in chunk.choices or []:
            content = getattr(choice.delta, "content", None)
            if content:
                parts.append(content)
    return "".join(parts)


def probe_style(client: Any, model_name: str, style: PrefillStyle) -> StyleProbe:
    """Both stream modes of one style."""
    import openai

    backend = Backend(provider="probe", api_model=model_name, base_url="-", style=style)
    outcomes: dict[str, ModeOutcome] = {}
    seen: list[str] = []
    for stream in (True, False):
        mode = "stream" if stream else "complete"
        try:
            text = _ask(client, backend, stream)
        except (openai.AuthenticationError, openai.PermissionDeniedError,
                openai.NotFoundError) as exc:
            # Not about the prefill: the key, or the model's name, is wrong.
            raise ProbeError(f"{exc.status_code} {_status_message(exc)}") from None
        except openai.APIStatusError as exc:
            outcomes[mode] = "rejects"
            seen.append(f"{mode}: {exc.status_code} {_short(_status_message(exc), 100)}")
            continue
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise ProbeError(f"cannot reach the server ({type(exc).__name__})") from None
        outcomes[mode] = classify(text)
        seen.append(f"{mode}: {_short(text)!r}")
    return StyleProbe(stream=outcomes["stream"], complete=outcomes["complete"],
                      seen="; ".join(seen))


def _status_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return str(message)
    return str(getattr(exc, "message", exc))


#: The tool probe's tools and its question: the question asks for the first, a named
#: ``tool_choice`` names the second, so a server that ignores the name (llama-server reads a
#: ``tool_choice`` that is not a string as "auto") is told from one that honours it.
PROBE_TOOLS = (
    Tool("get_weather", "Get the current weather in a city.", {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    Tool("get_time", "Get the current time in a city.", {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
)
PROBE_TOOL_PROMPT = "What is the weather in Paris? Use the get_weather tool."
PROBE_TOOL_MAX_TOKENS = 48


def _ask_tools(client: Any, model_name: str, choice: str) -> tuple[ToolOutcome, str]:
    import openai

    options = ChatOptions.model_validate(
        {"max_tokens": PROBE_TOOL_MAX_TOKENS, "temperature": 0, "seed": 0})
    request = Request(model_id="probe", prompt=PROBE_TOOL_PROMPT, system=None, history=[],
                      prefill="", prefill_support=PrefillSupport.EMULATED, options=options,
                      stream=False, tools=PROBE_TOOLS, tool_choice=choice)
    backend = Backend(provider="probe", api_model=model_name, base_url="-")
    try:
        reply = client.chat.completions.create(**build_create_kwargs(request, backend))
    except (openai.AuthenticationError, openai.PermissionDeniedError,
            openai.NotFoundError) as exc:
        raise ProbeError(f"{exc.status_code} {_status_message(exc)}") from None
    except openai.APIStatusError as exc:
        return "rejects", f"{exc.status_code} {_short(_status_message(exc), 100)}"
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        raise ProbeError(f"cannot reach the server ({type(exc).__name__})") from None
    choices = reply.choices or []
    message = choices[0].message if choices else None
    calls = (getattr(message, "tool_calls", None) or []) if message is not None else []
    if calls:
        call = calls[0].function
        seen = _short(f"{call.name}({call.arguments})")
        named = choice not in ("auto", "required", "none")
        return ("ignores" if named and call.name != choice else "calls"), seen
    return "text", repr(_short((message.content or "") if message is not None else ""))


def probe_tools(client: Any, model_name: str, schema_field: SchemaField | None) -> ToolProbe:
    """How the server calls tools (see the module's docstring)."""
    probe = ToolProbe(chosen="none")
    seen = []
    for kind, choice in (("required", "required"), ("named", PROBE_TOOLS[1].name),
                         ("auto", "auto")):
        outcome, text = _ask_tools(client, model_name, choice)
        probe.choices[kind] = outcome
        seen.append(f"{kind}: {text}")
    probe.seen = "; ".join(seen)
    if "calls" in (probe.choices["required"], probe.choices["named"]):
        probe.chosen = "native"
    elif takes_grammar(schema_field):
        probe.chosen = "grammar"
    return probe


def probe_server(base_url: str, model_name: str, key: str | None = None,
                 styles: Sequence[PrefillStyle] = STYLE_ORDER,
                 timeout: float = 60.0, *, tools: bool = False,
                 schema_field: SchemaField | None = None) -> ProbeRecord:
    """Try ``styles`` in order; stop at the first that works streamed and not. With
    ``tools``, probe tool calling too (:func:`probe_tools`)."""
    import openai

    record = ProbeRecord(at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), chosen="none")
    with openai.OpenAI(api_key=key or "no-key-needed", base_url=base_url, max_retries=1,
                       timeout=timeout) as client:
        # Like the model's own client: an OpenAI account's ids are not for other servers.
        client.organization = None
        client.project = None
        for style in styles:
            if style == "none":
                continue
            result = probe_style(client, model_name, style)
            record.styles[style] = result
            if result.works():
                record.chosen = style
                break
        if tools:
            record.tools = probe_tools(client, model_name, schema_field)
    return record
