"""Tools on the command line: -T, --functions, --td, --ta, --chain-limit, --prefill-final,
--json, llmcli tools list, the register_tools hook, and tools for a whole chat."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

import llmcli
from llmcli import ToolCall, plugins
from llmcli.cli import cli


@pytest.fixture
def run(test_models):
    def invoke(*args: str, input: str | None = None):
        return CliRunner().invoke(cli, list(args), input=input)

    return invoke


def test_tools_list_shows_the_builtins(run) -> None:
    result = run("tools", "list")
    assert result.exit_code == 0
    assert result.stdout.startswith("llmcli_version(no arguments)\n  The version of llmcli")
    assert "llmcli_time(no arguments)" in result.stdout
    names = [t["name"] for t in json.loads(run("tools", "--json").stdout)]
    assert names == ["llmcli_version", "llmcli_time"]


def test_dash_t_runs_the_chain_and_td_shows_calls_and_results(run, test_models) -> None:
    test_models.queue.append([ToolCall("c1", "llmcli_version", {})])
    result = run("-m", "test-tools", "-T", "llmcli_version", "--td", "Which version?")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"results: {llmcli.__version__}\n"
    assert "Tool call: llmcli_version({})  id=c1" in result.stderr
    assert f"  llmcli_version -> {llmcli.__version__}" in result.stderr


def test_functions_runs_the_given_python(run, test_models, tmp_path: Path) -> None:
    code = "def multiply(a: int, b: int) -> int:\n    'Multiply.'\n    return a * b\n"
    test_models.queue.append([ToolCall("c1", "multiply", {"a": 6, "b": 7})])
    assert run("-m", "test-tools", "--functions", code, "6x7?").stdout == "results: 42\n"
    path = tmp_path / "fns.py"
    path.write_text(code)
    test_models.queue.append([ToolCall("c1", "multiply", {"a": 2, "b": 3})])
    result = run("-m", "test-tools", "--functions", str(path), "--prefill-final", "So: ",
                 "2x3?")
    assert result.stdout == "So: results: 6\n"
    assert test_models.requests[-1].tools[0].name == "multiply"


def test_ta_asks_before_each_call(run, test_models) -> None:
    test_models.queue.append([ToolCall("c1", "llmcli_time", {})])
    # the prompt command reads standard input as the prompt: no answer is left, declined
    result = run("-m", "test-tools", "-T", "llmcli_time", "--ta", "Time?", input="")
    assert "Tool call: llmcli_time({})" in result.stderr and "Run it?" in result.stderr
    assert result.stdout == "results: Error: the user declined this tool call\n"
    # in a chat the answer is the next line
    for answer, expected in (("n", "declined"), ("y", '"utc": "')):
        test_models.queue.append([ToolCall("c1", "llmcli_time", {})])
        result = CliRunner().invoke(cli, ["chat", "-m", "test-tools", "-T", "llmcli_time",
                                          "--ta"], input=f"Time?\n{answer}\nexit\n")
        assert expected in result.stdout


def test_json_shows_every_turn_with_its_calls(run, test_models) -> None:
    test_models.queue.append([ToolCall("c1", "llmcli_version", {})])
    result = run("-m", "test-tools", "-T", "llmcli_version", "--json", "v?")
    data = json.loads(result.stdout)
    assert data["text"] == f"results: {llmcli.__version__}"
    first, second = data["responses"]
    assert first["tool_calls"] == [{"id": "c1", "name": "llmcli_version", "arguments": {}}]
    assert second["tool_results"][0]["output"] == llmcli.__version__


@pytest.mark.parametrize(("args", "message"), [
    (["-m", "test-eats", "-T", "llmcli_time"],
     "Error: Model 'test-eats' cannot call tools; models that can: test-tools."),
    (["-m", "test-tools", "-T", "llmcli_tim"],
     "Error: Unknown tool: 'llmcli_tim' (did you mean: llmcli_time, llmcli_version?)."),
    (["-m", "test-tools", "--functions", "x = 1"], "Error: --functions defines no function"),
    (["-m", "test-tools", "--functions", "def f(:"], "Error: --functions: SyntaxError"),
])
def test_bad_tool_input_is_one_line(run, test_models, args, message) -> None:
    result = run(*args, "hi")
    assert result.exit_code == 1
    assert result.stderr.startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1
    assert not test_models.requests


def test_chain_limit_and_a_failing_tool_exit_non_zero(run, test_models) -> None:
    for i in range(3):
        test_models.queue.append([ToolCall(f"c{i}", "llmcli_time", {})])
    result = run("-m", "test-tools", "-T", "llmcli_time", "--chain-limit", "2", "loop")
    assert result.exit_code == 1
    assert "Error: The tool chain reached its limit of 2 responses" in result.stderr
    test_models.queue.clear()
    test_models.queue.append([ToolCall("c1", "llmcli_time", {"zone": "x"})])
    result = run("-m", "test-tools", "-T", "llmcli_time", "now")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: Tool 'llmcli_time': argument 'zone': ")


def test_a_plugin_registers_tools_for_dash_t(run, test_models) -> None:
    def shout(text: str) -> str:
        """Upper-case the text."""
        return text.upper()

    module = types.ModuleType("llmcli_shout")
    module.register_tools = lambda register: register(shout)  # type: ignore[attr-defined]
    plugins.register_plugin_module("llmcli-shout", module)
    assert "shout(text)\n  Upper-case the text." in run("tools").stdout
    test_models.queue.append([ToolCall("c1", "shout", {"text": "hi"})])
    assert run("-m", "test-tools", "-T", "shout", "x").stdout == "results: HI\n"


def test_tools_stay_on_for_the_whole_chat(test_models) -> None:
    test_models.queue.append([ToolCall("c1", "llmcli_version", {})])
    result = CliRunner().invoke(cli, ["chat", "-m", "test-tools", "-T", "llmcli_version"],
                                input="first\nsecond\nexit\n")
    assert result.exit_code == 0, result.output
    assert f"results: {llmcli.__version__}\n" in result.stdout
    assert "reply to: second\n" in result.stdout
    assert [[t.name for t in r.tools] for r in test_models.requests] == [
        ["llmcli_version"]] * 3
