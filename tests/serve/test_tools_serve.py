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


def test_a_tool_whose_schema_points_outside_itself_is_a_400(server: Server) -> None:
    """A client's tool parameters with a "$ref" to a file are refused before any model is
    asked: the server never follows it."""
    client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)
    tools: Any = [{"type": "function", "function": {
        "name": "leak", "parameters": {"type": "object", "properties": {
            "p": {"$ref": "file:///etc/passwd"}}}}}]
    with pytest.raises(openai.BadRequestError, match="tools\\[0\\]: Tool 'leak'"):
        client.chat.completions.create(model="gpt-4o", tools=tools,
                                       messages=[{"role": "user", "content": "x"}])


ANTHROPIC_TOOLS: Any = [{"name": "get_weather", "description": "The weather in a city.",
                         "input_schema": TOOLS[0]["function"]["parameters"]}]


def _anthropic_ask(client: Any, messages: Any, stream: bool, **kwargs: Any) -> Any:
    """One Messages API reply, whole or through the SDK's stream helper (which builds each
    tool_use block's input from its input_json_delta events)."""
    if not stream:
        return client.messages.create(model="gpt-4o-mini", max_tokens=50, messages=messages,
                                      tools=ANTHROPIC_TOOLS, **kwargs)
    with client.messages.stream(model="gpt-4o-mini", max_tokens=50, messages=messages,
                                tools=ANTHROPIC_TOOLS, **kwargs) as events:
        return events.get_final_message()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_anthropic_sdk_tool_use_loop_with_a_prefilled_final_answer(
        server: Server, fake: FakeOpenAI, stream: bool) -> None:
    import anthropic

    client = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)
    fake.tool_calls = [[{"id": "call_1", "name": "get_weather",
                         "arguments": '{"city": "Paris"}'}]]
    messages: Any = [{"role": "user", "content": "Weather in Paris?"}]
    reply = _anthropic_ask(client, messages, stream, tool_choice={"type": "any"})
    assert reply.stop_reason == "tool_use"
    assert [(b.type, b.id, b.name, b.input) for b in reply.content] == [
        ("tool_use", "call_1", "get_weather", {"city": "Paris"})]
    upstream = fake.chat_requests[-1].body
    assert upstream["tools"][0]["function"]["name"] == "get_weather"
    assert upstream["tool_choice"] == "required"
    # the agent runs the tool, sends its result, and prefills the final answer
    messages += [{"role": "assistant", "content": [b.model_dump() for b in reply.content]},
                 {"role": "user", "content": [{
                     "type": "tool_result", "tool_use_id": "call_1",
                     "content": [{"type": "text", "text": '{"sky": "clear"}'}]}]},
                 {"role": "assistant", "content": "The answer is"}]
    final = _anthropic_ask(client, messages, stream)
    assert final.stop_reason == "end_turn"
    assert [(b.type, b.text) for b in final.content] == [
        ("text", " and the rest of the reply.")]  # the continuation after the prefill
    sent = fake.chat_requests[-1].body["messages"]
    assert [m["role"] for m in sent[-3:]] == ["user", "assistant", "tool"]
    assert sent[-2]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                     "arguments": '{"city": "Paris"}'}
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'}
    assert "<reply_prefix>The answer is</reply_prefix>" in sent[0]["content"]


def test_anthropic_stream_events_for_a_tool_use_are_the_messages_api_s(
        server: Server, fake: FakeOpenAI) -> None:
    import anthropic

    client = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)
    fake.tool_calls = [[{"id": "call_9", "name": "get_weather",
                         "arguments": '{"city": "Oslo"}'}]]
    with client.messages.stream(model="gpt-4o-mini", max_tokens=50, tools=ANTHROPIC_TOOLS,
                                messages=[{"role": "user", "content": "Oslo?"}]) as events:
        seen = [(e.type, getattr(e, "index", None)) for e in events
                if e.type in ("content_block_start", "content_block_delta",
                              "content_block_stop", "message_delta")]
        raw = events.get_final_message()
    # the tool_use block opens with input {}, its input comes as input_json_delta
    assert seen[0] == ("content_block_start", 0)
    assert ("content_block_stop", 0) in seen and seen[-1] == ("message_delta", None)
    assert raw.content[0].type == "tool_use" and raw.content[0].input == {"city": "Oslo"}
    assert raw.stop_reason == "tool_use"


def test_anthropic_tool_errors_are_400s_in_anthropic_s_shape(server: Server) -> None:
    import httpx

    def post(body: Any) -> httpx.Response:
        return httpx.post(server.url + "/v1/messages", json={
            "model": "gpt-4o-mini", "max_tokens": 10, "tools": ANTHROPIC_TOOLS, **body},
            timeout=30)

    unknown = post({"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                           "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2",
                                      "content": "sunny"}]}]})
    assert unknown.status_code == 400
    assert unknown.json()["type"] == "error"
    assert unknown.json()["error"]["type"] == "invalid_request_error"
    assert "toolu_2" in unknown.json()["error"]["message"]
    for messages, words in [
        ([{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "get_weather",
                                        "input": {}}]}], "belong in assistant messages"),
        ([{"role": "user", "content": "x"},
          {"role": "assistant", "content": [{"type": "tool_use", "id": "a",
                                             "name": "get_weather", "input": "{}"}]},
          {"role": "user", "content": "y"}], "input object"),
        ([{"role": "user", "content": "x"},
          {"role": "assistant", "content": [{"type": "tool_use", "id": "a",
                                             "name": "get_weather", "input": {}}]},
          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a",
                                        "content": [{"type": "image"}]}]}], "only text"),
    ]:
        answer = post({"messages": messages})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["type"] == "invalid_request_error"
        assert words in answer.json()["error"]["message"]
    bad_choice = post({"messages": [{"role": "user", "content": "x"}],
                       "tool_choice": {"type": "sometimes"}})
    assert bad_choice.status_code == 400 and "tool_choice" in bad_choice.json()["error"]["message"]
    server_tool = post({"messages": [{"role": "user", "content": "x"}],
                        "tools": [{"type": "web_search_20250305", "name": "web_search"}]})
    assert server_tool.status_code == 400
    assert "only custom tools" in server_tool.json()["error"]["message"]


def test_anthropic_tools_on_a_model_without_them_are_a_400(server: Server) -> None:
    import anthropic

    client = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match="cannot call tools"):
        client.messages.create(model="o1-mini", max_tokens=10, tools=ANTHROPIC_TOOLS,
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


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_anthropic_sdk_tool_use_loop_against_smollm2(tmp_path_factory, stream: bool) -> None:
    import anthropic

    pytest.importorskip("llmcli_local")
    running = start_server(tmp_path_factory.mktemp("serve") / "user", plugins="llmcli-local")
    client = anthropic.Anthropic(base_url=running.url, api_key="unused", max_retries=0)
    try:

        def ask(messages: Any, **kwargs: Any) -> Any:
            args = dict(model="smollm2", messages=messages, tools=ANTHROPIC_TOOLS,
                        extra_body={"temperature": 0}, **kwargs)
            if not stream:
                return client.messages.create(**args)
            with client.messages.stream(**args) as events:
                return events.get_final_message()

        messages: Any = [{"role": "user", "content": "Weather in Paris?"}]
        reply = ask(messages, tool_choice={"type": "tool", "name": "get_weather"},
                    max_tokens=40)
        assert reply.stop_reason == "tool_use"
        (use,) = [b for b in reply.content if b.type == "tool_use"]
        assert use.name == "get_weather" and isinstance(use.input["city"], str)
        messages += [{"role": "assistant", "content": [b.model_dump() for b in reply.content]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                   "content": '{"sky": "clear"}'}]},
                     {"role": "assistant", "content": "The weather in Paris is"}]
        final = ask(messages, max_tokens=12)
        assert final.stop_reason in ("end_turn", "max_tokens")
        assert [b.type for b in final.content] == ["text"]
        assert final.content[0].text  # the continuation after the prefill
        if not stream:
            _run_docs_example(running)
    finally:
        client.close()
        running.stop()


def _run_docs_example(running: Server) -> None:
    """docs/tools.md's anthropic SDK example, against this server."""
    import re

    from tests import docs_tools

    (block,) = [b for b in re.findall(r"```python\n(.*?)```",
                                      (docs_tools.DOCS / "tools.md").read_text(), re.DOTALL)
                if "127.0.0.1:8000" in b]
    block = block.replace("http://127.0.0.1:8000", running.url)
    namespace: dict[str, Any] = {}
    exec(compile(block, "docs/tools.md[anthropic]", "exec"), namespace)
    namespace["client"].close()


def test_anthropic_tool_result_blocks_become_the_final_turn_s_results() -> None:
    from llmcli.record import ToolCall as Call
    from llmcli.serve.protocol import AnthropicRequest, anthropic_chat, parse

    chat = anthropic_chat(parse(AnthropicRequest, json.dumps({
        "model": "m", "max_tokens": 5, "tools": ANTHROPIC_TOOLS,
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": [
            {"role": "user", "content": "Weather in Paris and Lima?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Two cities.", "signature": ""},
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "toolu_a", "name": "get_weather",
                 "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_b", "name": "get_weather",
                 "input": {"city": "Lima"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": "clear"},
                {"type": "tool_result", "tool_use_id": "toolu_b", "is_error": True,
                 "content": [{"type": "text", "text": "Error: no station\nin Lima"}]},
                {"type": "text", "text": "Compare them."}]},
            {"role": "assistant", "content": "Paris is"}]}).encode()))
    assert chat.tool_choice == "get_weather" and chat.prefill == "Paris is"
    assert [t.name for t in chat.tools] == ["get_weather"]
    (user, assistant) = chat.history
    assert assistant.content == "Looking."
    assert assistant.tool_calls == (Call("toolu_a", "get_weather", {"city": "Paris"}),
                                    Call("toolu_b", "get_weather", {"city": "Lima"}))
    assert chat.prompt == "Compare them."
    ok, failed = chat.tool_results
    assert (ok.call_id, ok.name, ok.output, ok.error) == ("toolu_a", "get_weather", "clear", None)
    assert failed.output == "Error: no station\nin Lima" and failed.error == "Error: no station"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_anthropic_wire_text_then_tool_use_from_claude(tmp_path_factory, stream: bool) -> None:
    """Claude writes text (here after a prefill) and then calls: the reply is a text block
    at index 0 and the tool_use block at index 1, streamed as the Messages API does."""
    import anthropic

    from tests.fakes.anthropic import FakeAnthropic

    key = "sk-ant-test-0123456789abcdef"
    with FakeAnthropic(api_key=key) as claude:
        running = start_server(tmp_path_factory.mktemp("serve") / "user",
                               plugins="llmcli-anthropic", ANTHROPIC_BASE_URL=claude.url,
                               ANTHROPIC_API_KEY=key)
        client = anthropic.Anthropic(base_url=running.url, api_key="unused", max_retries=0)
        try:
            claude.reply = "ing the weather."
            claude.tool_uses = [[{"id": "toolu_01", "name": "get_weather",
                                  "input": {"city": "Paris"}}]]
            args: Any = dict(model="claude-sonnet-4-5", max_tokens=50, tools=ANTHROPIC_TOOLS,
                             messages=[{"role": "user", "content": "Weather in Paris?"},
                                       {"role": "assistant", "content": "Check"}])
            if stream:
                with client.messages.stream(**args) as events:
                    starts = [(e.index, e.content_block.type) for e in events
                              if e.type == "content_block_start"]
                    reply = events.get_final_message()
                assert starts == [(0, "text"), (1, "tool_use")]
            else:
                reply = client.messages.create(**args)
            assert reply.stop_reason == "tool_use"
            assert [b.type for b in reply.content] == ["text", "tool_use"]
            assert reply.content[0].text == "ing the weather."
            assert (reply.content[1].id, reply.content[1].input) == ("toolu_01", {"city": "Paris"})
            sent = claude.last_body
            assert sent["tools"][0]["name"] == "get_weather"
            assert sent["messages"][-1] == {"role": "assistant", "content": "Check"}
        finally:
            client.close()
            running.stop()
