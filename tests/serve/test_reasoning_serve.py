"""``llmcli serve`` and reasoning (#28): the OpenAI wire returns it as ``reasoning_content``
(streamed as deltas, as vLLM does), the Anthropic wire as thinking blocks, read by the
official SDKs; and the three-state ``prefix`` rule: an explicit ``"prefix": false``, or
``add_generation_prompt: true`` without ``continue_final_message``, is a finished turn."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.serve.conftest import API_KEY, Server, start_server

THOUGHT = "They want a state. Ohio is one."
PROMPT = "Name a state"
PREFILL = "The state is"
CONTINUATION = f"reply to: {PROMPT}"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def thinking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose test models reason first (THOUGHT, 4 characters a chunk)."""
    running = start_server(tmp_path_factory.mktemp("serve-reasoning") / "user",
                           "--api-key", API_KEY, "-m", "test-eats",
                           LLMCLI_TEST_THINKING=THOUGHT)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def oai(thinking_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=thinking_server.v1, api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def claude(thinking_server: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=thinking_server.url, api_key=API_KEY, max_retries=0)


PREFILLED = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": PREFILL}]


@pytest.mark.parametrize("model", ["test-eats", "test-echoes", "test-emulated"])
def test_openai_wire_reasoning_content(oai: openai.OpenAI, model: str) -> None:
    reply = oai.chat.completions.create(model=model, messages=PREFILLED)  # type: ignore[arg-type]
    message = reply.choices[0].message
    assert message.content == CONTINUATION  # the answer alone, after the prefill
    assert getattr(message, "reasoning_content", None) == THOUGHT
    stream = oai.chat.completions.create(model=model, messages=PREFILLED,  # type: ignore[arg-type]
                                         stream=True)
    kinds, thought, content = [], "", ""
    for chunk in stream:
        for choice in chunk.choices:
            if piece := getattr(choice.delta, "reasoning_content", None):
                kinds.append("reasoning")
                thought += piece
            if choice.delta.content:
                kinds.append("content")
                content += choice.delta.content
    assert (thought, content) == (THOUGHT, CONTINUATION)
    assert kinds.count("reasoning") > 1  # delta by delta
    assert kinds == sorted(kinds, key=lambda k: k != "reasoning")  # reasoning first


def test_anthropic_wire_thinking_blocks(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model="test-echoes", max_tokens=100,
                                     messages=PREFILLED)  # type: ignore[arg-type]
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == THOUGHT
    assert text.type == "text" and text.text == CONTINUATION
    with claude.messages.stream(model="test-eats", max_tokens=100,
                                messages=PREFILLED) as stream:  # type: ignore[arg-type]
        events = list(stream)
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == THOUGHT  # type: ignore[union-attr]
    assert final.content[1].text == CONTINUATION  # type: ignore[union-attr]
    starts = [e.index for e in events if e.type == "content_block_start"]
    stops = [e.index for e in events if e.type == "content_block_stop"]
    assert starts == stops == [0, 1]
    # A client sends the thinking block back with the turn: it is not part of the text.
    again = claude.messages.create(model="test-eats", max_tokens=100, messages=[
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": THOUGHT, "signature": ""},
            {"type": "text", "text": "Ohio."}]},
        {"role": "user", "content": "Another"}])
    assert again.content[1].text == "reply to: Another"  # type: ignore[union-attr]


def test_the_log_keeps_the_reasoning(oai: openai.OpenAI, thinking_server: Server) -> None:
    oai.chat.completions.create(model="test-eats", messages=[  # type: ignore[arg-type]
        {"role": "user", "content": "logged?"}])
    row = next(r for r in reversed(thinking_server.rows()) if r["prompt"] == "logged?")
    assert row["reasoning"] == THOUGHT and row["text"] == "reply to: logged?"


def post(server: Server, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.v1}/chat/completions", headers=AUTH, timeout=30,
                      json={"model": "test-eats", **body})


@pytest.mark.parametrize("final, extra, prefill", [
    ({}, {}, True),  # simply last: a prefill (llama.cpp)
    ({"prefix": True}, {}, True),
    ({}, {"continue_final_message": True, "add_generation_prompt": False}, True),
    ({"prefix": True}, {"add_generation_prompt": True}, True),  # the marker wins
    ({}, {"add_generation_prompt": False}, True),
    ({"prefix": False}, {}, False),
    ({}, {"add_generation_prompt": True}, False),
    ({"prefix": False}, {"continue_final_message": True, "add_generation_prompt": False},
     False),
])
def test_prefix_three_states(thinking_server: Server, final: dict[str, Any],
                             extra: dict[str, Any], prefill: bool) -> None:
    messages = [{"role": "user", "content": PROMPT},
                {"role": "assistant", "content": PREFILL, **final}]
    reply = post(thinking_server, {"messages": messages, **extra})
    if prefill:
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == CONTINUATION
        return
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["message"].startswith("The final assistant message is a finished turn")
    assert error["param"] == "messages"

