"""Tools as text, for a backend that has no tool calling of its own: the local runtime on a
chat template without a tools section, and an OpenAI-compatible server without a tool
parser (llama-server without ``--jinja``, vLLM without ``--enable-auto-tool-choice``).

The tools are offered in the system prompt in the Hermes format most tool-trained templates
use, earlier calls and results go back as text, and the reply is constrained by a grammar:
**text, or ``<tool_call>{"name": N, "arguments": A}</tool_call>`` where N is one of the
tools and A matches that tool's JSON Schema**. :func:`read_reply` turns the reply back into
:class:`~llmcli.record.ToolCall` events.

The grammar is written here in two notations: :func:`lark` (llguidance's Lark, a ``%json``
rule per tool; the local runtime compiles it) and :func:`gbnf` (llama.cpp's GBNF, which
llama-server takes in ``grammar`` and vLLM in ``structured_outputs.grammar``, its xgrammar
EBNF). GBNF has no JSON Schema rule, so :func:`gbnf_schema` writes the schema's structure
(types, properties, required, enums, items, anyOf, local ``$ref``); the keywords it leaves
out (``pattern``, ``minimum``, lengths) are checked when the call runs
(:func:`llmcli.tools.run_call`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from llmcli.record import Message, ToolCall
from llmcli.request import Chunk, Usage
from llmcli.schema import closed
from llmcli.tools import Tool

__all__ = ["CLOSE", "OPEN", "ReplyReader", "ToolTextStream", "call_text", "gbnf",
           "gbnf_schema", "lark", "parse_call", "read_reply", "system_text", "text_turns"]

OPEN, CLOSE = "<tool_call>", "</tool_call>"

#: JSON as models write it inline (what ``--schema`` uses too): the keys, colons and commas
#: are forced, and no run of free whitespace can fill the token budget.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def system_text(tools: Sequence[Tool]) -> str:
    """The tools offered in the system prompt."""
    listed = "\n".join(json.dumps(t.to_dict(), ensure_ascii=False) for t in tools)
    return (
        "You can call the following tools. To call one, reply with only\n"
        f'{OPEN}{{"name": <tool name>, "arguments": <JSON object>}}{CLOSE}\n'
        "and nothing else; the result will be given to you. When no tool is needed, or "
        "once you have the results, answer in plain text.\n"
        f"<tools>\n{listed}\n</tools>"
    )


def call_text(call: ToolCall) -> str:
    return OPEN + json.dumps({"name": call.name, "arguments": call.arguments},
                             ensure_ascii=False) + CLOSE


def text_turns(message: Message) -> list[dict[str, Any]]:
    """One turn as plain chat messages: an assistant's calls as ``<tool_call>`` text, the
    results as ``<tool_response>`` text in the user's turn."""
    if message.role == "assistant" and message.tool_calls:
        calls = "\n".join(call_text(c) for c in message.tool_calls)
        return [{"role": "assistant", "content": f"{message.content}{calls}"}]
    if message.role == "user" and message.tool_results:
        results = "\n".join(
            "<tool_response>" + json.dumps({"name": r.name, "output": r.output},
                                           ensure_ascii=False) + "</tool_response>"
            for r in message.tool_results)
        return [{"role": "user", "content": f"{results}\n{message.content}".strip()}]
    return [{"role": message.role, "content": message.content}]


def _choose(tools: Sequence[Tool], choice: str) -> Sequence[Tool]:
    return tools if choice in ("auto", "required") else [t for t in tools if t.name == choice]


def lark(tools: Sequence[Tool], choice: str = "auto") -> str | None:
    """The grammar in llguidance's Lark: text (not starting with ``<``), or one call of one
    of ``tools`` with arguments that match its schema; ``choice`` "required" leaves only the
    calls, a tool's name only its call, "none" no constraint (None)."""
    if choice == "none":
        return None
    chosen = _choose(tools, choice)
    rules = ["start: TEXT | call", r"TEXT: /[^<](.|\n)*/"] if choice == "auto" else [
        "start: call"]
    rules.append(f"call: {json.dumps(OPEN)} "
                 f"({' | '.join(f't{i}' for i in range(len(chosen)))}) {json.dumps(CLOSE)}")
    for i, tool in enumerate(chosen):
        head = '{"name": ' + json.dumps(tool.name) + ', "arguments": '
        schema = {**closed(dict(tool.parameters)), "x-guidance": _JSON_OPTIONS}
        rules.append(f"t{i}: {json.dumps(head)} a{i} \"}}\"")
        rules.append(f"a{i}: %json {json.dumps(schema)}")
    return "\n".join(rules) + "\n"


# -- GBNF ---------------------------------------------------------------------------------------


def _literal(text: str) -> str:
    """A GBNF string literal."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


_PRIMITIVES = {
    "char": r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "string": r'"\"" char* "\""',
    "integer": r'"-"? ("0" | [1-9] [0-9]{0,15})',
    "number": r'"-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?',
    "boolean": '"true" | "false"',
    "null": '"null"',
    "value": "object | array | string | number | boolean | null",
    "object": r'"{" ( string ": " value ( ", " string ": " value )* )? "}"',
    "array": r'"[" ( value ( ", " value )* )? "]"',
}

#: The primitives each one refers to.
_USES = {"string": ("char",), "object": ("string", "value"), "array": ("value",),
         "value": ("object", "array", "string", "number", "boolean", "null")}


class _Rules:
    """GBNF rules written for one grammar; the primitives are added as they are used."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.rules: dict[str, str] = {}
        self.refs: dict[str, str] = {}

    def primitive(self, name: str) -> str:
        if name not in self.rules:
            self.rules[name] = _PRIMITIVES[name]
            for used in _USES.get(name, ()):
                self.primitive(used)
        return name

    def add(self, name: str, body: str) -> str:
        self.rules[name] = body
        return name

    def ref(self, pointer: str, name: str) -> str:
        if pointer in self.refs:
            return self.refs[pointer]
        target: Any = self.root
        for part in pointer.removeprefix("#").strip("/").split("/") if pointer != "#" else []:
            target = target[part.replace("~1", "/").replace("~0", "~")]
        rule = f"{name}-ref{len(self.refs)}"
        self.refs[pointer] = rule
        self.rules[rule] = ""  # reserved: a recursive schema refers back to it
        self.rules[rule] = self.schema(target, rule)
        return rule

    def schema(self, schema: Any, name: str) -> str:
        """The body of a rule matching ``schema``, written inline (``name``: the prefix of
        any rule it needs)."""
        if schema is True or not isinstance(schema, dict) or not schema:
            return self.primitive("value")
        if "$ref" in schema and isinstance(schema["$ref"], str):
            return self.ref(schema["$ref"], name)
        if "const" in schema:
            return _literal(_dumps(schema["const"]))
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return "(" + " | ".join(_literal(_dumps(v)) for v in schema["enum"]) + ")"
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                return "(" + " | ".join(
                    self.add(f"{name}-{i}", self.schema(sub, f"{name}-{i}"))
                    for i, sub in enumerate(schema[key])) + ")"
        kind = schema.get("type")
        if isinstance(kind, list):
            return "(" + " | ".join(
                self.schema({**schema, "type": k}, f"{name}-{k}") for k in kind) + ")"
        if kind == "object" or (kind is None and "properties" in schema):
            return self.object(schema, name)
        if kind == "array":
            items = schema.get("items")
            item = (self.add(f"{name}-item", self.schema(items, f"{name}-item"))
                    if isinstance(items, dict) else self.primitive("value"))
            return f'"[" ( {item} ( ", " {item} )* )? "]"'
        if kind in ("string", "integer", "number", "boolean", "null"):
            return self.primitive(kind)
        return self.primitive("value")

    def object(self, schema: dict[str, Any], name: str) -> str:
        properties = schema.get("properties") or {}
        if not properties:
            if schema.get("additionalProperties") is False:
                return '"{" "}"'
            return self.primitive("object")
        required = set(schema.get("required") or ())
        pairs = []
        for i, (key, sub) in enumerate(properties.items()):
            rule = self.add(f"{name}-{i}", self.schema(sub, f"{name}-{i}"))
            pairs.append((key in required, f'{_literal(json.dumps(key))} ": " {rule}'))
        must = [pair for needed, pair in pairs if needed]
        may = [pair for needed, pair in pairs if not needed]
        if must:
            body = ' ", " '.join(must) + "".join(f' ( ", " {pair} )?' for pair in may)
            return f'"{{" {body} "}}"'
        # None required: any of them may come first, each followed by the later ones.
        starts = []
        for i, pair in enumerate(may):
            starts.append(pair + "".join(f' ( ", " {later} )?' for later in may[i + 1:]))
        return '"{" ( ' + " | ".join(f"( {s} )" for s in starts) + ' )? "}"'


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def gbnf_schema(schema: dict[str, Any], root: str = "root") -> str:
    """A GBNF grammar (start rule ``root``) for JSON values that have ``schema``'s
    structure, written inline (", " and ": " as the separators)."""
    rules = _Rules(schema)
    body = rules.schema(schema, root)
    return "\n".join([f"{root} ::= {body}", *(f"{k} ::= {v}" for k, v in rules.rules.items())])


def gbnf(tools: Sequence[Tool], choice: str = "auto") -> str | None:
    """The grammar of :func:`lark` in GBNF."""
    if choice == "none":
        return None
    chosen = _choose(tools, choice)
    rules = _Rules({})
    lines = []
    for i, tool in enumerate(chosen):
        parameters = closed(dict(tool.parameters))
        rules.root = parameters
        rules.refs = {}
        head = '{"name": ' + json.dumps(tool.name) + ', "arguments": '
        args = rules.add(f"t{i}-args", rules.schema(parameters, f"t{i}-args"))
        lines.append(f"t{i} ::= {_literal(head)} {args} \"}}\"")
    call = f"call ::= {_literal(OPEN)} ({' | '.join(f't{i}' for i in range(len(chosen)))}) " \
           f"{_literal(CLOSE)}"
    root = "root ::= text | call\ntext ::= [^<] [^\\x00]*" if choice == "auto" else \
        "root ::= call"
    return "\n".join([root, call, *lines, *(f"{k} ::= {v}" for k, v in rules.rules.items())])


# -- the reply ------------------------------------------------------------------------------


def parse_call(text: str) -> ToolCall | None:
    """The call that ``text`` is, whole (surrounding whitespace aside), or None."""
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


class ReplyReader:
    """A backend's events, pushed one at a time, with a reply that is a tool call turned
    into a :class:`~llmcli.record.ToolCall`: the text is held while it may still be the
    start of a call, and streams as it comes once it cannot be one; a call cut short by the
    token limit stays text. :func:`read_reply` pulls, :class:`ToolTextStream` wraps a
    remote model's stream reader (the sync and the async templates feed the same one)."""

    def __init__(self, prefill: str) -> None:
        self.prefill = prefill
        self._seen = prefill
        self._held: list[str] = []
        self._holding = True

    def push(self, event: Chunk) -> list[Chunk]:
        """What ``event`` lets out."""
        if not isinstance(event, str):
            out: list[Chunk] = []
            if isinstance(event, Usage) and self._holding and self._held:
                call = parse_call("".join([self.prefill, *self._held]))
                if call is not None:
                    out.append(call)
                    event.stop_reason = "tool_use"
                else:
                    out.append("".join(self._held))
                self._held = []
            return [*out, event]
        if not self._holding:
            return [event]
        self._seen += event
        self._held.append(event)
        if OPEN.startswith(self._seen) or self._seen.startswith(OPEN):
            return []
        self._holding = False
        held, self._held = "".join(self._held), []
        return [held]

    def finish(self) -> list[Chunk]:
        """The events have ended: what is still held."""
        if not self._held:
            return []
        call = parse_call("".join([self.prefill, *self._held]))
        held, self._held = "".join(self._held), []
        return [call if call is not None else held]


def read_reply(events: Iterable[Chunk], prefill: str) -> Iterator[Chunk]:
    """``events`` through a :class:`ReplyReader`."""
    reader = ReplyReader(prefill)
    for event in events:
        yield from reader.push(event)
    yield from reader.finish()


class ToolTextStream:
    """A remote model's stream reader (:class:`llmcli.remote.StreamReader`) whose reply may
    be a tool call written as text (the grammar method): its chunks go through a
    :class:`ReplyReader`."""

    def __init__(self, reader: Any, prefill: str) -> None:
        self._reader = reader
        self._reply = ReplyReader(prefill)

    def feed(self, event: Any) -> list[Chunk]:
        return [out for chunk in self._reader.feed(event) for out in self._reply.push(chunk)]

    def end(self) -> list[Chunk]:
        ended = [out for chunk in self._reader.end() for out in self._reply.push(chunk)]
        return ended + self._reply.finish()
