"""Tools on the local runtime: the prompt (system text or the template's tools section), the
grammar "text, or a call whose arguments match the tool's schema", the reply read back as a
ToolCall, and SmolLM2 end to end."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from llmcli_local import tools
from llmcli_local.options import LocalOptions

from llmcli import Tool, ToolCall, ToolResult
from llmcli.capabilities import PrefillSupport
from llmcli.models import Message, Request, Usage
from tests.grammar import accepts


def get_weather(city: str, unit: str = "celsius") -> dict[str, Any]:
    """Get the current weather for a city."""
    return {"city": city, "temperature": 21, "unit": unit}


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


TOOLS = [Tool.function(get_weather), Tool.function(add)]


@pytest.mark.parametrize(("text", "auto", "required"), [
    ("It is sunny.", True, False),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
     True, True),
    ('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>', True, True),
    ('<tool_call>{"name": "add", "arguments": {"a": "one", "b": 2}}</tool_call>',
     False, False),
    ('<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>', False, False),
    ('<tool_call>{"name": "rm", "arguments": {}}</tool_call>', False, False),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "P", "x": 1}}</tool_call>',
     False, False),
])
def test_the_grammar_is_text_or_a_valid_call(text: str, auto: bool, required: bool) -> None:
    auto_text = tools.grammar(TOOLS, "auto").text  # type: ignore[union-attr]
    required_text = tools.grammar(TOOLS, "required").text  # type: ignore[union-attr]
    assert accepts(auto_text, text, notation="lark") is auto
    assert accepts(required_text, text, notation="lark") is required
    assert tools.grammar(TOOLS, "none") is None
    only_add = tools.grammar(TOOLS, "add").text  # type: ignore[union-attr]
    assert accepts(only_add, text, notation="lark") is (required and '"add"' in text)


def _request(**changes: Any) -> Request:
    fields: dict[str, Any] = dict(
        model_id="smollm2", prompt="Weather in Paris?", system=None, history=[], prefill="",
        prefill_support=PrefillSupport.EATS_PREFIX, options=LocalOptions(), stream=True,
        tools=tuple(TOOLS))
    fields.update(changes)
    return Request(**fields)


def test_without_a_tools_section_they_go_in_the_system_prompt_and_turns_as_text() -> None:
    call = ToolCall("c1", "add", {"a": 1, "b": 2})
    request = _request(
        system="Be brief.", prompt="",
        history=[Message("user", "1+2?"), Message("assistant", "", tool_calls=(call,))],
        tool_results=(ToolResult("c1", "add", "3"),))
    messages, kwargs = tools.messages(request, "{{ messages }}")
    assert kwargs == {}
    assert messages[0]["role"] == "system" and messages[0]["content"].startswith("Be brief.")
    assert '"name": "get_weather"' in messages[0]["content"]
    assert messages[2] == {"role": "assistant", "content":
                           '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}'
                           '</tool_call>'}
    assert messages[3] == {"role": "user", "content":
                           '<tool_response>{"name": "add", "output": "3"}</tool_response>'}


def test_a_template_with_a_tools_section_gets_them_there() -> None:
    call = ToolCall("c1", "add", {"a": 1, "b": 2})
    request = _request(prompt="", history=[Message("user", "1+2?"),
                                           Message("assistant", "", tool_calls=(call,))],
                       tool_results=(ToolResult("c1", "add", "3"),))
    messages, kwargs = tools.messages(request, "{% if tools %}{{ m.tool_calls }}{% endif %}")
    assert [t["function"]["name"] for t in kwargs["tools"]] == ["get_weather", "add"]
    assert messages[1]["tool_calls"][0]["function"] == {"name": "add",
                                                       "arguments": {"a": 1, "b": 2}}
    assert messages[2] == {"role": "tool", "tool_call_id": "c1", "name": "add", "content": "3"}


def test_a_reply_that_is_a_call_becomes_a_tool_call_and_text_streams() -> None:
    events = ['<tool', '_call>{"name": "add", ', '"arguments": {"a": 1, "b": 2}}</tool_call>',
              Usage(stop_reason="end_turn")]
    out = list(tools.read_reply(iter(events), ""))
    assert isinstance(out[0], ToolCall) and out[0].arguments == {"a": 1, "b": 2}
    assert isinstance(out[1], Usage) and out[1].stop_reason == "tool_use"
    text = list(tools.read_reply(iter(["It ", "is", Usage()]), ""))
    assert text[:2] == ["It ", "is"]
    cut = list(tools.read_reply(iter(['<tool_call>{"name": "add"', Usage()]), ""))
    assert cut[0] == '<tool_call>{"name": "add"'


def test_smollm2_calls_tools_with_valid_arguments_and_answers(smollm2: Any) -> None:
    chain = smollm2.chain("What is 17 plus 25?", tools=[get_weather, add],
                          tool_choice="required", prefill_final="The answer is",
                          max_tokens=40, log=False)
    chain.text()
    first = chain.responses[0].tool_calls()
    assert len(first) == 1
    tool = {t.name: t for t in TOOLS}[first[0].name]
    jsonschema.validate(first[0].arguments, dict(tool.parameters))
    assert json.loads(json.dumps(chain.responses[1].request.tool_results[0].to_dict()))
    assert chain.last.text().startswith("The answer is")


def test_docs_tools_md_python_example_runs(smollm2: Any) -> None:
    import re

    from tests import docs_tools

    blocks = re.findall(r"```python\n(.*?)```", (docs_tools.DOCS / "tools.md").read_text(),
                        re.DOTALL)
    assert blocks
    for i, block in enumerate(blocks):
        if "127.0.0.1:8000" in block:
            continue  # a client of llmcli serve: run by tests/serve/test_tools_serve.py
        exec(compile(block, f"docs/tools.md[{i}]", "exec"), {})
