"""A conversation whose earlier turn sent an attachment AND called a tool (#29): continuing
it with ``-c``, ``--cid`` or the Python conversation loaded from the log resends both, the
image with its prompt and the call with its result, checked at the request each fake provider
receives (Anthropic's and OpenAI's wires, over real HTTP, through the installed command).
The turn that carries the tool results does not send the image again."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

import llmcli
from llmcli.record import ToolResult
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from tests.script import SCRIPT, env_for
from tests.test_attachments import png

ANTHROPIC_KEY = "sk-ant-test-0123456789abcdef"
OPENAI_KEY = "sk-openai-test-0123456789abcdef"
CALL_ID = "call_v1"
QUESTION = "Which llmcli read this image?"


class Wire:
    """One provider: its fake, the model, and how its request shows images and tools."""

    def __init__(self, name: str, fake: Any, model: str, env: dict[str, str]) -> None:
        self.name, self.fake, self.model, self.env = name, fake, model, env

    def queue_call(self) -> None:
        """The next request with tools calls llmcli_version; the one after answers."""
        if self.name == "anthropic":
            self.fake.tool_uses = [[{"id": CALL_ID, "name": "llmcli_version", "input": {}}]]
            self.fake.reply = "It was llmcli."
        else:
            self.fake.tool_calls = [[{"id": CALL_ID, "name": "llmcli_version",
                                      "arguments": "{}"}]]
            self.fake.continuation = "It was llmcli."

    def messages(self) -> list[dict[str, Any]]:
        bodies = (self.fake.requests if self.name == "anthropic"
                  else self.fake.chat_requests)
        return list(bodies[-1].body["messages"])

    def images(self, messages: list[dict[str, Any]]) -> list[tuple[int, str]]:
        """(message index, base64 data) of every image sent."""
        found = []
        for i, message in enumerate(messages):
            content = message.get("content")
            for part in content if isinstance(content, list) else []:
                if part.get("type") == "image":
                    found.append((i, part["source"]["data"]))
                elif part.get("type") == "image_url":
                    found.append((i, part["image_url"]["url"].split(",", 1)[1]))
        return found

    def calls_and_results(self, messages: list[dict[str, Any]]
                          ) -> list[tuple[int, str, str]]:
        """(message index, "call"/"result", call id) in the order sent."""
        found = []
        for i, message in enumerate(messages):
            if self.name == "openai":
                found += [(i, "call", c["id"]) for c in message.get("tool_calls") or []]
                if message["role"] == "tool":
                    found.append((i, "result", message["tool_call_id"]))
                continue
            content = message.get("content")
            for block in content if isinstance(content, list) else []:
                if block.get("type") == "tool_use":
                    found.append((i, "call", block["id"]))
                elif block.get("type") == "tool_result":
                    found.append((i, "result", block["tool_use_id"]))
        return found


@pytest.fixture(params=["anthropic", "openai"])
def wire(request: pytest.FixtureRequest) -> Iterator[Wire]:
    if request.param == "anthropic":
        with FakeAnthropic(api_key=ANTHROPIC_KEY) as fake:
            yield Wire("anthropic", fake, "claude-sonnet-4-5", {
                "LLMCLI_LOAD_PLUGINS": "llmcli-anthropic", "ANTHROPIC_BASE_URL": fake.url,
                "ANTHROPIC_API_KEY": ANTHROPIC_KEY})
    else:
        with FakeOpenAI(api_key=OPENAI_KEY) as fake:
            yield Wire("openai", fake, "gpt-4o-mini", {
                "LLMCLI_LOAD_PLUGINS": "llmcli-openai", "OPENAI_BASE_URL": fake.url + "/v1",
                "OPENAI_API_KEY": OPENAI_KEY})


def run(user_dir: Path, wire: Wire, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(SCRIPT), *args], env=env_for(user_dir, **wire.env),
                            capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    return result


def _conversation_id(user_dir: Path) -> str:
    with sqlite3.connect(user_dir / "logs.db") as db:
        return str(db.execute("select conversation_id from responses order by rowid desc "
                              "limit 1").fetchone()[0])


def _check_resent(wire: Wire, data: str, prompt: str, tools: bool = True) -> None:
    """The last request: the image once, with the first prompt; the call and its result
    after it; the reply after the tool; the new prompt last.

    Anthropic refuses ``tool_use``/``tool_result`` blocks in a request without ``tools``
    (400, as its fake does): continued without ``-T``, the call and the result go as text
    in their turns; OpenAI takes them as they were either way."""
    messages = wire.messages()
    assert wire.images(messages) == [(0, data)]
    first = messages[0]["content"]
    assert any(p.get("text") == QUESTION for p in first)
    if wire.name == "anthropic" and not tools:
        assert wire.calls_and_results(messages) == []
        call_turn = next(i for i, m in enumerate(messages) if isinstance(m["content"], str)
                         and '<tool_call>{"name": "llmcli_version"' in m["content"])
        assert messages[call_turn]["role"] == "assistant"
        result_turn = messages[call_turn + 1]
        assert result_turn["role"] == "user"
        assert f'"output": "{version("llmcli")}"' in result_turn["content"]
        assert messages[-2]["role"] == "assistant" and "It was llmcli." in json.dumps(
            messages[-2])
        assert messages[-1] == {"role": "user", "content": prompt}
        return
    sent = wire.calls_and_results(messages)
    assert [(kind, call) for _, kind, call in sent] == [("call", CALL_ID), ("result", CALL_ID)]
    assert 0 < sent[0][0] < sent[1][0]
    result = messages[sent[1][0]]
    output = (result["content"] if wire.name == "openai"
              else next(b for b in result["content"] if b["type"] == "tool_result")["content"])
    assert output == version("llmcli")  # what llmcli_version returned
    assert messages[-2]["role"] == "assistant" and "It was llmcli." in json.dumps(messages[-2])
    assert messages[-1] == {"role": "user", "content": prompt}


def test_continue_resends_the_attachment_and_the_tool_call(
        wire: Wire, tmp_path: Path, user_dir: Path, monkeypatch: pytest.MonkeyPatch,
        load_plugins: Any) -> None:
    image = tmp_path / "receipt.png"
    image.write_bytes(png(2, 2))
    data = base64.b64encode(image.read_bytes()).decode()
    wire.queue_call()
    out = run(user_dir, wire, "-m", wire.model, QUESTION, "-a", str(image), "-T",
              "llmcli_version")
    assert out.stdout.strip().endswith("It was llmcli.")
    # The chain's second request: the image once (with the question), then call, result.
    during = wire.messages()
    assert wire.images(during) == [(0, data)]
    assert [k for _, k, _ in wire.calls_and_results(during)] == ["call", "result"]
    for args in (["-c", "And then?"], ["--cid", _conversation_id(user_dir), "Once more?"]):
        run(user_dir, wire, *args)
        _check_resent(wire, data, args[-1], tools=False)
    run(user_dir, wire, "-c", "-T", "llmcli_version", "With the tool?")
    _check_resent(wire, data, "With the tool?")
    # The Python API, from the log.
    for name, value in wire.env.items():
        monkeypatch.setenv(name, value)
    load_plugins(*wire.env["LLMCLI_LOAD_PLUGINS"].split(","))
    conversation = llmcli.load_conversation(_conversation_id(user_dir))
    assert conversation.prompt("From Python?", log=False).text()
    _check_resent(wire, data, "From Python?", tools=False)


def test_a_turn_with_tool_results_and_an_attachment_keeps_both(
        wire: Wire, tmp_path: Path, user_dir: Path, monkeypatch: pytest.MonkeyPatch,
        load_plugins: Any) -> None:
    """A client's turn that answers a call with a result and an image (a screenshot tool,
    say) is sent with both, and resent with both from the log."""
    image = tmp_path / "screen.png"
    image.write_bytes(png(3, 1))
    data = base64.b64encode(image.read_bytes()).decode()
    for name, value in wire.env.items():
        monkeypatch.setenv(name, value)
    load_plugins(*wire.env["LLMCLI_LOAD_PLUGINS"].split(","))
    model = llmcli.get_model(wire.model)
    tool = llmcli.Tool.function(_screenshot)
    wire.queue_call()
    conversation = model.conversation()
    first = conversation.prompt(QUESTION, tools=[tool])
    [call] = first.tool_calls()
    result = ToolResult(call.id, call.name, '"see the image"')
    conversation.prompt("Here it is.", tools=[tool], tool_results=[result],
                        attachments=[llmcli.Attachment(path=str(image))]).text()

    def check(prompt: str, tools: bool = True) -> None:
        messages = wire.messages()
        assert messages[-1] == {"role": "user", "content": prompt}
        if wire.name == "anthropic" and not tools:  # as text (see _check_resent)
            assert wire.calls_and_results(messages) == []
            [(turn, _)] = wire.images(messages)
            [text] = [b["text"] for b in messages[turn]["content"] if b["type"] == "text"]
            assert text.startswith('<tool_response>{"name": "llmcli_version", "output": '
                                   '"\\"see the image\\""}</tool_response>')
            return
        sent = wire.calls_and_results(messages)
        assert [(k, c) for _, k, c in sent] == [("call", CALL_ID), ("result", CALL_ID)]
        # The image is in the turn that carries the result.
        assert wire.images(messages) == [(sent[1][0] + (wire.name == "openai"), data)]

    conversation.prompt("In memory?", tools=[tool]).text()
    check("In memory?")
    run(user_dir, wire, "-c", "From the log?")
    check("From the log?", tools=False)
    run(user_dir, wire, "-c", "-T", "llmcli_version", "With a tool?")
    check("With a tool?")


def _screenshot() -> str:
    """A screenshot of the screen."""
    return "see the image"
