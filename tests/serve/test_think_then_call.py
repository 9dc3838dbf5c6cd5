"""One reply that thinks, says something, then calls a tool, through ``llmcli serve`` (#29):
on the Anthropic wire a thinking block, a text block and a tool_use block, each with its own
index, read by the anthropic SDK (``messages.stream`` and ``messages.create``); on the OpenAI
wire ``reasoning_content``, then the content, then ``tool_calls``, read by the openai SDK
(streamed, with its stream helper, and not); and the log row with all three. Against the fake
providers over real HTTP, with a prefill on the request (the backends emulate it: the API
forbids a prefill with extended thinking, so the fakes' replies repeat it)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from tests.script import SCRIPT, env_for
from tests.serve.conftest import Server, start_server

ANTHROPIC_KEY = "sk-ant-test-0123456789abcdef"
OPENAI_KEY = "sk-openai-test-0123456789abcdef"
THOUGHT = "The user wants the weather; I should call the tool."
PREFILL = "Let me"
SAID = " check the weather in Paris."  # the text after the prefill, before the call
CALL = {"id": "call_7", "name": "get_weather", "input": {"city": "Paris"}}
ANTHROPIC_TOOLS: Any = [{"name": "get_weather", "description": "The weather in a city.",
                         "input_schema": {"type": "object",
                                          "properties": {"city": {"type": "string"}},
                                          "required": ["city"]}}]
OPENAI_TOOLS: Any = [{"type": "function", "function": {
    "name": ANTHROPIC_TOOLS[0]["name"], "description": ANTHROPIC_TOOLS[0]["description"],
    "parameters": ANTHROPIC_TOOLS[0]["input_schema"]}}]
QUESTION = "Weather in Paris?"


def _logged(running: Server, prompt: str) -> tuple[dict[str, Any], list[tuple[str, str, Any]]]:
    """The last response logged for ``prompt``, and its tool calls."""
    row = next(r for r in reversed(running.rows()) if r["prompt"] == prompt)
    with sqlite3.connect(running.user_dir / "logs.db") as db:
        calls = [(c, n, json.loads(a)) for c, n, a in db.execute(
            "select call_id, name, arguments from tool_calls where response_id = ? "
            "order by position", [row["id"]])]
    return row, calls


# -- the Anthropic wire ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def claude() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=ANTHROPIC_KEY) as fake:
        fake.thinking_text = THOUGHT
        yield fake


@pytest.fixture(scope="module")
def claude_server(claude: FakeAnthropic, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Server]:
    user = tmp_path_factory.mktemp("serve-think-call") / "user"
    env = env_for(user, LLMCLI_LOAD_PLUGINS="llmcli-anthropic")
    # Extended thinking on for the model, as its operator sets it (the wire has no field).
    subprocess.run([str(SCRIPT), "models", "options", "set", "claude-sonnet-4-5", "thinking",
                    "1"], env=env, check=True, capture_output=True)
    running = start_server(user, plugins="llmcli-anthropic", ANTHROPIC_BASE_URL=claude.url,
                           ANTHROPIC_API_KEY=ANTHROPIC_KEY)
    yield running
    running.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_anthropic_wire_thinking_text_then_tool_use(
        claude: FakeAnthropic, claude_server: Server, stream: bool) -> None:
    claude.reply = PREFILL + SAID  # emulated: the model repeats the prefill
    claude.tool_uses = [[CALL]]
    client = anthropic.Anthropic(base_url=claude_server.url, api_key="unused", max_retries=0)
    prompt = f"{QUESTION} ({'stream' if stream else 'create'})"
    args: Any = dict(model="claude-sonnet-4-5", max_tokens=4000, tools=ANTHROPIC_TOOLS,
                     messages=[{"role": "user", "content": prompt},
                               {"role": "assistant", "content": PREFILL}])
    try:
        if stream:
            with client.messages.stream(**args) as events:
                seen = [(e.type, getattr(e, "index", None),
                         getattr(getattr(e, "content_block", None), "type", None)
                         or getattr(getattr(e, "delta", None), "type", None))
                        for e in events]
                reply = events.get_final_message()
        else:
            reply = client.messages.create(**args)
    finally:
        client.close()
    assert claude.last_body["thinking"]["type"] == "enabled"  # it did think upstream
    assert [b.type for b in reply.content] == ["thinking", "text", "tool_use"]
    thinking, text, use = reply.content
    assert thinking.thinking == THOUGHT  # type: ignore[union-attr]
    assert text.text == SAID  # type: ignore[union-attr]  # the continuation of the prefill
    assert (use.id, use.name, use.input) == (  # type: ignore[union-attr]
        CALL["id"], CALL["name"], CALL["input"])
    assert reply.stop_reason == "tool_use"
    if stream:
        blocks = [(i, kind) for name, i, kind in seen if name == "content_block_start"]
        assert blocks == [(0, "thinking"), (1, "text"), (2, "tool_use")]
        # Each block is opened, filled and closed before the next opens.
        open_index = None
        for name, index, kind in seen:
            if name == "content_block_start":
                assert open_index is None
                open_index = index
            elif name == "content_block_delta":
                assert index == open_index
                assert kind == {0: "thinking_delta", 1: "text_delta",
                                2: "input_json_delta"}[index]
            elif name == "content_block_stop":
                assert index == open_index
                open_index = None
        assert open_index is None
        assert seen[-1][0] == "message_stop"
    row, calls = _logged(claude_server, prompt)
    assert (row["reasoning"], row["text"]) == (THOUGHT, PREFILL + SAID)
    assert calls == [(CALL["id"], CALL["name"], CALL["input"])]


# -- the OpenAI wire -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=OPENAI_KEY) as fake:
        fake.reasoning = THOUGHT
        fake.tool_text = PREFILL + SAID  # emulated: the model repeats the prefill
        yield fake


@pytest.fixture(scope="module")
def gpt_server(gpt: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("serve-think-call") / "user",
                           plugins="llmcli-openai", OPENAI_BASE_URL=gpt.url + "/v1",
                           OPENAI_API_KEY=OPENAI_KEY)
    yield running
    running.stop()


def _openai_call() -> dict[str, str]:
    return {"id": CALL["id"], "name": CALL["name"], "arguments": json.dumps(CALL["input"])}


def _messages(prompt: str) -> Any:
    return [{"role": "user", "content": prompt},
            {"role": "assistant", "content": PREFILL, "prefix": True}]


@pytest.mark.parametrize("how", ["create", "stream", "stream-helper"])
def test_openai_wire_reasoning_content_then_tool_calls(
        gpt: FakeOpenAI, gpt_server: Server, how: str) -> None:
    gpt.tool_calls = [[_openai_call()]]
    client = openai.OpenAI(base_url=gpt_server.v1, api_key="unused", max_retries=0)
    prompt = f"{QUESTION} ({how})"
    args: Any = dict(model="gpt-4o-mini", messages=_messages(prompt), tools=OPENAI_TOOLS)
    try:
        if how == "create":
            choice = client.chat.completions.create(**args).choices[0]
            message, finish = choice.message, choice.finish_reason
        elif how == "stream":
            kinds: list[str] = []
            thought, content, finish = "", "", None
            pieces: dict[int, list[str]] = {}
            for chunk in client.chat.completions.create(**args, stream=True):
                for delta_choice in chunk.choices:
                    delta = delta_choice.delta
                    if piece := getattr(delta, "reasoning_content", None):
                        kinds.append("reasoning")
                        thought += piece
                    if delta.content:
                        kinds.append("content")
                        content += delta.content
                    for call in delta.tool_calls or []:
                        kinds.append("tool_calls")
                        entry = pieces.setdefault(call.index, ["", "", ""])
                        entry[0] = call.id or entry[0]
                        entry[1] += call.function.name or "" if call.function else ""
                        entry[2] += call.function.arguments or "" if call.function else ""
                    finish = delta_choice.finish_reason or finish
            # Reasoning first, then the text, then the calls, never interleaved.
            order = [k for n, k in enumerate(kinds) if n == 0 or kinds[n - 1] != k]
            assert order == ["reasoning", "content", "tool_calls"]
            assert (thought, content) == (THOUGHT, SAID)
            assert [tuple(v) for _, v in sorted(pieces.items())] == [
                (CALL["id"], CALL["name"], json.dumps(CALL["input"]))]
            message = None
        else:
            with client.chat.completions.stream(**args) as events:
                for _ in events:
                    pass
                final = events.get_final_completion().choices[0]
            message, finish = final.message, final.finish_reason
    finally:
        client.close()
    assert finish == "tool_calls"
    if message is not None:
        assert getattr(message, "reasoning_content", None) == THOUGHT
        assert message.content == SAID
        assert [(c.id, c.function.name, json.loads(c.function.arguments))  # type: ignore[union-attr]
                for c in message.tool_calls or []] == [
            (CALL["id"], CALL["name"], CALL["input"])]
    assert gpt.chat_requests[-1].body["tools"][0]["function"]["name"] == "get_weather"
    row, calls = _logged(gpt_server, prompt)
    assert (row["reasoning"], row["text"]) == (THOUGHT, PREFILL + SAID)
    assert calls == [(CALL["id"], CALL["name"], CALL["input"])]
