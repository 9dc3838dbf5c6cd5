"""Tools in the Python API: functions as tools, tool calls in a response, the chain's loop,
its one-line errors (and what the log keeps of them), and the refusal before any request."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

import llmcli
from llmcli import Tool, ToolCall, ToolResult
from llmcli.errors import (
    ChainLimitError,
    ToolArgumentsError,
    ToolDefinitionError,
    ToolExecutionError,
    ToolResultError,
    ToolsUnsupportedError,
    UnknownToolError,
)
from llmcli.tools import builtin_tools, run_call


def weather(city: str, days: int = 1) -> dict[str, object]:
    """The forecast for a city.

    Longer text that is not part of the description."""
    return {"city": city, "days": days, "sky": "clear"}


def test_a_function_becomes_a_tool_from_its_signature_and_docstring() -> None:
    tool = Tool.function(weather)
    assert tool.name == "weather"
    assert tool.description == "The forecast for a city."
    assert tool.parameters == {
        "type": "object", "additionalProperties": False, "required": ["city"],
        "properties": {"city": {"type": "string"},
                       "days": {"type": "integer", "default": 1}}}


def test_a_call_is_validated_run_and_written_as_json() -> None:
    result = run_call([Tool.function(weather)], ToolCall("c1", "weather", {"city": "Oslo"}))
    assert result == ToolResult("c1", "weather",
                                '{"city": "Oslo", "days": 1, "sky": "clear"}')
    # pydantic converts what the schema allows ("2" for an integer)
    result = run_call([Tool.function(weather)],
                      ToolCall("c2", "weather", {"city": "Oslo", "days": "2"}))
    assert json.loads(result.output)["days"] == 2


def _boom(x: int) -> int:
    """Raises."""
    raise RuntimeError("disk on fire\nsecond line")


def _not_json() -> object:
    """Returns a set."""
    return {1, 2}


@pytest.mark.parametrize(("call", "error", "message"), [
    (ToolCall("a", "nope", {}), UnknownToolError,
     "The model called an unknown tool 'nope' (tools given: weather, _boom, _not_json)"),
    (ToolCall("b", "weather", {"days": 2}), ToolArgumentsError,
     "Tool 'weather': argument 'city': Missing required argument"),
    (ToolCall("c", "weather", {"city": "x", "extra": 1}), ToolArgumentsError,
     "Tool 'weather': argument 'extra': Unexpected keyword argument"),
    (ToolCall("d", "_boom", {"x": 1}), ToolExecutionError,
     "Tool '_boom' raised RuntimeError: disk on fire"),
    (ToolCall("e", "_not_json", {}), ToolResultError,
     "Tool '_not_json' returned a set, which is not JSON"),
])
def test_each_failed_call_is_one_line_with_its_result(call, error, message) -> None:
    tools = [Tool.function(weather), Tool.function(_boom), Tool.function(_not_json)]
    with pytest.raises(error) as info:
        run_call(tools, call)
    assert str(info.value) == message
    assert info.value.result == ToolResult(call.id, call.name, f"Error: {message}",
                                           error=message)


def test_a_tool_given_a_schema_by_hand_is_checked_with_it() -> None:
    tool = Tool("add", "Add two numbers.",
                {"type": "object", "properties": {"a": {"type": "number"},
                                                  "b": {"type": "number"}},
                 "required": ["a", "b"]},
                implementation=lambda a, b: a + b)
    assert run_call([tool], ToolCall("1", "add", {"a": 1, "b": 2})).output == "3"
    with pytest.raises(ToolArgumentsError, match="argument 'b': 'x' is not of type 'number'"):
        run_call([tool], ToolCall("2", "add", {"a": 1, "b": "x"}))


def test_bad_definitions_are_refused() -> None:
    with pytest.raises(ToolDefinitionError, match="not usable"):
        Tool("has space")
    with pytest.raises(ToolDefinitionError, match="Two tools are named 'weather'"):
        llmcli.PromptSpec("x", tools=(weather, Tool.function(weather)))  # type: ignore[arg-type]

    def positional(a: int, /) -> int:
        return a

    with pytest.raises(ToolDefinitionError, match="must be passable by name"):
        Tool.function(positional)


@pytest.mark.parametrize("parameters", [
    {"type": "object", "properties": {"path": {"$ref": "file:///etc/passwd"}}},
    {"type": "object", "properties": {"page": {"$ref": "http://127.0.0.1:9/schema.json"}}},
    {"type": "object", "properties": {"x": {"type": "nonsense"}}},
    {"$ref": "#"},
])
def test_a_tools_parameters_are_a_schema_that_stays_inside_itself(
        parameters: dict[str, object]) -> None:
    """Hand-written parameters are checked as --schema is: valid, references resolved only
    inside the schema, no loop that never ends."""
    with pytest.raises(ToolDefinitionError, match="Tool 'read': .*JSON Schema|Tool 'read': "):
        Tool("read", "", parameters)
    ok = {"type": "object", "$defs": {"c": {"type": "string"}},
          "properties": {"city": {"$ref": "#/$defs/c"}}}
    assert Tool("read", "", ok).parameters == ok


def test_builtin_tools_are_harmless_and_answer_json() -> None:
    tools = builtin_tools()
    assert [t.name for t in tools] == ["llmcli_version", "llmcli_time"]
    version = run_call(tools, ToolCall("v", "llmcli_version", {})).output
    assert version == llmcli.__version__
    now = json.loads(run_call(tools, ToolCall("t", "llmcli_time", {})).output)
    assert now["utc"].endswith("+00:00")


# -- through a model -------------------------------------------------------------------------


def test_tools_on_a_model_without_them_are_refused_before_any_request(test_models) -> None:
    with pytest.raises(ToolsUnsupportedError) as info:
        llmcli.get_model("test-eats").prompt("x", tools=[weather])
    assert str(info.value) == "Model 'test-eats' cannot call tools; models that can: test-tools."
    assert not test_models.requests


def test_a_response_reports_its_tool_calls(test_models) -> None:
    call = ToolCall("toolu_1", "weather", {"city": "Oslo"})
    test_models.queue.append(["ing. ", call])  # eats the prefill "Check"
    response = llmcli.get_model("test-tools").prompt("Weather?", tools=[weather],
                                                     prefill="Check")
    assert response.tool_calls() == [call]
    assert response.text() == "Checking. "
    request = test_models.requests[-1]
    assert [t.name for t in request.tools] == ["weather"]
    assert request.tool_support is llmcli.ToolSupport.NATIVE
    data = response.to_dict()
    assert data["tool_calls"] == [{"id": "toolu_1", "name": "weather",
                                   "arguments": {"city": "Oslo"}}]


def test_chain_runs_the_loop_and_sends_results_back(test_models) -> None:
    test_models.queue.append([ToolCall("c1", "weather", {"city": "Oslo"})])
    seen: list[tuple[str, str]] = []
    chain = llmcli.get_model("test-tools").chain(
        "Weather in Oslo?", tools=[weather], prefill="The weather",
        after_call=lambda tool, call, result: seen.append((call.name, result.output)))
    text = chain.text()
    assert len(chain.responses) == 2
    assert text == 'The weatherresults: {"city": "Oslo", "days": 1, "sky": "clear"}'
    first, second = test_models.requests
    assert first.prefill == "The weather"
    # after a tool result the next turn takes no prefill unless asked
    assert second.prefill == "" and second.prompt == ""
    assert second.tool_results == (ToolResult("c1", "weather", seen[0][1]),)
    sent = second.messages()
    assert sent[-2].role == "assistant" and sent[-2].tool_calls[0].id == "c1"
    assert sent[-1].tool_results[0].call_id == "c1"


def test_prefill_final_starts_the_answer_after_the_tools(test_models) -> None:
    test_models.queue.append([ToolCall("c1", "weather", {"city": "Oslo"})])
    chain = llmcli.get_model("test-tools").chain(
        "Weather?", tools=[weather], prefill_final="Answer: ")
    assert chain.last is chain.responses[0]
    chain.text()
    assert test_models.requests[0].prefill == ""
    assert test_models.requests[1].prefill == "Answer: "
    assert chain.last.text().startswith("Answer: ")


def test_a_declined_call_tells_the_model(test_models) -> None:
    test_models.queue.append([ToolCall("c1", "weather", {"city": "Oslo"})])
    chain = llmcli.get_model("test-tools").chain(
        "Weather?", tools=[weather], before_call=lambda tool, call: False)
    assert chain.text() == "results: Error: the user declined this tool call"


def _log_rows(user_dir: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(user_dir / "logs.db") as db:
        return db.execute(sql).fetchall()


def test_chain_limit_stops_with_one_line_and_the_log_keeps_it(test_models,
                                                               user_dir: Path) -> None:
    for i in range(3):
        test_models.queue.append([ToolCall(f"c{i}", "weather", {"city": "Oslo"})])
    chain = llmcli.get_model("test-tools").chain("Loop", tools=[weather], chain_limit=2)
    with pytest.raises(ChainLimitError, match="limit of 2 responses"):
        chain.text()
    assert len(test_models.requests) == 2
    rows = _log_rows(user_dir, "select status, error from responses order by rowid")
    assert rows[:2] == [("complete", None), ("complete", None)]
    assert rows[2][0] == "error" and "limit of 2" in rows[2][1]


def test_a_failing_tool_stops_the_chain_and_is_logged(test_models, user_dir: Path) -> None:
    test_models.queue.append([ToolCall("c1", "_boom", {"x": 1})])
    chain = llmcli.get_model("test-tools").chain("Go", tools=[_boom])
    with pytest.raises(ToolExecutionError) as info:
        chain.text()
    assert str(info.value) == "Tool '_boom' raised RuntimeError: disk on fire"
    assert len(test_models.requests) == 1
    failed = chain.last
    assert failed.status == "error" and failed.error == str(info.value)
    assert failed.request.tool_results[0].error == str(info.value)
    rows = _log_rows(user_dir, "select status, error from responses order by rowid")
    assert rows[-1] == ("error", str(info.value))


def test_conversation_chain_keeps_the_calls_in_its_history(test_models) -> None:
    conversation = llmcli.get_model("test-tools").conversation()
    test_models.queue.append([ToolCall("c1", "weather", {"city": "Oslo"})])
    conversation.chain("Weather?", tools=[weather]).text()
    conversation.prompt("Thanks").text()
    history = test_models.requests[-1].history
    assert [m.role for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[1].tool_calls[0].name == "weather"
    assert history[2].tool_results[0].call_id == "c1"


# -- the log ---------------------------------------------------------------------------------


def test_the_log_keeps_calls_and_results_and_resumes_the_conversation(
        test_models, user_dir: Path) -> None:
    from click.testing import CliRunner

    from llmcli.cli import cli

    test_models.queue.append([ToolCall("c1", "weather", {"city": "Zorblax"})])
    llmcli.get_model("test-tools").chain("Weather?", tools=[weather]).text()
    calls = _log_rows(user_dir, "select call_id, name, arguments from tool_calls")
    assert calls == [("c1", "weather", '{"city": "Zorblax"}')]
    results = _log_rows(user_dir, "select call_id, output, error from tool_results")
    assert results == [("c1", '{"city": "Zorblax", "days": 1, "sky": "clear"}', None)]
    # -c: the turns come back with their calls and results
    conversation = llmcli.load_conversation()
    history = conversation.history()
    assert history[1].tool_calls == (ToolCall("c1", "weather", {"city": "Zorblax"}),)
    assert history[2].tool_results[0].name == "weather"
    conversation.prompt("And tomorrow?").text()
    sent = test_models.requests[-1].history
    assert sent[1].tool_calls[0].id == "c1" and sent[2].tool_results[0].call_id == "c1"
    # shown by llmcli logs, and found by a search for the tool's arguments
    out = CliRunner().invoke(cli, ["logs", "-n", "0", "-q", "zorbl"]).output
    assert 'Tool calls:\nweather({"city": "Zorblax"})  id=c1' in out
    assert "Tool results:\nweather -> {" in out
    shown = json.loads(CliRunner().invoke(cli, ["logs", "--json", "-n", "0"]).output)
    assert shown[0]["tool_calls"][0]["name"] == "weather"


def test_tool_choice_is_checked_and_reaches_the_request(test_models) -> None:
    model = llmcli.get_model("test-tools")
    with pytest.raises(ToolDefinitionError, match="tool_choice 'nope': give auto, required"):
        model.prompt("x", tools=[weather], tool_choice="nope")
    model.prompt("x", tools=[weather], tool_choice="weather").text()
    assert test_models.requests[-1].tool_choice == "weather"
    test_models.queue.append([ToolCall("c1", "weather", {"city": "Oslo"})])
    model.chain("x", tools=[weather], tool_choice="required").text()
    assert [r.tool_choice for r in test_models.requests[-2:]] == ["required", "auto"]
