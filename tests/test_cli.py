"""The command line, through click's CliRunner (in-process)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmcli.cli import cli


@pytest.fixture
def run(test_models):
    def invoke(*args: str, input: str | bytes | None = None, env: dict | None = None):
        return CliRunner().invoke(cli, list(args), input=input, env=env)

    return invoke


def logged(run, *extra: str) -> list[dict]:
    result = run("logs", "--json", "-n", "0", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("model", ["test-eats", "test-echoes", "test-emulated"])
@pytest.mark.parametrize("stream", [[], ["--no-stream"]])
def test_prompt_with_prefill(run, model, stream) -> None:
    result = run("-m", model, "US states", "--prefill", '["', "-o", "reply", 'Ohio"]', *stream)
    assert result.exit_code == 0, result.output
    assert result.stdout == '["Ohio"]\n'
    (row,) = logged(run)
    assert row["text"] == '["Ohio"]' and row["prefill"] == '["'


def test_explicit_prompt_subcommand(run) -> None:
    result = run("prompt", "-m", "test-eats", "hi", "-o", "reply", "there")
    assert result.stdout == "there\n"


def test_hide_prefill_prints_continuation_but_logs_full_text(run) -> None:
    result = run("-m", "test-echoes", "x", "--prefill", "1.", "--hide-prefill",
                 "-o", "reply", " Texas", "-o", "chunk_size", "1")
    assert result.stdout == " Texas\n"
    assert logged(run)[0]["text"] == "1. Texas"


def test_json_output(run) -> None:
    result = run("-m", "test-emulated", "x", "--prefill", "{", "-o", "reply", '"a": 1}',
                 "-o", "style", "preamble", "--json")
    data = json.loads(result.stdout)
    assert data["text"] == '{"a": 1}'
    assert data["continuation"] == '"a": 1}'
    assert data["prefill"] == "{"
    assert data["prefill_support"] == "emulated"
    assert data["model"] == "test-emulated"
    assert data["usage"]["stop_reason"] == "end_turn"
    assert data["conversation_id"]


def test_stdin_is_combined_with_prompt(run, test_models) -> None:
    result = run("-m", "test-eats", "Explain", input="def f(): pass\n")
    assert result.exit_code == 0
    assert test_models.requests[-1].prompt == "def f(): pass\n\nExplain"


def test_stdin_alone(run, test_models) -> None:
    result = run("-m", "test-eats", input="just stdin")
    assert result.exit_code == 0
    assert test_models.requests[-1].prompt == "just stdin"


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["-m", "test-eats"], "", "Empty prompt"),
        (["-m", "test-eats", "   "], "", "Empty prompt"),
        (["-m", "test-eats"], b"\xff\xfe\x00binary", "not UTF-8"),
        (["-m", "nope", "x"], "", "Unknown model: 'nope'"),
        (["-m", "test-eat", "x"], "", "did you mean: test-eats"),
        (["-m", "test-eats", "x", "-o", "bogus", "1"], "", "Unknown option 'bogus'"),
        (["-m", "test-eats", "x", "-o", "max_tokens", "lots"], "", "max_tokens"),
        (["-m", "test-eats", "x", "-o", "max_tokens", "0"], "", "max_tokens"),
        (["-m", "test-unsupported", "x", "--prefill", "["], "", "does not support prefill"),
        (["-m", "test-keyed", "x"], "", "llmcli keys set testkey"),
        (["-m", "test-eats", "x", "--cid", "missing"], "", "No conversation with id"),
        (["-m", "test-eats", "x", "-c"], "", "No conversation to continue"),
    ],
)
def test_bad_input_is_one_line_error(run, args, stdin, message) -> None:
    result = run(*args, input=stdin)
    assert result.exit_code != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output


def test_provider_failure_is_one_line_and_partial_logged(run) -> None:
    result = run("-m", "test-eats", "x", "--prefill", "P:", "-o", "reply", "abcdefgh",
                 "-o", "chunk_size", "2", "-o", "fail_after", "2")
    assert result.exit_code == 1
    assert result.stdout == "P:abcd\n"
    assert "connection reset" in result.stderr
    (row,) = logged(run)
    assert row["status"] == "partial" and row["text"] == "P:abcd"


def test_debug_shows_traceback(run) -> None:
    result = run("-m", "test-eats", "x", "-o", "fail_after", "0", env={"LLMCLI_DEBUG": "1"})
    assert "Traceback" in result.stderr


def test_continue_conversation(run, test_models) -> None:
    run("-m", "test-eats", "Name a state", "--prefill", '["', "-o", "reply", 'Texas"]')
    result = run("-c", "Another", "-o", "reply", "Ohio")
    assert result.exit_code == 0, result.output
    request = test_models.requests[-1]
    assert request.model_id == "test-eats"  # the conversation's model
    assert [(m.role, m.content) for m in request.history] == [
        ("user", "Name a state"), ("assistant", '["Texas"]')]
    rows = logged(run)
    assert rows[0]["conversation_id"] == rows[1]["conversation_id"]
    cid = rows[0]["conversation_id"]
    run("--cid", cid, "Third", "-o", "reply", "Utah")
    assert len(test_models.requests[-1].history) == 4
    assert len(logged(run, "--cid", cid)) == 3


def test_continue_after_a_failed_turn_and_with_another_model(run, test_models) -> None:
    run("-m", "test-eats", "first", "-o", "reply", "one")
    assert run("-c", "broken", "-o", "fail_after", "0").exit_code == 1
    result = run("-c", "-m", "t-echoes", "third", "-o", "reply", "three")
    assert result.exit_code == 0, result.output
    request = test_models.requests[-1]
    assert request.model_id == "test-echoes"
    assert [(m.role, m.content) for m in request.history] == [
        ("user", "first"), ("assistant", "one")]  # the failed turn is not sent
    assert len({r["conversation_id"] for r in logged(run)}) == 1


def test_no_log(run, user_dir: Path) -> None:
    run("-m", "test-eats", "x", "-n")
    assert not (user_dir / "logs.db").exists()


def test_logs_commands(run, user_dir: Path) -> None:
    run("-m", "test-eats", "about zebras", "-o", "reply", "stripes")
    run("-m", "test-echoes", "about lions", "-o", "reply", "manes")
    assert [r["prompt"] for r in logged(run, "-q", "zebras")] == ["about zebras"]
    assert [r["text"] for r in logged(run, "-q", "manes")] == ["manes"]
    assert [r["model"] for r in logged(run, "-m", "t-echoes")] == ["test-echoes"]
    assert len(logged(run, "-n", "1")) == 1
    plain = run("logs")
    assert "about zebras" in plain.stdout and "Response:\nmanes" in plain.stdout
    assert run("logs", "path").stdout.strip() == str(user_dir / "logs.db")
    status = run("logs", "status").stdout
    assert "Logging is ON" in status and "responses logged:\t2" in status
    assert run("logs", "off").exit_code == 0
    run("-m", "test-eats", "not logged")
    assert len(logged(run)) == 2
    assert "Logging is OFF" in run("logs", "status").stdout
    run("logs", "on")
    run("-m", "test-eats", "logged")
    assert len(logged(run)) == 3


def test_models_list(run) -> None:
    result = run("models")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split("\t") == ["model", "prefill", "aliases", "key", "schema",
                                    "attachments", "tools", "reasoning prefill"]
    by_id = {line.split("\t")[0].rstrip(" *"): line.split("\t") for line in lines[1:]}
    assert by_id["test-echoes"][1] == "echoes"
    assert by_id["test-keyed"][3] == "needed (TESTKEY_API_KEY)"
    data = json.loads(run("models", "--json").stdout)
    keyed = next(d for d in data if d["model_id"] == "test-keyed")
    assert keyed["prefill_support"] == "eats" and keyed["key_set"] is False
    assert "reply" in keyed["options"]


def test_models_default(run, test_models) -> None:
    assert run("models", "default", "t-echoes").exit_code == 0
    assert run("models", "default").stdout.strip() == "test-echoes"
    run("hello")
    assert test_models.requests[-1].model_id == "test-echoes"
    assert "Unknown model" in run("models", "default", "zzz").stderr


def test_keys(run, user_dir: Path, test_models) -> None:
    result = run("keys", "set", "testkey", input="sk-secret-123\n")
    assert result.exit_code == 0
    assert "sk-secret-123" not in result.output  # never echoed
    path = user_dir / "keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert run("keys", "list").stdout == "testkey\n"
    assert run("keys", "path").stdout.strip() == str(path)
    assert run("-m", "test-keyed", "x").exit_code == 0
    assert test_models.requests[-1].key == "sk-secret-123"
    assert json.loads(run("models", "--json").stdout)[4]["key_set"] is True


def test_loose_key_file_is_tightened(run, user_dir: Path) -> None:
    run("keys", "set", "testkey", "--value", "sk-1234")
    path = user_dir / "keys.json"
    os.chmod(path, 0o644)
    run("keys", "list")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_plugins(run) -> None:
    data = json.loads(run("plugins", "--json").stdout)
    assert data[0]["name"] == "llmcli-testmodels"
    assert "test-eats" in data[0]["models"]
    assert "llmcli-testmodels" in run("plugins").stdout


def test_help_for_every_command(run) -> None:
    for args in (["--help"], ["prompt", "--help"], ["models", "--help"], ["logs", "--help"],
                 ["keys", "--help"], ["plugins", "--help"]):
        result = run(*args)
        assert result.exit_code == 0 and "Usage:" in result.stdout
    assert "--prefill" in run("prompt", "--help").stdout


def test_builtin_help_lines_match_the_commands() -> None:
    """`llmcli --help` prints the built-in commands' help from llmcli.cli.BUILTINS without
    importing them; those lines must say what the commands themselves say."""
    import click

    from llmcli.cli import BUILTINS

    for name, (_, text) in BUILTINS.items():
        real = cli.commands[name]
        assert real.name == name
        for width in (45, 80, 200):
            assert click.Command(name, help=text).get_short_help_str(width) == \
                real.get_short_help_str(width), name


def test_help_lists_every_command_without_importing_them() -> None:
    code = (
        "import sys\n"
        "from llmcli.cli import cli\n"
        "try:\n"
        "    cli.main(['--help'], prog_name='llmcli')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('llmcli.cli.')), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "LLMCLI_LOAD_PLUGINS": ""}, check=True)
    for line in ("prompt*", "models ", "logs ", "keys ", "plugins "):
        assert line in result.stdout
    assert "Send PROMPT (and any piped standard input) to a model." in result.stdout
    assert result.stderr.strip() == "[]"


@pytest.mark.parametrize("columns", ["200", "100", "60", "30", "junk", ""])
def test_help_width_follows_clicks_rule(monkeypatch, columns: str) -> None:
    """llmcli computes the help width itself (to spare --help the shutil import); it must be
    the width click would have picked: COLUMNS or the terminal, capped at 80, minus 2, >= 50."""
    import shutil

    import click

    from llmcli.cli import _help_width

    monkeypatch.setenv("COLUMNS", columns)
    expected = max(min(shutil.get_terminal_size().columns, 80) - 2, 50)
    assert _help_width() == expected
    monkeypatch.setattr(click.formatting, "FORCED_WIDTH", 80)
    assert _help_width() is None  # click's test runner forces its own width: leave it be


def test_lazy_commands_mapping() -> None:
    import click

    from llmcli.cli import LazyCommands

    commands = LazyCommands({"plugins": "llmcli.cli.plugins_cmd"})
    assert "plugins" in commands and len(commands) == 1 and list(commands) == ["plugins"]
    assert commands["plugins"].name == "plugins"
    extra = click.Command("extra")
    commands["extra"] = extra
    assert commands.get("extra") is extra and sorted(commands) == ["extra", "plugins"]
    del commands["plugins"]
    assert "plugins" not in commands and commands.get("plugins") is None


def test_help_lists_plugin_commands_from_a_cache(user_dir: Path) -> None:
    import types

    import click

    from llmcli import plugins

    module = types.ModuleType("llmcli_hello")

    def register_commands(group: click.Group) -> None:
        @group.command()
        def hello() -> None:
            """Say hello from a plugin."""
            click.echo("hello!")

    module.register_commands = register_commands  # type: ignore[attr-defined]
    plugins.register_plugin_module("llmcli-hello", module)
    first = CliRunner().invoke(cli, ["--help"])
    assert "hello     Say hello from a plugin." in first.stdout.replace("  ", " ") or \
        "Say hello from a plugin." in first.stdout
    assert (user_dir / ".plugin-commands.json").exists()
    second = CliRunner().invoke(cli, ["--help"])  # served from the cache
    assert second.stdout == first.stdout
    assert CliRunner().invoke(cli, ["hello"]).stdout == "hello!\n"


def test_terminal_output_uses_rich_tables(run, monkeypatch) -> None:
    from llmcli.cli import render

    monkeypatch.setattr(render, "is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "120")
    run("-m", "test-eats", "about tables", "-o", "reply", "rows and columns")
    models = run("models").stdout
    assert "┃ model" in models and "test-echoes" in models and "\t" not in models
    logs = run("logs").stdout  # in full, not a table (tests/test_logs_display.py)
    assert "Prompt:\nabout tables" in logs and "┃" not in logs
