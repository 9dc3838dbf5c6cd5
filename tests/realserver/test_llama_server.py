"""llmcli against a real llama.cpp llama-server (commit 0c1e570, from llama-cpp-python 0.3.36)
serving SmolLM2-135M-Instruct: the prefill exactly once in every style, streamed and not,
through the CLI, the Python API, the log and ``-c``.

The reference text comes from the server's own endpoints without the chat-completions echo
question: ``/apply-template`` renders the conversation with the prefill in the open assistant
turn, ``/completion`` continues that prompt and returns only the new text. Every llmcli path
must give prefill + that continuation, character for character (greedy decoding).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

import llmcli

PROMPT = "Implement quicksort in Python."
PREFILL = "```python\ndef quacksort("
MAX_TOKENS = 12
STYLES = ("continue_final_message", "trailing_assistant", "prefix")
GREEDY = ["-o", "temperature", "0", "-o", "max_tokens", str(MAX_TOKENS)]


def root(base_url: str) -> str:
    return base_url.removesuffix("/v1")


def render(base_url: str, messages: list[dict[str, str]]) -> str:
    reply = httpx.post(f"{root(base_url)}/apply-template", json={"messages": messages},
                       timeout=60)
    reply.raise_for_status()
    return str(reply.json()["prompt"])


def reference(base_url: str, messages: list[dict[str, str]], prefill: str) -> str:
    """prefill + what the model writes after it, from the server's raw completion endpoint."""
    prompt = render(base_url, [*messages, {"role": "assistant", "content": prefill}])
    assert prompt.endswith(prefill)  # the prefill sits in the open assistant turn
    reply = httpx.post(f"{root(base_url)}/completion", timeout=120, json={
        "prompt": prompt, "n_predict": MAX_TOKENS, "temperature": 0})
    reply.raise_for_status()
    return prefill + str(reply.json()["content"])


def prompt_tokens(base_url: str, messages: list[dict[str, str]], prefill: str) -> int:
    prompt = render(base_url, [*messages, {"role": "assistant", "content": prefill}])
    reply = httpx.post(f"{root(base_url)}/tokenize", timeout=60,
                       json={"content": prompt, "add_special": True, "parse_special": True})
    reply.raise_for_status()
    return len(reply.json()["tokens"])


@pytest.fixture(scope="module")
def expected(llama_server: str) -> str:
    text = reference(llama_server, [{"role": "user", "content": PROMPT}], PREFILL)
    assert len(text) > len(PREFILL)
    return text


@pytest.fixture
def servers_file(user_dir: Path) -> Path:
    return user_dir / "openai-servers.json"


@pytest.fixture
def configure(servers_file: Path, load_plugins: Callable[..., None],
              llama_server: str) -> Callable[..., None]:
    def write(**fields: Any) -> None:
        entry = {"id": "lsrv", "model_name": "smollm2", "base_url": llama_server, **fields}
        servers_file.parent.mkdir(parents=True, exist_ok=True)
        servers_file.write_text(json.dumps({"servers": [entry]}))
        load_plugins("llmcli-openai")

    return write


def run_cli(*args: str) -> Any:
    from llmcli.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# -- what the server does: the table in docs/providers/openai-compatible.md ---------------------


def test_probe_measures_what_the_docs_say(llama_server: str, servers_file: Path,
                                          load_plugins: Callable[..., None]) -> None:
    from llmcli_openai._probe import probe_server

    load_plugins("llmcli-openai")
    result = run_cli("openai-servers", "add", "lsrv", "--base-url", llama_server,
                     "--model-name", "smollm2")
    assert result.exit_code == 0, result.output
    assert "prefill continue_final_message: stream eats, complete echoes" in result.output
    entry = json.loads(servers_file.read_text())["servers"][0]
    assert entry["prefill_style"] == "continue_final_message"
    cfm = entry["probe"]["styles"]["continue_final_message"]
    assert (cfm["stream"], cfm["complete"]) == ("eats", "echoes")
    # The two styles the probe did not need: echoed in both modes ("prefix" is ignored).
    for style in ("trailing_assistant", "prefix"):
        seen = probe_server(llama_server, "smollm2", styles=[style]).styles[style]
        assert (seen.stream, seen.complete) == ("echoes", "echoes"), seen.seen


def test_both_flags_true_is_a_400(llama_server: str) -> None:
    reply = httpx.post(f"{llama_server}/chat/completions", timeout=60, json={
        "model": "smollm2", "max_tokens": 2,
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A"}],
        "continue_final_message": True, "add_generation_prompt": True})
    assert reply.status_code == 400
    assert ("Cannot set both add_generation_prompt and continue_final_message to true."
            in reply.text)


# -- llmcli: the prefill exactly once, every style x echo knowledge x stream mode ---------------


PROBED = {"at": "2026-11-26T00:00:00Z", "chosen": "continue_final_message", "styles": {
    "continue_final_message": {"stream": "eats", "complete": "echoes"},
    "trailing_assistant": {"stream": "echoes", "complete": "echoes"},
    "prefix": {"stream": "echoes", "complete": "echoes"}}}


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("knowledge", ["auto", "probed"])
def test_python_api_every_style(configure: Callable[..., None], expected: str, style: str,
                                knowledge: str) -> None:
    configure(prefill_style=style, **({"probe": PROBED} if knowledge == "probed" else {}))
    model = llmcli.get_model("lsrv")
    for stream in (True, False):
        response = model.prompt(PROMPT, prefill=PREFILL, stream=stream, log=False,
                                temperature=0, max_tokens=MAX_TOKENS)
        chunks = list(response)
        assert "".join(chunks) == response.text() == expected, (style, knowledge, stream)
        assert response.continuation == expected[len(PREFILL):]
        assert response.stop_reason == "max_tokens"


@pytest.mark.parametrize("style", STYLES)
def test_cli_every_mode_and_the_log(configure: Callable[..., None], expected: str, style: str,
                                    user_dir: Path) -> None:
    configure(prefill_style=style)
    tail = "" if expected.endswith("\n") else "\n"
    for flags in ([], ["--no-stream"]):
        result = run_cli("-m", "lsrv", "--prefill", PREFILL, PROMPT, *GREEDY, *flags)
        assert result.exit_code == 0, result.output
        assert result.output == expected + tail, flags
        hidden = run_cli("-m", "lsrv", "--prefill", PREFILL, PROMPT, *GREEDY, *flags,
                         "--hide-prefill")
        assert hidden.output == expected[len(PREFILL):] + tail, flags
    as_json = json.loads(run_cli("-m", "lsrv", "--prefill", PREFILL, PROMPT, *GREEDY,
                                 "--json").output)
    assert (as_json["text"], as_json["continuation"]) == (expected, expected[len(PREFILL):])
    assert as_json["usage"]["stop_reason"] == "max_tokens"
    rows = sqlite3.connect(user_dir / "logs.db").execute(
        "select text, continuation, prefill_support, status from responses").fetchall()
    assert len(rows) == 5
    assert set(rows) == {(expected, expected[len(PREFILL):], "echoes", "complete")}


@pytest.mark.parametrize("stream_flag", [[], ["--no-stream"]])
def test_continue_sends_the_prefilled_turn_once(configure: Callable[..., None],
                                                llama_server: str, expected: str,
                                                stream_flag: list[str], user_dir: Path) -> None:
    """The server counts the prompt tokens of the second turn: exactly those of the history
    with the first reply once (a doubled prefill in the history would add tokens)."""
    configure(prefill_style="continue_final_message")
    first = run_cli("-m", "lsrv", "--prefill", PREFILL, PROMPT, *GREEDY, *stream_flag)
    assert first.exit_code == 0, first.output
    second = run_cli("-c", "Now in one line.", "--prefill", "One line:", *GREEDY, "--json")
    assert second.exit_code == 0, second.output
    data = json.loads(second.output)
    assert data["text"].startswith("One line:")
    assert not data["text"][len("One line:"):].startswith("One line:")
    history = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": expected},
               {"role": "user", "content": "Now in one line."}]
    assert data["usage"]["input_tokens"] == prompt_tokens(llama_server, history, "One line:")
    assert data["text"] == reference(llama_server, history, "One line:")


def test_the_installed_command(configure: Callable[..., None], expected: str,
                               user_dir: Path) -> None:
    """The real script in a real process, as a user runs it."""
    import subprocess

    from tests.script import SCRIPT, env_for

    configure(prefill_style="trailing_assistant")
    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-openai")
    done = subprocess.run([str(SCRIPT), "-m", "lsrv", "--prefill", PREFILL, PROMPT, *GREEDY],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip("\n") == expected.rstrip("\n")
