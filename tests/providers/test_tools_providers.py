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


@pytest.mark.parametrize("stream", [True, False])
def test_mistral_tool_calls_and_results_sent_back_with_a_prefilled_final_answer(
        monkeypatch, load_plugins, stream: bool) -> None:
    with serving(PROVIDERS["mistral"], monkeypatch, load_plugins) as fake:
        fake.tool_calls = [[{"id": "D681PevKs", "name": "get_weather",
                             "arguments": '{"city": "Paris"}'},
                            {"id": "aB3xK9mP2", "name": "get_weather",
                             "arguments": '{"city": "Lima"}'}]]
        fake.reply = " clear in both."
        model = llmcli.get_model("mistral-small-latest")
        chain = model.chain("Weather in Paris and Lima?", tools=[get_weather], stream=stream,
                            tool_choice="required", prefill_final="It is", log=False)
        assert chain.text().endswith("It is clear in both.")  # the echoed prefix kept once
        assert chain.responses[0].tool_calls() == [
            ToolCall("D681PevKs", "get_weather", {"city": "Paris"}),
            ToolCall("aB3xK9mP2", "get_weather", {"city": "Lima"})]
        assert chain.responses[0].stop_reason == "tool_use"
        first, second = fake.requests[-2:]
        assert first.body["tools"] == [{"type": "function", "function": {
            "name": "get_weather", "description": "The weather in a city.",
            "parameters": get_weather_schema()}}]
        assert first.body["tool_choice"] == "any"
        assistant, result_a, result_b, final = second.body["messages"][-4:]
        # (the SDK adds its defaults: a call's index, the message's prefix false)
        assert assistant["role"] == "assistant" and not assistant.get("content")
        assert [(c["id"], c["function"]) for c in assistant["tool_calls"]] == [
            ("D681PevKs", {"name": "get_weather", "arguments": '{"city": "Paris"}'}),
            ("aB3xK9mP2", {"name": "get_weather", "arguments": '{"city": "Lima"}'})]
        assert result_a == {"role": "tool", "tool_call_id": "D681PevKs", "name": "get_weather",
                            "content": '{"city": "Paris", "sky": "clear"}'}
        assert result_b["tool_call_id"] == "aB3xK9mP2"
        assert (final["role"], final["content"], final["prefix"]) == ("assistant", "It is", True)
        assert second.body["tool_choice"] == "auto"
        assert len(chain.responses) == 2 and chain.last.status == "complete"


def test_mistral_tool_choice_on_the_wire(monkeypatch, load_plugins) -> None:
    with serving(PROVIDERS["mistral"], monkeypatch, load_plugins) as fake:
        model = llmcli.get_model("mistral-small-latest")
        for choice, wire in (("none", "none"), ("auto", "auto"), (
                "get_weather", {"type": "function", "function": {"name": "get_weather"}})):
            model.prompt("x", tools=[get_weather], tool_choice=choice, log=False).text()
            assert fake.last_body["tool_choice"] == wire


def test_mistral_foreign_call_ids_become_ids_the_api_takes(load_plugins) -> None:
    # a call another provider made (toolu_..., call_...) would be a 400 (code 3280): it goes
    # as 9 hex digits of its sha256, the same in the call and in its result
    load_plugins("llmcli-mistral")
    from llmcli_mistral._wire import _turn

    from llmcli.record import Message, ToolResult

    call = ToolCall("toolu_01ABC", "get_weather", {"city": "Paris"})
    (assistant,) = _turn(Message("assistant", "Let me look.", tool_calls=(call,)))
    result, text = _turn(Message("user", "And Lima?", tool_results=(
        ToolResult(call.id, call.name, '{"sky": "clear"}'),)))
    wire_id = assistant["tool_calls"][0]["id"]
    assert len(wire_id) == 9 and wire_id.isalnum() and result["tool_call_id"] == wire_id
    assert assistant["content"] == "Let me look."
    assert text == {"role": "user", "content": "And Lima?"}
    (own,) = _turn(Message("assistant", "", tool_calls=(ToolCall("D681PevKs", "f", {}),)))
    assert own == {"role": "assistant", "tool_calls": [
        {"id": "D681PevKs", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}


def test_mistral_fake_refuses_what_the_api_refuses(monkeypatch, load_plugins) -> None:
    import httpx

    with serving(PROVIDERS["mistral"], monkeypatch, load_plugins) as fake:
        def post(messages: Any) -> httpx.Response:
            return httpx.post(fake.url + "/v1/chat/completions", json={
                "model": "mistral-small-latest", "messages": messages},
                headers={"authorization": f"Bearer {fake.api_key}"})

        bad_id = post([{"role": "user", "content": "x"},
                       {"role": "assistant", "tool_calls": [{"id": "call_1", "function": {
                           "name": "f", "arguments": "{}"}}]},
                       {"role": "tool", "tool_call_id": "call_1", "content": "1"}])
        assert bad_id.status_code == 400 and bad_id.json()["code"] == "3280"
        orphan = post([{"role": "user", "content": "x"},
                       {"role": "tool", "tool_call_id": "abcdefghi", "content": "1"}])
        assert orphan.status_code == 400
        wrong_type = post([{"role": "user", "content": "x"},
                           {"role": "assistant", "tool_calls": [{"id": "abcdefghi",
                                                                 "function": {"name": "f"}}]}])
        assert wrong_type.status_code == 422


def test_models_declare_tool_support(load_plugins) -> None:
    load_plugins("llmcli-anthropic", "llmcli-openai", "llmcli-mistral")
    support = {m.model_id: m.get_tool_support(m.Options()).value for m in llmcli.get_models()}
    assert support["claude-sonnet-4-5"] == "native"
    assert support["gpt-4o-mini"] == "native"
    assert support["mistral-small-latest"] == "native"
