"""Continuing a cut-off reply (#28 part 4): ``response.continue_reply()``, ``llmcli
--continue-reply`` and chat's ``!continue`` send the same prompt with the cut-off reply's text
as the prefill; the new reply's text is the whole reply, the log links it to the one it
extends, ``llmcli logs`` shows them joined, and a continued conversation sends the whole
reply once."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

import llmcli
from llmcli.errors import ConversationError


def run(*args: str, input: str | None = None) -> Any:
    from llmcli.cli import cli

    return CliRunner().invoke(cli, list(args), input=input)


def logged() -> list[dict[str, Any]]:
    return json.loads(run("logs", "--json", "-n", "0").stdout)


def test_python_continue_reply(test_models: Any) -> None:
    model = llmcli.get_model("test-eats")
    conversation = model.conversation()
    cut = conversation.prompt("tell", chunk_size=3, cut_after=2, log=False)
    assert cut.text() == "reply " and cut.stop_reason == "max_tokens"
    whole = cut.continue_reply(options={"cut_after": 0})
    assert whole.text() == "reply reply to: tell"  # the cut reply, then its continuation
    request = test_models.requests[-1]
    assert (request.prompt, request.prefill, request.history) == ("tell", "reply ", [])
    assert whole.record().continues_id == cut.id
    assert whole.to_dict()["continues_id"] == cut.id
    # The next turn carries the whole reply once, not the cut one too.
    conversation.prompt("more", log=False).text()
    assert [m.content for m in test_models.requests[-1].history] == [
        "tell", "reply reply to: tell"]
    with pytest.raises(ConversationError, match="cannot be continued: it finished "
                       r"\(stop: end_turn\)"):
        whole.continue_reply()


def test_an_interrupted_reply_can_be_continued(test_models: Any) -> None:
    response = llmcli.get_model("test-echoes").prompt("tell", chunk_size=2, log=False)
    for _ in response:
        break
    response.close()
    assert response.status == "partial"
    assert response.continue_reply().text() == "rereply to: tell"  # echoed, normalized once


def test_cli_continue_reply_and_logs_joined(test_models: Any) -> None:
    first = run("-m", "test-eats", "-o", "chunk_size", "3", "-o", "cut_after", "2", "tell")
    assert first.stdout == "reply \n"
    second = run("--continue-reply", "-o", "cut_after", "0")
    assert second.exit_code == 0, second.output
    assert second.stdout == "reply reply to: tell\n"  # one whole reply
    cut, whole = logged()
    assert (whole["continues_id"], whole["text"], whole["prompt"]) == (
        cut["id"], "reply reply to: tell", "tell")
    assert cut["stop_reason"] == "max_tokens" and cut["continues_id"] is None
    assert whole["conversation_id"] == cut["conversation_id"]
    shown = run("logs", "-n", "1").stdout
    assert f"Continues {cut['id']}" in shown
    assert "Response:\nreply reply to: tell" in shown and "Prefill" not in shown
    assert f"continues: {cut['id']}" in run("logs", "-n", "1", "-s").stdout
    # -c afterwards: the whole reply is the turn.
    run("-c", "more")
    assert [m.content for m in test_models.requests[-1].history] == [
        "tell", "reply reply to: tell"]
    # Nothing left to continue: a one-line error.
    done = run("--continue-reply")
    assert done.exit_code == 1
    assert "cannot be continued: it finished (stop: end_turn)" in done.stderr
    assert "Traceback" not in done.output
    assert run("--continue-reply", "a prompt").exit_code != 0


def test_cli_continue_reply_picks_the_conversation(test_models: Any) -> None:
    run("-m", "test-eats", "-o", "cut_after", "1", "first")
    cid = logged()[0]["conversation_id"]
    run("-m", "test-eats", "second")  # a newer conversation, finished
    result = run("--continue-reply", "--cid", cid, "--hide-prefill", "-o", "cut_after", "0")
    assert result.exit_code == 0, result.output
    assert result.stdout == "reply to: first\n"  # only the new text
    assert logged()[-1]["continues_id"] == logged()[0]["id"]


def test_chat_continue(test_models: Any) -> None:
    from llmcli.cli import cli

    result = CliRunner().invoke(cli, ["chat", "-m", "test-eats", "-o", "chunk_size", "3",
                                      "-o", "cut_after", "2"],
                                input="tell\n!continue\nexit\n")
    assert result.exit_code == 0, result.output
    # The cut reply, then (after !continue) only its continuation: cut again at 2 chunks.
    assert "reply \n" in result.stdout and "rep\n" not in result.stdout
    rows = logged()
    assert [r["text"] for r in rows] == ["reply ", "reply reply "]
    assert rows[1]["continues_id"] == rows[0]["id"]
    assert test_models.requests[-1].prefill == "reply "
