"""Tools through the provider plugins, over real HTTP against the fakes on 127.0.0.1:
Anthropic ``tool_use`` / ``tool_result`` (streamed as ``input_json_delta``), with a prefill
before the call; the chain's second turn answers every call by id."""

from __future__ import annotations

from typing import Any

import pytest

import llmcli
from llmcli import ToolCall
from tests.providers.conftest import PROVIDERS, serving


def get_weather(city: str) -> dict[str, Any]:
    """The weather in a city."""
    return {"city": city, "sky": "clear"}


@pytest.mark.parametrize("stream", [True, False])
def test_anthropic_tool_use_with_a_prefill_and_the_result_sent_back(
        monkeypatch, load_plugins, stream: bool) -> None:
    with serving(PROVIDERS["anthropic"], monkeypatch, load_plugins) as fake:
        fake.reply = "ing the weather."
        fake.tool_uses = [[{"id": "toolu_01", "name": "get_weather",
                            "input": {"city": "Paris"}}]]
        model = llmcli.get_model("claude-sonnet-4-5")
        first = model.prompt("Weather in Paris?", tools=[get_weather], prefill="Check",
                             stream=stream, log=False)
        # the prefill is the start of the text before the call (Anthropic allows both)
        assert first.text() == "Checking the weather."
        assert first.tool_calls() == [ToolCall("toolu_01", "get_weather", {"city": "Paris"})]
        assert first.stop_reason == "tool_use"
        sent = fake.last_body
        assert sent["tools"] == [{"name": "get_weather", "description": "The weather in a city.",
                                  "input_schema": get_weather_schema()}]
        assert sent["tool_choice"] == {"type": "auto"}
        assert sent["messages"][-1] == {"role": "assistant", "content": "Check"}

        fake.reply = "It is clear in Paris."
        fake.tool_uses = [[{"id": "toolu_01", "name": "get_weather",
                            "input": {"city": "Paris"}}]]
        chain = model.chain("Weather in Paris?", tools=[get_weather], stream=stream,
                            prefill_final="Answer:", log=False)
        assert chain.text().endswith("Answer:It is clear in Paris.")
        body = fake.last_body
        assistant, results, final = body["messages"][-3:]
        assert assistant["content"][-1] == {"type": "tool_use", "id": "toolu_01",
                                            "name": "get_weather", "input": {"city": "Paris"}}
        assert results["content"] == [{"type": "tool_result", "tool_use_id": "toolu_01",
                                       "content": '{"city": "Paris", "sky": "clear"}'}]
        assert final == {"role": "assistant", "content": "Answer:"}


def get_weather_schema() -> dict[str, Any]:
    return dict(llmcli.Tool.function(get_weather).parameters)


def test_anthropic_tool_choice_on_the_wire(monkeypatch, load_plugins) -> None:
    with serving(PROVIDERS["anthropic"], monkeypatch, load_plugins) as fake:
        model = llmcli.get_model("claude-sonnet-4-5")
        for choice, wire in (("required", {"type": "any"}), ("none", {"type": "none"}),
                             ("get_weather", {"type": "tool", "name": "get_weather"})):
            model.prompt("x", tools=[get_weather], tool_choice=choice, log=False).text()
            assert fake.last_body["tool_choice"] == wire


@pytest.mark.parametrize("stream", [True, False])
def test_openai_function_calling_streamed_deltas_and_results_sent_back(
        monkeypatch, load_plugins, stream: bool) -> None:
    with serving(PROVIDERS["openai"], monkeypatch, load_plugins) as fake:
        fake.tool_calls = [[{"id": "call_a", "name": "get_weather",
                             "arguments": '{"city": "Paris"}'},
                            {"id": "call_b", "name": "get_weather",
                             "arguments": '{"city": "Lima"}'}]]
        model = llmcli.get_model("gpt-4o-mini")
        chain = model.chain("Weather in Paris and Lima?", tools=[get_weather], stream=stream,
                            log=False)
        chain.text()
        assert chain.responses[0].tool_calls() == [
            ToolCall("call_a", "get_weather", {"city": "Paris"}),
            ToolCall("call_b", "get_weather", {"city": "Lima"})]
        assert chain.responses[0].stop_reason == "tool_use"
        first, second = fake.chat_requests[-2:]
        assert first.body["tools"][0]["function"]["name"] == "get_weather"
        assert first.body["tool_choice"] == "auto"
        assistant, result_a, result_b = second.body["messages"][-3:]
        assert assistant["tool_calls"][1]["function"] == {
            "name": "get_weather", "arguments": '{"city": "Lima"}'}
        assert result_a == {"role": "tool", "tool_call_id": "call_a",
                            "content": '{"city": "Paris", "sky": "clear"}'}
        assert result_b["tool_call_id"] == "call_b"
        assert len(chain.responses) == 2 and chain.last.status == "complete"


def test_openai_malformed_arguments_are_one_line(monkeypatch, load_plugins) -> None:
    from llmcli.errors import ToolArgumentsError

    with serving(PROVIDERS["openai"], monkeypatch, load_plugins) as fake:
        fake.tool_calls = [[{"id": "call_a", "name": "get_weather", "arguments": '{"city": '}]]
        chain = llmcli.get_model("gpt-4o-mini").chain("x", tools=[get_weather], log=False)
        with pytest.raises(ToolArgumentsError,
                           match="^Tool 'get_weather': the arguments are not a JSON object$"):
            chain.text()


def test_models_declare_tool_support(load_plugins) -> None:
    load_plugins("llmcli-anthropic", "llmcli-openai")
    support = {m.model_id: m.get_tool_support(m.Options()).value for m in llmcli.get_models()}
    assert support["claude-sonnet-4-5"] == "native"
    assert support["gpt-4o-mini"] == "native"
