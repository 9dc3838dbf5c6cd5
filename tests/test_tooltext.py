"""Tools as text (llmcli.tooltext): the grammar "text, or a call whose arguments match the
tool's schema" in both notations (Lark for the local runtime, GBNF for llama-server and
vLLM), checked by llguidance on the same table, and the JSON Schema → GBNF translation."""

from __future__ import annotations

from typing import Any

import pytest

from llmcli import Tool
from llmcli.tooltext import gbnf, gbnf_schema, lark
from tests.grammar import accepts


def get_weather(city: str, unit: str = "celsius") -> dict[str, Any]:
    """Get the current weather for a city."""
    return {"city": city, "temperature": 21, "unit": unit}


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


TOOLS = [Tool.function(get_weather), Tool.function(add)]


CASES = [
    ("It is sunny.", True, False),
    ("Two lines,\nboth text: a < b.", True, False),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
     True, True),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "k"}}'
     '</tool_call>', True, True),
    ('<tool_call>{"name": "add", "arguments": {"a": 1, "b": -2}}</tool_call>', True, True),
    ('<tool_call>{"name": "add", "arguments": {"a": "one", "b": 2}}</tool_call>',
     False, False),
    ('<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>', False, False),
    ('<tool_call>{"name": "add", "arguments": {"a": 1.5, "b": 2}}</tool_call>', False, False),
    ('<tool_call>{"name": "rm", "arguments": {}}</tool_call>', False, False),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "P", "x": 1}}</tool_call>',
     False, False),
    ('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}', False, False),
]


@pytest.mark.parametrize("notation", ["gbnf", "lark"])
@pytest.mark.parametrize(("text", "auto", "required"), CASES)
def test_the_grammar_is_text_or_a_valid_call(notation: str, text: str, auto: bool,
                                             required: bool) -> None:
    build = gbnf if notation == "gbnf" else lark
    grammar_auto, grammar_required = build(TOOLS, "auto"), build(TOOLS, "required")
    only_add = build(TOOLS, "add")
    assert grammar_auto and grammar_required and only_add
    assert accepts(grammar_auto, text, notation=notation) is auto
    assert accepts(grammar_required, text, notation=notation) is required
    assert accepts(only_add, text, notation=notation) is (required and '"add"' in text)
    assert build(TOOLS, "none") is None


SCHEMA = {
    "type": "object",
    "properties": {
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}},
        "where": {"$ref": "#/$defs/Place"},
        "n": {"type": ["integer", "null"]},
        "ok": {"type": "boolean"},
    },
    "required": ["where"],
    "additionalProperties": False,
    "$defs": {"Place": {"type": "object", "properties": {
        "city": {"type": "string"}, "near": {"anyOf": [{"$ref": "#/$defs/Place"},
                                                       {"type": "null"}]}},
        "required": ["city"], "additionalProperties": False}},
}


@pytest.mark.parametrize(("text", "ok"), [
    ('{"where": {"city": "Lyon"}}', True),
    ('{"tags": ["a", "b"], "where": {"city": "Lyon", "near": {"city": "Vienne", "near": null}},'
     ' "n": 3, "ok": true}', False),  # the required property comes first
    ('{"where": {"city": "Lyon", "near": {"city": "Vienne", "near": null}}, "tags": ["a"], '
     '"n": null, "ok": false}', True),
    ('{"where": {"city": "Lyon"}, "tags": ["c"]}', False),
    ('{"where": {"city": "Lyon"}, "n": 1.5}', False),
    ('{"where": {"city": "Lyon", "x": 1}}', False),
    ('{"tags": []}', False),
    ('{"where": {"city": "a\\"b\\u00e9"}}', True),
])
def test_a_schema_becomes_gbnf_for_its_structure(text: str, ok: bool) -> None:
    assert accepts(gbnf_schema(SCHEMA), text) is ok


def test_optional_properties_alone_may_come_in_any_subset_in_order() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"},
                                               "b": {"type": "string"}}}
    grammar = gbnf_schema(schema)
    for text in ('{}', '{"a": 1}', '{"b": "x"}', '{"a": 1, "b": "x"}'):
        assert accepts(grammar, text), text
    assert not accepts(grammar, '{"b": "x", "a": 1}')
    assert not accepts(grammar, '{, "b": "x"}')
