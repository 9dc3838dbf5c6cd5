"""llmcli models options set|show|clear: default options per model, applied by the API layer
beneath the options a call gives."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmcli import api
from llmcli.cli import cli
from llmcli.errors import OptionsError


@pytest.fixture
def run(test_models):
    def invoke(*args: str, input: str | None = None):
        return CliRunner().invoke(cli, list(args), input=input)

    return invoke


def test_set_show_and_apply(run, test_models, user_dir: Path) -> None:
    assert run("models", "options", "set", "t-eats", "reply", "stored").exit_code == 0
    result = run("models", "options", "set", "test-eats", "chunk_size", "2")
    assert result.exit_code == 0, result.output
    assert json.loads((user_dir / "model_options.json").read_text()) == {
        "test-eats": {"reply": "stored", "chunk_size": "2"}}
    assert run("models", "options", "show", "test-eats").stdout == \
        "reply: stored\nchunk_size: 2\n"
    assert run("models", "options", "show").stdout == \
        "test-eats:\n  reply: stored\n  chunk_size: 2\n"

    assert run("-m", "test-eats", "q").stdout == "stored\n"
    assert test_models.requests[-1].options.chunk_size == 2
    assert run("-m", "test-eats", "q", "-o", "reply", "given").stdout == "given\n"  # -o wins
    assert run("-m", "test-echoes", "q").stdout == "reply to: q\n"  # other models: untouched
    # The API applies them, so the Python API and every command get them.
    assert api.prompt(api.get_model("test-eats"), "q", log=False).text() == "stored"
    # And its async path (what llmcli serve runs), the same way.
    response = api.prompt_async(api.get_model("test-eats"), "q", log=False)
    assert asyncio.run(response.text()) == "stored"
    assert "  reply: str | none, set to 'stored' (llmcli models options)\n" in \
        run("models", "--options").stdout


def test_list_options(run, test_models) -> None:
    run("models", "options", "set", "test-eats", "reply", "x")
    assert run("models", "options", "set", "test-eats", "max_tokens", "5").exit_code == 0
    # (The test models have no list option: a JSON list value is checked like -o's.)
    result = run("models", "options", "set", "test-eats", "max_tokens", "[5]")
    assert result.exit_code == 1 and "max_tokens" in result.stderr


def test_clear(run, test_models, user_dir: Path) -> None:
    run("models", "options", "set", "test-eats", "reply", "a")
    run("models", "options", "set", "test-eats", "chunk_size", "3")
    assert run("models", "options", "clear", "test-eats", "reply").exit_code == 0
    assert run("models", "options", "show", "test-eats").stdout == "chunk_size: 3\n"
    result = run("models", "options", "clear", "test-eats", "reply")
    assert result.exit_code == 1
    assert result.stderr == ("Error: No default 'reply' is set for test-eats "
                             "(set: chunk_size)\n")
    assert run("models", "options", "clear", "t-eats").exit_code == 0
    assert json.loads((user_dir / "model_options.json").read_text()) == {}
    assert run("-m", "test-eats", "q").stdout == "reply to: q\n"


def test_values_are_checked_by_the_model(run, user_dir: Path) -> None:
    result = run("models", "options", "set", "test-eats", "chunk_size", "0")
    assert result.exit_code == 1
    assert "Option 'chunk_size' for test-eats" in result.stderr
    result = run("models", "options", "set", "test-eats", "colour", "red")
    assert result.exit_code == 1 and "Unknown option 'colour' for test-eats" in result.stderr
    result = run("models", "options", "set", "nomodel", "x", "1")
    assert result.exit_code == 1 and "nomodel" in result.stderr
    assert not (user_dir / "model_options.json").exists()


def test_a_stale_default_names_where_it_comes_from(run, user_dir: Path) -> None:
    (user_dir).mkdir(exist_ok=True)
    (user_dir / "model_options.json").write_text('{"test-eats": {"chunk_size": "zero"}}')
    result = run("-m", "test-eats", "q")
    assert result.exit_code == 1
    assert "(stored defaults: llmcli models options show test-eats)" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    with pytest.raises(OptionsError, match=r"\(stored defaults: llmcli models options show"):
        api.prompt_async(api.get_model("test-eats"), "q", log=False)
    with pytest.raises(OptionsError, match=r"\(stored defaults: llmcli models options show"):
        api.chain(api.get_model("test-eats"), api.PromptSpec.of("q", log=False)).text()
    # A model no longer installed can still be cleared by its id.
    (user_dir / "model_options.json").write_text('{"gone-model": {"a": 1}}')
    assert run("models", "options", "clear", "gone-model").exit_code == 0
