"""What llm users expect (-x, -u, keys get, models --options, command-like words) and the
command line's rough edges (empty piped input, Ctrl-C with --json)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmcli.cli import cli
from llmcli.cli.common import extract_code_block
from tests.script import SCRIPT, env_for


@pytest.fixture
def run(test_models):
    def invoke(*args: str, input: str | None = None):
        return CliRunner().invoke(cli, list(args), input=input)

    return invoke


@pytest.mark.parametrize(("text", "code"), [
    ("Here:\n```python\nprint(1)\n```\nand more\n```\nsecond\n```", "print(1)\n"),
    ("```python\ndef f():\n    return 1\n", "def f():\n    return 1\n"),  # cut short
    ("````md\n```\ninner\n```\n````", "```\ninner\n```\n"),
    ("~~~\ntilde\n~~~", "tilde\n"),
    ("no code here", None),
])
def test_extract_code_block(text: str, code: str | None) -> None:
    assert extract_code_block(text) == code


def test_extract_with_a_prefill(run) -> None:
    result = run("-m", "test-eats", "reverse", "--prefill", "```python", "-x",
                 "-o", "reply", "\ndef rev(s):\n    return s[::-1]\n```\nThis reverses.")
    assert result.exit_code == 0, result.output
    assert result.stdout == "def rev(s):\n    return s[::-1]\n"
    # No code block: the whole reply.
    result = run("-m", "test-eats", "x", "-x", "-o", "reply", "plain")
    assert result.stdout == "plain\n"
    assert "cannot be combined" in run("-m", "test-eats", "x", "-x", "--json").stderr


def test_usage_goes_to_stderr(run) -> None:
    result = run("-m", "test-eats", "two words", "-u", "-o", "reply", "abcdefgh")
    assert result.stdout == "abcdefgh\n"
    assert result.stderr == "Token usage: 2 input, 2 output, stop: end_turn\n"
    # A prompt-cache read, where the backend reports one, and the same line from the log.
    result = run("-m", "test-eats", "two words", "-u", "-o", "reply", "ab", "-o", "cached", "1")
    assert result.stderr == "Token usage: 2 input (1 cached), 1 output, stop: end_turn\n"
    assert "Token usage: 2 input (1 cached), 1 output" in run("logs", "-n", "1", "-u").stdout


def test_keys_get(run) -> None:
    run("keys", "set", "openai", "--value", "sk-abc")
    result = run("keys", "get", "openai")
    assert result.exit_code == 0 and result.stdout == "sk-abc\n"
    result = run("keys", "get", "nope")
    assert result.exit_code == 1
    assert "No key named 'nope' is stored (stored: openai)" in result.stderr


def test_models_options_show_type_bounds_default_and_description(run) -> None:
    result = run("models", "--options")
    assert result.exit_code == 0, result.output
    assert "test-eats (prefill: eats, schema: " in result.stdout
    assert "  max_tokens: int, >= 1, <= 10000, default 100\n" in result.stdout
    assert "  style: 'repeat' | 'skip' | 'preamble', default 'repeat'\n" in result.stdout
    data = json.loads(run("models", "--json").stdout)
    details = {o["name"]: o for o in data[0]["option_details"]}
    assert details["reply"]["type"] == "str | none"


@pytest.mark.parametrize(("args", "message"), [
    (["collections"], "'collections' is an llm command that llmcli does not have"),
    (["embed", "some text"], "'embed' is an llm command"),
    (["embed-models"], "llmcli prompt embed-models"),
    (["templats"], "Unknown command 'templats' (did you mean: templates?)"),
    (["modles"], "Unknown command 'modles' (did you mean: models?)"),
    (["chta"], "did you mean: chat"),
])
def test_command_words_are_not_prompts(run, test_models, args, message) -> None:
    result = run(*args)
    assert result.exit_code == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not test_models.requests


def test_ordinary_words_are_still_prompts(run, test_models) -> None:
    assert run("-m", "test-eats", "hello").stdout == "reply to: hello\n"
    assert run("prompt", "-m", "test-eats", "embed").stdout == "reply to: embed\n"
    assert run("modles", "-m", "test-eats").stdout == "reply to: modles\n"


def test_empty_piped_input_without_arguments_is_an_empty_prompt(user_dir: Path) -> None:
    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels")
    result = subprocess.run([str(SCRIPT)], input="", env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert result.stderr == ("Error: Empty prompt: pass PROMPT or pipe text on standard "
                             "input\n")


def test_ctrl_c_with_json_prints_the_partial_response(user_dir: Path) -> None:
    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [str(SCRIPT), "-m", "test-eats", "count", "--prefill", "Counting:", "--json",
         "-o", "reply", " one two three" * 40, "-o", "chunk_size", "4", "-o", "delay", "0.05"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    import time

    time.sleep(2.5)  # start-up, then some chunks
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    data = json.loads(out)
    assert data["status"] == "partial"
    assert data["text"].startswith("Counting: one")
    assert err.decode().strip() == "Interrupted: the partial response was logged."
