"""``llmcli chat`` in-process: turns, chat commands and logging (CliRunner feeds the lines)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llmcli.cli import cli


@pytest.fixture
def chat(test_models):
    def invoke(*args: str, lines: list[str]):
        return CliRunner().invoke(cli, ["chat", *args], input="".join(f"{ln}\n" for ln in lines))

    return invoke


def logged() -> list[dict]:
    result = CliRunner().invoke(cli, ["logs", "--json", "-n", "0"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_turns_are_one_logged_conversation(chat, test_models) -> None:
    result = chat("-m", "test-eats", lines=["Name a state", "Another", "exit"])
    assert result.exit_code == 0, result.output
    assert "reply to: Name a state\n" in result.stdout
    assert "reply to: Another\n" in result.stdout
    rows = logged()
    assert [r["prompt"] for r in rows] == ["Name a state", "Another"]
    assert len({r["conversation_id"] for r in rows}) == 1
    # The second turn carried the first, as -c would.
    assert [(m.role, m.content) for m in test_models.requests[-1].history] == [
        ("user", "Name a state"), ("assistant", "reply to: Name a state")]


def test_prefill_command_is_for_the_next_turn_only(chat) -> None:
    result = chat("-m", "test-echoes", lines=["!prefill ```python", "code", "more", "quit"])
    assert result.exit_code == 0, result.output
    assert "prefill '```python' > " in result.stdout  # shown in the prompt line while set
    rows = logged()
    assert [(r["prefill"], r["text"]) for r in rows] == [
        ("```python", "```pythonreply to: code"), ("", "reply to: more")]


def test_prefill_keeps_trailing_whitespace_and_clears(chat) -> None:
    chat("-m", "test-eats", lines=["!prefill Answer: ", "q", "!prefill x", "!prefill", "r"])
    assert [r["prefill"] for r in logged()] == ["Answer: ", ""]


def test_command_line_prefill_applies_to_every_turn(chat) -> None:
    chat("-m", "test-emulated", "--prefill", "[", lines=["a", "!prefill {", "b", "c"])
    rows = logged()
    assert [r["prefill"] for r in rows] == ["[", "{", "["]
    assert all(r["text"].startswith(r["prefill"]) for r in rows)


def test_multi_sends_several_lines_as_one_message(chat) -> None:
    chat("-m", "test-eats", lines=["!multi", "line one", "", "line three", "!end", "quit"])
    assert [r["prompt"] for r in logged()] == ["line one\n\nline three"]


def test_edit_sends_what_the_editor_saved(chat, monkeypatch) -> None:
    import click

    monkeypatch.setattr(click, "edit", lambda text="": "from the editor\n")
    chat("-m", "test-eats", lines=["!edit", "exit"])
    assert [r["prompt"] for r in logged()] == ["from the editor"]


def test_model_switch_keeps_the_conversation(chat, test_models) -> None:
    result = chat("-m", "test-eats", "-o", "reply", "ok",
                  lines=["first", "!model test-echoes", "second"])
    assert result.exit_code == 0, result.output
    assert "Model: test-echoes" in result.stderr
    rows = logged()
    assert [r["model"] for r in rows] == ["test-eats", "test-echoes"]
    assert rows[0]["conversation_id"] == rows[1]["conversation_id"]
    assert rows[1]["text"] == "ok"  # -o options still apply when the new model takes them
    assert test_models.requests[-1].history[-1].content == "ok"


def test_continue_uses_the_conversations_model(chat, test_models) -> None:
    chat("-m", "test-echoes", lines=["one"])
    result = chat("-c", lines=["two"])
    assert result.exit_code == 0, result.output
    assert "Chatting with test-echoes" in result.stderr
    rows = logged()
    assert [r["model"] for r in rows] == ["test-echoes", "test-echoes"]
    assert rows[0]["conversation_id"] == rows[1]["conversation_id"]
    chat("--cid", rows[0]["conversation_id"], lines=["three"])
    assert len({r["conversation_id"] for r in logged()}) == 1


def test_a_failed_turn_does_not_end_the_chat(chat) -> None:
    result = chat("-m", "test-eats", lines=[
        "!model test-unsupported", "!prefill [", "refused", "!model nope", "still here"])
    assert result.exit_code == 0, result.output
    assert "Error: Model 'test-unsupported' does not support prefill" in result.stderr
    assert "Error: Unknown model: 'nope'" in result.stderr
    assert [r["prompt"] for r in logged()] == ["still here"]


def test_provider_failure_mid_reply_is_partial_and_the_chat_goes_on(chat) -> None:
    result = chat("-m", "test-eats", "-o", "fail_after", "1", "-o", "chunk_size", "3",
                  lines=["x", "exit"])
    assert result.exit_code == 0
    assert "connection reset" in result.stderr
    assert logged()[0]["status"] == "partial"


def test_bad_options_and_unknown_commands(chat) -> None:
    result = chat("-m", "test-eats", "-o", "bogus", "1", lines=["x"])
    assert result.exit_code == 1
    assert "Unknown option 'bogus'" in result.stderr
    result = chat("-m", "test-eats", lines=["!nope", "!help"])
    assert "Unknown chat command '!nope'" in result.stderr
    assert "!multi" in result.stderr


def test_no_log(chat, user_dir) -> None:
    chat("-m", "test-eats", "-n", lines=["x"])
    assert not (user_dir / "logs.db").exists()


def test_continue_after_a_model_switch_uses_the_latest_model(chat) -> None:
    chat("-m", "test-eats", lines=["one", "!model test-echoes", "two"])
    result = chat("-c", lines=["three"])
    assert "Chatting with test-echoes" in result.stderr
    assert [r["model"] for r in logged()] == ["test-eats", "test-echoes", "test-echoes"]


def test_a_template_and_fragments(chat, test_models, user_dir, tmp_path) -> None:
    """-t: the template's system prompt, model, prefill and options for every turn, and its
    prompt around each message; -f: a file's text before the first message only; --sf: the
    system prompt gains a file's text (before it, as for one prompt); -p fills the
    template's variables."""
    (user_dir / "templates").mkdir(parents=True)
    (user_dir / "templates" / "rev.json").write_text(json.dumps({
        "prompt": "Review ($lang): $input", "system": "You review $lang code.",
        "model": "test-echoes", "prefill": "Verdict:", "defaults": {"lang": "C"},
        "options": {"reply": "fine", "chunk_size": 2}}))
    notes = tmp_path / "notes.md"
    notes.write_text("Style: short functions.\n")
    code = tmp_path / "main.py"
    code.write_text("def f(): pass\n")
    result = chat("-t", "rev", "-p", "lang", "Python", "-f", str(code), "--sf", str(notes),
                  lines=["first", "second", "exit"])
    assert result.exit_code == 0, result.output
    assert "Chatting with test-echoes" in result.stderr
    first, second = test_models.requests[-2:]
    assert first.prompt == "def f(): pass\n\nReview (Python): first"
    assert second.prompt == "Review (Python): second"  # the file went with the first only
    assert first.system == second.system == "Style: short functions.\n\nYou review Python code."
    assert first.options.chunk_size == 2
    rows = logged()
    assert [(r["prefill"], r["text"]) for r in rows] == [("Verdict:", "Verdict:fine")] * 2
    # The command line wins over the template.
    chat("-t", "rev", "-s", "Be kind.", "--prefill", "OK", "-o", "reply", "good",
         lines=["third"])
    last = test_models.requests[-1]
    assert (last.system, last.prefill, last.prompt) == ("Be kind.", "OK", "Review (C): third")
    assert (last.options.reply, last.options.chunk_size) == ("good", 2)


def test_template_and_fragment_errors_are_one_line_before_the_chat(chat, test_models,
                                                                   user_dir) -> None:
    result = chat("-t", "missing", lines=["hi"])
    assert result.exit_code == 1 and "No template named 'missing'" in result.stderr
    (user_dir / "templates").mkdir(parents=True)
    (user_dir / "templates" / "ask.json").write_text(json.dumps({"prompt": "$who: $input",
                                                                  "model": "test-eats"}))
    result = chat("-t", "ask", lines=["hi"])
    assert result.exit_code == 1 and "-p who VALUE" in result.stderr
    result = chat("-m", "test-eats", "-f", "/no/such/file.md", lines=["hi"])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    result = chat("-m", "test-eats", "-p", "a", "b", lines=["hi"])
    assert result.exit_code == 1 and "use it with -t NAME" in result.stderr
    assert test_models.requests == []


def test_a_template_with_a_schema_holds_every_reply_to_it(chat, test_models, user_dir) -> None:
    from llmcli import schema as schemas

    (user_dir / "templates").mkdir(parents=True)
    person = schemas.parse_schema("name, age int")
    (user_dir / "templates" / "who.json").write_text(json.dumps({"model": "test-eats",
                                                                  "schema": person}))
    test_models.queue.extend([['{"name": "Ada", "age": 36}'], ['{"name": "Bo", "age": 5}']])
    result = chat("-t", "who", lines=["one", "two"])
    assert result.exit_code == 0, result.output
    assert [r.schema for r in test_models.requests] == [person, person]
    assert '{"name": "Bo", "age": 5}' in result.stdout
