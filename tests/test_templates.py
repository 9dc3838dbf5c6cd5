"""Templates: --save NAME, -t NAME with -p variables, and llmcli templates list|show|edit|path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmcli.cli import cli


@pytest.fixture
def run(test_models):
    def invoke(*args: str, input: str | None = None, env: dict | None = None):
        return CliRunner().invoke(cli, list(args), input=input, env=env)

    return invoke


def one_line_error(result, text: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: ") and text in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_save_stores_prompt_system_model_options_and_prefill(run, user_dir: Path,
                                                             test_models) -> None:
    result = run("Summarize $input in $n words", "-s", "Be brief", "-m", "t-eats",
                 "-o", "reply", "ok", "--prefill", "Summary:", "-p", "n", "5", "-x",
                 "--save", "summ")
    assert result.exit_code == 0, result.output
    assert not test_models.requests  # saving sends nothing
    saved = json.loads((user_dir / "templates" / "summ.json").read_text())
    assert saved == {"prompt": "Summarize $input in $n words", "system": "Be brief",
                     "model": "t-eats", "prefill": "Summary:", "options": {"reply": "ok"},
                     "defaults": {"n": "5"}, "extract": True}
    assert "summ.json" in result.stderr


def test_save_keeps_the_prompt_argument_not_piped_input(run, user_dir: Path) -> None:
    assert run("Translate: $input", "--save", "tr", input="piped text\n").exit_code == 0
    saved = json.loads((user_dir / "templates" / "tr.json").read_text())
    assert saved == {"prompt": "Translate: $input"}


def test_template_fills_variables_and_carries_the_prefill(run, test_models) -> None:
    run("Summarize $input in $n words", "-s", "You write for $who", "-m", "test-eats",
        "--prefill", "Summary:", "-o", "reply", " short.", "--save", "summ")
    result = run("-t", "summ", "the news", "-p", "n", "7", "-p", "who", "kids")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Summary: short.\n"
    (request,) = test_models.requests
    assert request.model_id == "test-eats"
    assert request.prompt == "Summarize the news in 7 words"
    assert request.system == "You write for kids"
    assert request.prefill == "Summary:"


def test_command_line_wins_over_the_template(run, test_models) -> None:
    run("-s", "sys", "-m", "test-eats", "--prefill", "A", "-o", "reply", "x",
        "-o", "chunk_size", "2", "--save", "t")
    result = run("-t", "t", "q", "-m", "test-echoes", "-s", "mine", "--prefill", "B",
                 "-o", "reply", "y")
    assert result.stdout == "By\n"
    (request,) = test_models.requests
    assert (request.model_id, request.system, request.prefill) == ("test-echoes", "mine", "B")
    assert request.options.chunk_size == 2  # the template's option not given on the line


def test_input_without_a_placeholder_follows_the_template_prompt(run, test_models) -> None:
    run("Translate to French:", "-m", "test-eats", "--save", "fr")
    run("-t", "fr", "hello", input="piped\n")
    assert test_models.requests[-1].prompt == "Translate to French:\n\npiped\n\nhello"
    run("-t", "fr")  # the template's prompt alone
    assert test_models.requests[-1].prompt == "Translate to French:"


def test_a_system_only_template_takes_the_prompt_from_the_command(run, test_models) -> None:
    run("-s", "Answer in haiku", "--save", "haiku")
    assert run("-t", "haiku", "-m", "test-eats", "the sea").exit_code == 0
    request = test_models.requests[-1]
    assert (request.prompt, request.system) == ("the sea", "Answer in haiku")
    one_line_error(run("-t", "haiku", "-m", "test-eats"), "Empty prompt")


def test_template_defaults_and_missing_variables(run, test_models) -> None:
    run("Write about $topic in $lang", "-p", "lang", "English", "-m", "test-eats",
        "--save", "w")
    one_line_error(run("-t", "w"), "Template 'w' needs topic: pass -p topic VALUE")
    assert run("-t", "w", "-p", "topic", "cats").exit_code == 0
    assert test_models.requests[-1].prompt == "Write about cats in English"
    run("-t", "w", "-p", "topic", "cats", "-p", "lang", "Welsh")
    assert test_models.requests[-1].prompt == "Write about cats in Welsh"


def test_template_extract_and_a_code_prefill(run) -> None:
    run("-m", "test-eats", "--prefill", "```python", "-x", "--save", "code")
    result = run("-t", "code", "reverse", "-o", "reply", "\nprint(1)\n```\nDone.")
    assert result.stdout == "print(1)\n"


def test_template_errors_are_one_line(run, user_dir: Path) -> None:
    one_line_error(run("-t", "nope", "x"), "No template named 'nope' (saved: none)")
    one_line_error(run("x", "-p", "a", "b"), "-p/--param fills a template's variables")
    one_line_error(run("--save", "../up", "x"), "Invalid template name '../up'")
    one_line_error(run("--save", "empty"), "Nothing to save")
    one_line_error(run("x", "--save", "t", "-m", "test-eats", "-o", "bogus", "1"),
                   "Unknown option 'bogus' for test-eats")
    one_line_error(run("x", "--save", "t", "-c"), "--save cannot be combined with -c/--cid")
    one_line_error(run("x", "--save", "t", "-t", "other"),
                   "--save cannot be combined with -t/--template")
    assert not (user_dir / "templates" / "t.json").exists()
    folder = user_dir / "templates"
    folder.mkdir(parents=True)
    (folder / "bad.json").write_text("{not json")
    one_line_error(run("-t", "bad", "x"), "Template 'bad'")
    (folder / "odd.json").write_text('{"prompt": "x", "colour": "red"}')
    one_line_error(run("-t", "odd"), "unknown key 'colour'")
    (folder / "typed.json").write_text('{"prompt": 3}')
    one_line_error(run("-t", "typed"), "'prompt' must be a JSON string")
    (folder / "dollar.json").write_text('{"prompt": "costs $5"}')
    one_line_error(run("-t", "dollar", "-m", "test-eats"), "write $$ for a literal $")


def test_templates_list_show_path(run, user_dir: Path) -> None:
    run("Summarize this", "-s", "Be brief", "--prefill", "-", "--save", "summ")
    run("-s", "Answer in haiku", "--save", "haiku")
    result = run("templates")
    assert result.exit_code == 0, result.output
    assert result.stdout == ("haiku : system: Answer in haiku\n"
                             "summ  : system: Be brief prompt: Summarize this prefill: -\n")
    assert run("templates", "list").stdout == result.stdout
    shown = run("templates", "show", "summ")
    assert json.loads(shown.stdout) == {"prompt": "Summarize this", "system": "Be brief",
                                        "prefill": "-"}
    one_line_error(run("templates", "show", "nope"), "No template named 'nope'")
    assert run("templates", "path").stdout == f"{user_dir / 'templates'}\n"


def test_templates_edit_creates_and_checks(run, user_dir: Path, tmp_path: Path) -> None:
    content = tmp_path / "content.json"
    editor = tmp_path / "editor.py"  # click runs: $EDITOR FILE; this one copies content.json
    editor.write_text("import pathlib, sys\n"
                      f"pathlib.Path(sys.argv[-1]).write_text(open({str(content)!r}).read())\n")
    env = {"EDITOR": f"{sys.executable} {editor}", "VISUAL": None}
    content.write_text('{"prompt": "Hi $name", "model": "test-eats"}')
    result = run("templates", "edit", "greet", env=env)
    assert result.exit_code == 0, result.output
    saved = json.loads((user_dir / "templates" / "greet.json").read_text())
    assert saved == {"prompt": "Hi $name", "model": "test-eats"}
    assert run("-t", "greet", "-p", "name", "Ann").exit_code == 0
    content.write_text('{"prompt": ')
    one_line_error(run("templates", "edit", "greet", env=env), "is not valid JSON")
    # The broken file is kept, to be fixed by the next edit.
    assert (user_dir / "templates" / "greet.json").read_text() == '{"prompt": '


def test_a_template_keeps_a_schema(run, test_models, user_dir: Path) -> None:
    """--save with --schema (or --schema-multi, stored wrapped) keeps it; -t applies it, and a
    --schema on the command line wins over the template's."""
    from llmcli import schema as schemas

    result = run("Who is $input?", "-m", "test-eats", "--schema-multi", "name, age int",
                 "--save", "people")
    assert result.exit_code == 0, result.output
    saved = json.loads((user_dir / "templates" / "people.json").read_text())
    assert saved["schema"] == schemas.multi(schemas.parse_schema("name, age int"))
    test_models.queue.append(['{"items": [{"name": "Ada", "age": 36}]}'])
    result = run("-t", "people", "Ada")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"items": [{"name": "Ada", "age": 36}]}
    assert test_models.requests[-1].schema == saved["schema"]
    assert test_models.requests[-1].prompt == "Who is Ada?"
    test_models.queue.append(['{"city": "Paris"}'])
    result = run("-t", "people", "Ada", "--schema", "city")
    assert result.exit_code == 0, result.output
    assert test_models.requests[-1].schema == schemas.parse_schema("city")
    # Only a schema is a template too; a broken one is a one-line error when used.
    assert run("--schema", "title", "--save", "only").exit_code == 0
    (user_dir / "templates" / "bad.json").write_text('{"schema": {"type": "objekt"}}')
    one_line_error(run("-t", "bad", "x"), "'schema' is not a valid JSON Schema")
