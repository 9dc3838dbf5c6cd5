"""Tools on OpenAI-compatible servers, against the fake that refuses and answers as
llama-server and vLLM do: native tool calling where the server parses calls, the grammar
method (tools in the prompt, the reply constrained by the server's grammar field, read back
as ToolCalls) where it does not, the tool probe, and ``--tools`` in the servers file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import llmcli
from llmcli import ToolCall
from llmcli.errors import ToolsUnsupportedError
from tests.fakes.openai import FRESH_TURN, FakeOpenAI
from tests.grammar import accepts


def get_weather(city: str) -> dict[str, Any]:
    """Get the current weather for a city."""
    return {"city": city, "sky": "clear"}


CALL = [{"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}]
FIELDS = {"llama-server": ("json_schema", "trailing_assistant"),
          "vllm": ("structured_outputs", "continue_final_message")}


def add_server(servers_file: Path, fake: FakeOpenAI, **extra: Any) -> None:
    schema_field, style = FIELDS[fake.mode]
    servers_file.parent.mkdir(parents=True, exist_ok=True)
    servers_file.write_text(json.dumps({"servers": [{
        "id": "local", "model_name": "served", "base_url": fake.url + "/v1",
        "prefill_style": style, "schema_field": schema_field, **extra}]}))


def grammar_of(body: dict[str, Any]) -> str | None:
    found = body.get("grammar") or (body.get("structured_outputs") or {}).get("grammar")
    return str(found) if found is not None else None


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("mode", ["llama-server", "vllm"])
def test_without_a_tool_parser_the_grammar_method_calls_and_the_chain_completes(
        user_dir: Path, load_plugins: Callable[..., None], mode: str, stream: bool) -> None:
    with FakeOpenAI(mode, continuation="It is clear in Paris.") as fake:
        fake.tool_parser = False
        fake.tool_calls = [CALL]
        add_server(user_dir / "openai-servers.json", fake)  # unprobed: the grammar
        load_plugins("llmcli-openai")
        model = llmcli.get_model("local")
        assert model.get_tool_support(model.Options()).value == "grammar"
        chain = model.chain("Weather in Paris?", tools=[get_weather], stream=stream, log=False)
        # The fake answers a question without a prefill with its "fresh turn" text.
        assert chain.text() == FRESH_TURN
        assert chain.responses[0].tool_calls()[0].name == "get_weather"
        assert chain.responses[0].tool_calls()[0].arguments == {"city": "Paris"}
        assert chain.responses[0].stop_reason == "tool_use"
        first, second = (r.body for r in fake.chat_requests[-2:])
        assert "tools" not in first and "tool_choice" not in first
        assert '"name": "get_weather"' in first["messages"][0]["content"]  # the system text
        grammar = grammar_of(first)
        assert grammar is not None and accepts(
            grammar, '<tool_call>{"name": "get_weather", "arguments": {"city": "P"}}</tool_call>')
        assert not accepts(grammar, '<tool_call>{"name": "get_weather", "arguments": {}}'
                                    '</tool_call>')
        # The call and its result go back as text; the reply is free to be text again.
        assert second["messages"][-2] == {"role": "assistant", "content": (
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>')}
        assert second["messages"][-1]["content"].startswith("<tool_response>")
        assert accepts(str(grammar_of(second)), FRESH_TURN)


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("mode", ["llama-server", "vllm"])
def test_the_async_api_reads_the_grammar_method_s_call_streamed_and_not(
        user_dir: Path, load_plugins: Callable[..., None], mode: str, stream: bool) -> None:
    """The async template (``execute_async``, what ``llmcli serve`` runs) reads a reply
    written as a ``<tool_call>`` back as a call, as the sync one does."""
    with FakeOpenAI(mode, continuation="It is clear in Paris.") as fake:
        fake.tool_parser = False
        fake.tool_calls = [CALL]
        add_server(user_dir / "openai-servers.json", fake)
        load_plugins("llmcli-openai")

        async def main() -> tuple[str, list[ToolCall], str | None]:
            model = llmcli.get_async_model("local")
            chain = model.chain("Weather in Paris?", tools=[get_weather], stream=stream,
                                log=False)
            text = await chain.text()
            return text, await chain.tool_calls(), chain.responses[0].stop_reason

        text, calls, stop_reason = asyncio.run(main())
        assert text == FRESH_TURN
        assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]
        assert stop_reason == "tool_use"


@pytest.mark.parametrize("stream", [True, False])
def test_native_tool_calls_come_back_parsed_streamed_and_not(
        user_dir: Path, load_plugins: Callable[..., None], stream: bool) -> None:
    with FakeOpenAI("vllm", continuation="Clear.") as fake:
        fake.tool_calls = [CALL]
        add_server(user_dir / "openai-servers.json", fake, tools="native")
        load_plugins("llmcli-openai")
        chain = llmcli.get_model("local").chain("Weather?", tools=[get_weather],
                                                stream=stream, log=False)
        assert chain.text() == FRESH_TURN
        assert chain.responses[0].tool_calls() == [
            ToolCall("call_1", "get_weather", {"city": "Paris"})]
        first = fake.chat_requests[-2].body
        assert first["tools"][0]["function"]["name"] == "get_weather"
        assert grammar_of(first) is None


def test_vllm_without_a_tool_parser_is_native_for_named_and_grammar_for_the_rest(
        user_dir: Path, load_plugins: Callable[..., None]) -> None:
    """vLLM without --tool-call-parser (0.32.0, measured): "required" and "auto" are 400s,
    a named function its own guided decoding; the probe records that, and a "required" call
    goes through the grammar."""
    with FakeOpenAI("vllm", continuation="Clear.") as fake:
        fake.tool_parser = False
        fake.tool_calls = [CALL]  # what its guided decoding makes for the probe's named call
        load_plugins("llmcli-openai")
        result = CliRunner().invoke(_cli(), [
            "openai-servers", "add", "local", "--preset", "vllm", "--model-name", "served",
            "--base-url", fake.url + "/v1"])
        assert result.exit_code == 0, result.output
        assert "tools native for named, else grammar" in result.output
        entry = json.loads((user_dir / "openai-servers.json").read_text())["servers"][0]
        assert entry["probe"]["tools"]["choices"] == {
            "required": "rejects", "named": "calls", "auto": "rejects"}
        assert "--tool-call-parser" in entry["probe"]["tools"]["seen"]
        load_plugins("llmcli-openai")
        model = llmcli.get_model("local")
        fake.tool_calls = [CALL]
        response = model.prompt("Weather?", tools=[get_weather], tool_choice="required",
                                log=False)
        response.text()
        assert "tools" not in fake.chat_requests[-1].body
        assert response.tool_calls()[0].arguments == {"city": "Paris"}
        fake.tool_calls = [CALL]
        model.prompt("Weather?", tools=[get_weather], tool_choice="get_weather",
                     log=False).text()
        assert fake.chat_requests[-1].body["tool_choice"] == {
            "type": "function", "function": {"name": "get_weather"}}


def _cli() -> Any:
    from llmcli.cli import cli

    return cli


@pytest.mark.parametrize(("mode", "parser", "expected"), [
    ("llama-server", False, "grammar"),
    ("llama-server", True, "native"),
    ("vllm", True, "native"),
])
def test_the_probe_finds_how_a_server_calls_tools(
        user_dir: Path, load_plugins: Callable[..., None], mode: str, parser: bool,
        expected: str) -> None:
    with FakeOpenAI(mode) as fake:
        fake.tool_parser = parser
        fake.tool_calls = [CALL, CALL, CALL]
        load_plugins("llmcli-openai")
        result = CliRunner().invoke(_cli(), [
            "openai-servers", "add", "local", "--preset", mode, "--model-name", "served",
            "--base-url", fake.url + "/v1"])
        assert result.exit_code == 0, result.output
        listed = CliRunner().invoke(_cli(), ["openai-servers", "list"]).output
        assert f"tools={expected}" in listed
        if not parser:
            assert "tools param requires --jinja flag" in json.dumps(
                json.loads((user_dir / "openai-servers.json").read_text()))
        load_plugins("llmcli-openai")  # registers the server added
        models = CliRunner().invoke(_cli(), ["models", "--json"]).output
        assert {"local": expected}.items() <= {
            m["model_id"]: m["tool_support"] for m in json.loads(models)}.items()


def test_declared_tools_win_and_none_refuses_before_any_request(
        user_dir: Path, load_plugins: Callable[..., None]) -> None:
    with FakeOpenAI("llama-server") as fake:
        load_plugins("llmcli-openai")
        result = CliRunner().invoke(_cli(), [
            "openai-servers", "add", "local", "--preset", "llama-server", "--model-name",
            "served", "--base-url", fake.url + "/v1", "--prefill-style",
            "trailing_assistant", "--tools", "none"])
        assert result.exit_code == 0, result.output
        load_plugins("llmcli-openai")
        with pytest.raises(ToolsUnsupportedError):
            llmcli.get_model("local").prompt("x", tools=[get_weather], log=False)
        assert fake.chat_requests == []
        bad = CliRunner().invoke(_cli(), [
            "openai-servers", "add", "other", "--base-url", fake.url + "/v1",
            "--model-name", "m", "--prefill-style", "none", "--tools", "grammar"])
        assert bad.exit_code == 2 and "grammar needs a server that takes a grammar" in (
            bad.output)


def test_a_text_prefill_commits_the_reply_to_text(
        user_dir: Path, load_plugins: Callable[..., None]) -> None:
    with FakeOpenAI("llama-server", continuation=" it is sunny.") as fake:
        fake.tool_parser = False
        add_server(user_dir / "openai-servers.json", fake)
        load_plugins("llmcli-openai")
        response = llmcli.get_model("local").prompt(
            "Weather in Paris?", tools=[get_weather], prefill="In Paris", log=False)
        assert response.text() == "In Paris it is sunny."
        body = fake.chat_requests[-1].body
        assert grammar_of(body) is None and body["messages"][-1] == {
            "role": "assistant", "content": "In Paris"}
