"""Reasoning as a part of a response (#28): ``response.reasoning`` and ``parts()``, the
``reasoning`` key of ``--json``, the log column and ``llmcli logs``, and the terminal: on
stderr, dimmed, before the answer on a terminal; hidden with ``-R``; never in a pipe unless
``--reasoning`` asks. The answer keeps the prefill contract: the prefill once, no reasoning
in it."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import llmcli
from llmcli.models import Reasoning

THOUGHT = "The user wants states. Ohio, then Utah."


def run(*args: str) -> Any:
    from llmcli.cli import cli

    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("model", ["test-eats", "test-echoes", "test-emulated"])
@pytest.mark.parametrize("stream", [True, False])
def test_reasoning_is_apart_from_the_answer(test_models: Any, model: str, stream: bool) -> None:
    response = llmcli.get_model(model).prompt(
        "states", prefill='["', stream=stream, log=False, reply='Ohio", "Utah"]',
        thinking=THOUGHT, chunk_size=5)
    parts = list(response.parts())
    assert response.text() == '["Ohio", "Utah"]'  # the prefill once, no reasoning in it
    assert response.reasoning == THOUGHT
    kinds = [isinstance(p, Reasoning) for p in parts]
    assert kinds == sorted(kinds, reverse=True)  # reasoning first, as it arrived
    assert "".join(p for p in parts if isinstance(p, str)) == response.text()
    # Run again, the same parts (replayed); iteration gives the text alone.
    assert list(response.parts()) == parts
    assert "".join(response) == response.text()
    assert response.to_dict()["reasoning"] == THOUGHT


def test_no_reasoning_is_none(test_models: Any) -> None:
    response = llmcli.get_model("test-eats").prompt("q", log=False)
    assert response.text() == "reply to: q"
    assert response.reasoning is None
    assert response.to_dict()["reasoning"] is None


def test_the_log_keeps_it_and_logs_shows_it(test_models: Any, user_dir: Path) -> None:
    result = run("-m", "test-eats", "-o", "thinking", THOUGHT, "--prefill", "1.", "states")
    assert result.exit_code == 0, result.output
    database = user_dir / "logs.db"
    with sqlite3.connect(database) as db:
        columns = [row[1] for row in db.execute("pragma table_info(responses)")]
        assert "reasoning" in columns
        (stored, text), = db.execute("select reasoning, text from responses").fetchall()
        done = [row[0] for row in db.execute("select name from _llmcli_migrations")]
    assert (stored, text) == (THOUGHT, "1.reply to: states")
    assert "m010_reasoning" in done
    shown = run("logs", "-n", "1")
    assert f"Reasoning:\n{THOUGHT}\n\nResponse:\n1.reply to: states" in shown.output
    short = run("logs", "-n", "1", "-s")
    assert "  reasoning: " in short.output
    rows = json.loads(run("logs", "--json", "-n", "1").output)
    assert rows[0]["reasoning"] == THOUGHT
    # A continued conversation sends the answer, not the reasoning.
    run("-m", "test-eats", "-c", "more")
    assert llmcli.get_model("test-eats") is not None
    from llmcli_testmodels import TestModel

    history = TestModel.requests[-1].history
    assert [m.content for m in history] == ["states", "1.reply to: states"]


def test_json_has_the_reasoning_key(test_models: Any) -> None:
    result = run("-m", "test-echoes", "-o", "thinking", THOUGHT, "--json", "-n", "q")
    data = json.loads(result.stdout)
    assert data["reasoning"] == THOUGHT and data["text"] == "reply to: q"
    data = json.loads(run("-m", "test-echoes", "--json", "-n", "q").stdout)
    assert data["reasoning"] is None


def test_in_a_pipe_only_when_asked(test_models: Any) -> None:
    args = ("-m", "test-eats", "-o", "thinking", THOUGHT, "--prefill", "A:", "-n", "q")
    piped = run(*args)
    assert piped.stdout == "A:reply to: q\n"
    assert THOUGHT not in piped.stderr
    forced = run(*args, "--reasoning")
    assert forced.stdout == "A:reply to: q\n"  # never on stdout
    assert forced.stderr.startswith(THOUGHT + "\n\n")  # plain: stderr is not a terminal
    assert "\x1b[" not in forced.stderr
    hidden = run(*args, "--reasoning", "-R")  # the last word wins, as click reads flags
    assert THOUGHT not in hidden.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pty")
@pytest.mark.parametrize("hide", [False, True])
def test_on_a_terminal_dimmed_before_the_answer(user_dir: Path, hide: bool) -> None:
    from tests.chat.terminal import Terminal
    from tests.script import env_for

    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels", TERM="xterm")
    args = ["-m", "test-eats", "-o", "thinking", THOUGHT, "--prefill", "A:", "q"]
    term = Terminal([*args, "-R"] if hide else args, env)
    try:
        assert term.wait() == 0
        out = term.raw.decode().replace("\r\n", "\n")
    finally:
        term.close()
    if hide:
        assert THOUGHT not in out and "A:reply to: q" in out
    else:
        assert f"\x1b[2m{THOUGHT}\x1b[0m\n\nA:reply to: q" in out


def test_models_lists_the_policies_each_model_takes(load_plugins: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCLI_TEST_MODELS", "1")
    load_plugins("llmcli-testmodels", "llmcli-anthropic", "llmcli-openai", "llmcli-local")
    data = {d["model_id"]: d for d in json.loads(run("models", "--json").stdout)}
    assert data["claude-sonnet-4-5"]["reasoning_prefill"] == {"skip": "native",
                                                             "emulate": "emulated"}
    assert data["claude-opus-4-7"]["reasoning_prefill"] == {"skip": "emulated",
                                                           "emulate": "emulated"}
    assert data["o3"]["reasoning_prefill"] == {"emulate": "emulated"}
    assert data["gpt-4o"]["reasoning_prefill"] == {}
    assert data["smollm2"]["reasoning_prefill"] == {"after": "native", "skip": "native"}
    assert data["test-eats"]["reasoning_prefill"] == {}
    rows = {line.split("\t")[0].rstrip(" *"): line.split("\t")
            for line in run("models").stdout.splitlines()}
    assert rows["model"][-1] == "reasoning prefill"
    assert rows["claude-sonnet-4-5"][-1] == "skip (native), emulate (emulated)"
    assert rows["test-eats"][-1] == "-"
    listed = run("models", "--options").stdout
    line = next(ln for ln in listed.splitlines() if ln.startswith("claude-opus-4-7 ("))
    assert line.endswith("reasoning prefill: skip, emulate)")


def test_a_policy_the_model_does_not_take_is_one_line_before_any_request(
        test_models: Any) -> None:
    result = run("-m", "test-eats", "-o", "reasoning_prefill", "after", "q")
    assert result.exit_code != 0
    assert "Unknown option 'reasoning_prefill'" in result.stderr  # not a reasoning model
    assert test_models.requests == []
