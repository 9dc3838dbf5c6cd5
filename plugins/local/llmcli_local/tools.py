"""Tools on local models: the prompt that offers them, the grammar that makes every call
valid, and the reply read back as text or a call.

A model whose chat template has a tools section is given the tools through it (``tools=``,
the OpenAI function shape transformers' templates take) and its earlier calls and results as
the template expects them (``tool_calls`` on the assistant turn, ``role: tool`` turns). A
model without one (SmolLM2) gets them in the system prompt, in the same Hermes format most
tool-trained templates use. Either way the reply is constrained by one grammar: **text, or
``<tool_call>{"name": N, "arguments": A}</tool_call>`` where N is one of the tools and A
matches that tool's JSON Schema** (llguidance's Lark with a ``%json`` rule per tool), so
even a 135M model's calls always parse and validate.

The grammar is built here and handed to the decode loop as any ``--schema`` grammar is
(:class:`~llmcli_local.config.Grammar`); :func:`read_reply` turns the generated text back
into :class:`~llmcli.record.ToolCall` events.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from llmcli.models import Chunk, Message, Request, Tool, ToolCall, Usage
from llmcli.schema import closed
from llmcli_local.config import Grammar

__all__ = ["OPEN", "CLOSE", "grammar", "messages", "read_reply", "system_text"]

OPEN, CLOSE = "<tool_call>", "</tool_call>"

#: JSON as models write it inline (what ``--schema`` uses too): the keys, colons and commas
#: are forced, and no run of free whitespace can fill the token budget.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _lark_string(text: str) -> str:
    return json.dumps(text)


def grammar(tools: Sequence[Tool], choice: str = "auto") -> Grammar | None:
    """Text (not starting with ``<``), or one call of one of ``tools`` with arguments that
    match its schema; ``choice`` "required" leaves only the calls, a tool's name only its
    call, "none" no constraint (None)."""
    import llguidance

    if choice == "none":
        return None
    if choice not in ("auto", "required"):
        tools = [tool for tool in tools if tool.name == choice]
    rules = ["start: TEXT | call", r"TEXT: /[^<](.|\n)*/"] if choice == "auto" else [
        "start: call"]
    rules += [
             f"call: {_lark_string(OPEN)} ({' | '.join(f't{i}' for i in range(len(tools)))})"
             f" {_lark_string(CLOSE)}"]
    for i, tool in enumerate(tools):
        head = '{"name": ' + json.dumps(tool.name) + ', "arguments": '
        schema = {**closed(dict(tool.parameters)), "x-guidance": _JSON_OPTIONS}
        rules.append(f"t{i}: {_lark_string(head)} a{i} \"}}\"")
        rules.append(f"a{i}: %json {json.dumps(schema)}")
    lark = "\n".join(rules) + "\n"
    return Grammar(text=str(llguidance.LLMatcher.grammar_from_lark(lark)))


def system_text(tools: Sequence[Tool]) -> str:
    """The tools offered in the system prompt (a template without a tools section)."""
    listed = "\n".join(json.dumps(t.to_dict(), ensure_ascii=False) for t in tools)
    return (
        "You can call the following tools. To call one, reply with only\n"
        f'{OPEN}{{"name": <tool name>, "arguments": <JSON object>}}{CLOSE}\n'
        "and nothing else; the result will be given to you. When no tool is needed, or "
        "once you have the results, answer in plain text.\n"
        f"<tools>\n{listed}\n</tools>"
    )


def _call_text(call: ToolCall) -> str:
    return OPEN + json.dumps({"name": call.name, "arguments": call.arguments},
                             ensure_ascii=False) + CLOSE


def messages(request: Request, template: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The chat messages and template arguments for a request with tools: through the
    template's tools section where it has one, else in the system prompt and as text."""
    native = "tools" in template and "tool_calls" in template
    out: list[dict[str, Any]] = []
    system = request.system or ""
    if not native:
        system = f"{system}\n\n{system_text(request.tools)}".strip()
    if system:
        out.append({"role": "system", "content": system})
    for message in request.messages():
        out.extend(_turn(message, native))
    kwargs: dict[str, Any] = {"tools": [t.as_function() for t in request.tools]} if native else {}
    return out, kwargs


def _turn(message: Message, native: bool) -> list[dict[str, Any]]:
    if message.role == "assistant" and message.tool_calls:
        if native:
            return [{"role": "assistant", "content": message.content, "tool_calls": [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}}
                for c in message.tool_calls]}]
        calls = "\n".join(_call_text(c) for c in message.tool_calls)
        return [{"role": "assistant", "content": f"{message.content}{calls}"}]
    if message.role == "user" and message.tool_results:
        if native:
            turns: list[dict[str, Any]] = [
                {"role": "tool", "tool_call_id": r.call_id, "name": r.name, "content": r.output}
                for r in message.tool_results]
            return turns + ([{"role": "user", "content": message.content}]
                            if message.content else [])
        results = "\n".join(
            "<tool_response>" + json.dumps({"name": r.name, "output": r.output},
                                           ensure_ascii=False) + "</tool_response>"
            for r in message.tool_results)
        return [{"role": "user", "content": f"{results}\n{message.content}".strip()}]
    return [{"role": message.role, "content": message.content}]


def _parse(text: str) -> ToolCall | None:
    body = text.strip()
    if not (body.startswith(OPEN) and body.endswith(CLOSE)):
        return None
    try:
        data = json.loads(body[len(OPEN):-len(CLOSE)])
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("arguments"), dict):
        return None
    return ToolCall(f"call_{uuid.uuid4().hex[:24]}", str(data.get("name")), data["arguments"])


def read_reply(events: Iterable[Chunk], prefill: str) -> Iterator[Chunk]:
    """The decode loop's events with a reply that is a tool call turned into a
    :class:`~llmcli.record.ToolCall` (text streams as it comes once it cannot be one; a
    call cut short by the token limit stays text)."""
    seen = prefill
    held: list[str] = []
    holding = True
    for event in events:
        if not isinstance(event, str):
            if isinstance(event, Usage) and holding and held:
                call = _parse("".join([prefill, *held]))
                if call is not None:
                    held = []
                    yield call
                    event.stop_reason = "tool_use"
                else:
                    yield "".join(held)
                    held = []
            yield event
            continue
        if not holding:
            yield event
            continue
        seen += event
        held.append(event)
        if not (OPEN.startswith(seen) or seen.startswith(OPEN)):
            holding = False
            yield "".join(held)
            held = []
    if held:
        call = _parse("".join([prefill, *held]))
        yield call if call is not None else "".join(held)
