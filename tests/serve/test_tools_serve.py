"""Tools through ``llmcli serve``'s OpenAI wire: the openai SDK's agent loop (tools offered,
the model's calls returned as ``tool_calls``, the client's ``role: tool`` results sent back,
a prefill on the final answer), streamed and not, against the fake OpenAI provider and
SmolLM2 (its calls constrained by the grammar)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.fakes.openai import FakeOpenAI
from tests.serve.conftest import Server, start_server

OPENAI_KEY = "sk-openai-test-0123456789abcdef"
TOOLS: Any = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=OPENAI_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def server(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("serve") / "user", plugins="llmcli-openai",
                           OPENAI_BASE_URL=fake.url + "/v1", OPENAI_API_KEY=OPENAI_KEY)
    yield running
    running.stop()


def _ask(client: openai.OpenAI, messages: Any, stream: bool) -> tuple[str | None, list[Any]]:
    """(content, tool calls) of one completion, streamed or not, as an agent reads them."""
    if not stream:
        message = client.chat.completions.create(model="gpt-4o-mini", messages=messages,
                                                 tools=TOOLS).choices[0].message
        return message.content, [(c.id, c.function.name, c.function.arguments)
                                  for c in message.tool_calls or []]
    content, calls = "", {}
    for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=messages,
                                                tools=TOOLS, stream=True):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for piece in choice.delta.tool_calls or []:
                entry = calls.setdefault(piece.index, ["", "", ""])
                entry[0] = piece.id or entry[0]
                entry[1] += piece.function.name or ""
                entry[2] += piece.function.arguments or ""
    return content or None, [tuple(v) for _, v in sorted(calls.items())]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_openai_sdk_agent_loop_with_a_prefilled_final_answer(
        server: Server, fake: FakeOpenAI, stream: bool) -> None:
    client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)
    fake.tool_calls = [[{"id": "call_1", "name": "get_weather",
                         "arguments": '{"city": "Paris"}'}]]
    messages: Any = [{"role": "user", "content": "Weather in Paris?"}]
    content, calls = _ask(client, messages, stream)
    assert calls == [("call_1", "get_weather", '{"city": "Paris"}')]
    upstream = fake.chat_requests[-1].body
    assert upstream["tools"][0]["function"]["name"] == "get_weather"
    # the agent runs the tool and sends its result, with a prefill for the final answer
    messages += [{"role": "assistant", "content": content, "tool_calls": [
        {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
        for i, n, a in calls]},
        {"role": "tool", "tool_call_id": "call_1",
         "content": json.dumps({"city": "Paris", "sky": "clear"})},
        {"role": "assistant", "content": "The answer is", "prefix": True}]
    content, calls = _ask(client, messages, stream)
    assert calls == []
    assert content == " and the rest of the reply."  # the continuation after the prefill
    sent = fake.chat_requests[-1].body["messages"]
    assert [m["role"] for m in sent[-3:]] == ["user", "assistant", "tool"]
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_1",
                        "content": '{"city": "Paris", "sky": "clear"}'}
    assert "<reply_prefix>The answer is</reply_prefix>" in sent[0]["content"]


def test_tools_on_a_model_without_them_are_a_400(server: Server) -> None:
    client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="cannot call tools"):
        client.chat.completions.create(model="o1-mini", tools=TOOLS,
                                       messages=[{"role": "user", "content": "x"}])


def test_anthropic_wire_refuses_tools_rather_than_dropping_them(server: Server) -> None:
    import anthropic

    client = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match="not supported on /v1/messages yet"):
        client.messages.create(model="gpt-4o-mini", max_tokens=10, tools=[{
            "name": "get_weather", "input_schema": {"type": "object"}}],
            messages=[{"role": "user", "content": "x"}])


@pytest.mark.slow
def test_openai_sdk_agent_loop_against_smollm2(tmp_path_factory) -> None:
    pytest.importorskip("llmcli_local")
    running = start_server(tmp_path_factory.mktemp("serve") / "user", plugins="llmcli-local")
    try:
        client = openai.OpenAI(base_url=running.v1, api_key="unused", max_retries=0)
        messages: Any = [{"role": "user", "content": "Weather in Paris?"}]
        message = client.chat.completions.create(
            model="smollm2", messages=messages, tools=TOOLS, tool_choice="required",
            max_tokens=40, temperature=0).choices[0].message
        (call,) = message.tool_calls or []
        assert call.function.name == "get_weather"
        assert isinstance(json.loads(call.function.arguments)["city"], str)
        messages += [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                     {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'},
                     {"role": "assistant", "content": "The weather in Paris is",
                      "prefix": True}]
        final = client.chat.completions.create(model="smollm2", messages=messages,
                                               tools=TOOLS, max_tokens=12, temperature=0)
        assert final.choices[0].message.tool_calls is None
        assert final.choices[0].message.content  # the continuation after the prefill
    finally:
        running.stop()
