"""Tools on the real servers (SmolLM2): llama-server started with ``--no-jinja`` through the
grammar method, and the probe's verdict on both llama-servers (jinja on by default in this
build; SmolLM2's template has no tools section and "required" is not enforced); vLLM (the
session's one server, no tool parser) through the grammar and natively for ``required``.
Each: a call whose arguments validate against the schema, streamed and not, and a chain
that completes with the result."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from llmcli import Tool
from tests.realserver.conftest import serve_llama


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


ADD = Tool.function(add)


@pytest.fixture(scope="module")
def llama_no_jinja(llama_server_binary: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from serve_llama(llama_server_binary, tmp_path_factory, "--no-jinja")


def _model(base_url: str, tools: str, server: str) -> Any:
    from llmcli_openai._models import CompatibleModel

    if server == "vllm":
        # No tool parser: the choices the probe saw it call natively are its own (vLLM 0.32.0
        # refuses "required" and "auto" without --tool-call-parser), the rest the grammar's.
        return CompatibleModel("srv", model_name="smollm2", base_url=base_url,
                               prefill_style="continue_final_message",
                               schema_field="structured_outputs", tools=tools,  # type: ignore[arg-type]
                               native_choices=_vllm_native(base_url))
    return CompatibleModel("srv", model_name="smollm2", base_url=base_url,
                           prefill_style="trailing_assistant", schema_field="json_schema",
                           tools=tools)  # type: ignore[arg-type]


_probed: dict[str, Any] = {}


def _vllm_tools(base_url: str) -> Any:
    """What the probe finds on the session's vLLM (asked once)."""
    from llmcli_openai._probe import probe_server

    if base_url not in _probed:
        _probed[base_url] = probe_server(base_url, "smollm2", styles=(), tools=True,
                                         schema_field="structured_outputs").tools
    return _probed[base_url]


def _vllm_native(base_url: str) -> tuple[str, ...]:
    probe = _vllm_tools(base_url)
    return (*(kind for kind, seen in probe.choices.items() if seen == "calls"), "none")


def test_the_probe_reads_vllm(vllm_server: str) -> None:
    """vLLM 0.32.0's CPU build without a tool parser refuses "required", a named function
    (400 'tool_choice=function "get_time" requires --tool-call-parser to be set') and
    "auto": the probe sees the three refusals and, since the server takes a grammar, falls
    back to it (docs/providers/vllm.md)."""
    probe = _vllm_tools(vllm_server)
    assert probe.choices == {"required": "rejects", "named": "rejects", "auto": "rejects"}, probe
    assert "--tool-call-parser" in probe.seen
    assert probe.chosen == "grammar"


def _check_chain(model: Any, stream: bool) -> None:
    chain = model.chain("What is 17 plus 25?", tools=[add], tool_choice="required",
                        prefill_final="The answer is", stream=stream, max_tokens=60,
                        temperature=0, log=False)
    chain.text()
    calls = chain.responses[0].tool_calls()
    assert len(calls) == 1 and calls[0].name == "add"
    jsonschema.validate(calls[0].arguments, dict(ADD.parameters))
    assert chain.responses[1].request.tool_results[0].output == str(
        calls[0].arguments["a"] + calls[0].arguments["b"])
    assert chain.last.status == "complete"
    assert chain.last.text().startswith("The answer is")


@pytest.mark.parametrize("stream", [True, False])
def test_llama_server_without_jinja_calls_through_the_grammar(llama_no_jinja: str,
                                                             stream: bool) -> None:
    _check_chain(_model(llama_no_jinja, "grammar", "llama"), stream)


@pytest.mark.parametrize("tools", ["grammar", "native"])
@pytest.mark.parametrize("stream", [True, False])
def test_vllm_calls_tools(vllm_server: str, tools: str, stream: bool) -> None:
    _check_chain(_model(vllm_server, tools, "vllm"), stream)


def test_the_probe_reads_both_llama_servers(llama_server: str, llama_no_jinja: str) -> None:
    from llmcli_openai._probe import probe_server

    plain = probe_server(llama_no_jinja, "smollm2", styles=(), tools=True,
                         schema_field="json_schema").tools
    assert plain is not None and plain.chosen == "grammar", plain
    assert "--jinja" in plain.seen
    # Jinja on (the default): tools are taken, but with SmolLM2's template (no tools
    # section) "required" comes back as plain text (measured: '17 + 25 = 32.'), so the
    # probe does not trust the server's own calling and picks the grammar.
    jinja = probe_server(llama_server, "smollm2", styles=(), tools=True,
                         schema_field="json_schema").tools
    assert jinja is not None and jinja.choices["required"] == "text", jinja
    assert jinja.chosen == "grammar", jinja


# -- llmcli serve in front, driven by the openai SDK's tool loop --------------------------------

SDK_TOOLS: Any = [{"type": "function", "function": {
    "name": "add", "description": "Add two integers.",
    "parameters": dict(ADD.parameters)}}]


@pytest.mark.parametrize("server", ["llama", "vllm"])
def test_serve_in_front_runs_the_openai_sdk_tool_loop(server: str, request: pytest.FixtureRequest,
                                                      tmp_path: Path) -> None:
    import openai

    from tests.serve.conftest import start_server

    base_url = request.getfixturevalue("llama_no_jinja" if server == "llama" else "vllm_server")
    user = tmp_path / "serve-user"
    user.mkdir()
    field, style = (("json_schema", "trailing_assistant") if server == "llama"
                    else ("structured_outputs", "continue_final_message"))
    (user / "openai-servers.json").write_text(json.dumps({"servers": [{
        "id": "srv", "model_name": "smollm2", "base_url": base_url, "prefill_style": style,
        "schema_field": field, "tools": "grammar"}]}))
    running = start_server(user, plugins="llmcli-openai")
    try:
        client = openai.OpenAI(base_url=running.v1, api_key="unused", max_retries=0)
        messages: Any = [{"role": "user", "content": "What is 17 plus 25?"}]
        message = client.chat.completions.create(
            model="srv", messages=messages, tools=SDK_TOOLS, tool_choice="required",
            max_tokens=60, temperature=0).choices[0].message
        (call,) = message.tool_calls or []
        assert call.function.name == "add"
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, dict(ADD.parameters))
        messages += [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                     {"role": "tool", "tool_call_id": call.id,
                      "content": str(add(**arguments))},
                     {"role": "assistant", "content": "The answer is", "prefix": True}]
        final = client.chat.completions.create(model="srv", messages=messages,
                                               tools=SDK_TOOLS, max_tokens=12, temperature=0)
        assert final.choices[0].message.tool_calls is None
        # The continuation after the prefill may be empty: SmolLM2 often ends right there.
        assert final.choices[0].finish_reason in ("stop", "length")
    finally:
        running.stop()
