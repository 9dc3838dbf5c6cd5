"""The prompt spec: one frozen object that every front end builds, the same way."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

import llmcli
from llmcli import api
from llmcli.cli import cli
from llmcli.spec import PromptSpec

#: Fields of a logged row that differ between two exchanges of the same prompt.
VOLATILE = {"id", "datetime_utc", "conversation_id", "duration_ms"}


def test_a_spec_is_frozen_and_owns_its_options() -> None:
    options = {"temperature": 0.5}
    spec = PromptSpec("hi", prefill="[", options=options, key="sk-secret-0000")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.prefill = "{"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.options["temperature"] = 1.0  # type: ignore[index]
    options["temperature"] = 0.9  # the caller's dict changing later changes nothing
    assert spec.options == {"temperature": 0.5}
    assert "sk-secret" not in repr(spec)
    changed = spec.replace(prompt="bye")
    assert (changed.prompt, changed.prefill, spec.prompt) == ("bye", "[", "hi")
    assert PromptSpec.of(spec) is spec
    assert PromptSpec.of("hi", prefill="[", options={"temperature": 0.5},
                         key="sk-secret-0000") == spec


def logged_rows() -> list[dict]:
    result = CliRunner().invoke(cli, ["logs", "--json", "-n", "0"])
    assert result.exit_code == 0, result.output
    return [{k: v for k, v in row.items() if k not in VOLATILE}
            for row in json.loads(result.stdout)]


def test_cli_and_api_log_the_same_record_for_the_same_prompt(test_models) -> None:
    result = CliRunner().invoke(cli, ["-m", "test-eats", "US states", "-s", "Be brief.",
                                      "--prefill", '["', "-o", "reply", 'Ohio"]'])
    assert result.exit_code == 0, result.output
    assert result.stdout == '["Ohio"]\n'
    model = llmcli.get_model("test-eats")
    assert model.prompt("US states", system="Be brief.", prefill='["',
                        reply='Ohio"]').text() == '["Ohio"]'
    spec = PromptSpec("US states", system="Be brief.", prefill='["', options={"reply": 'Ohio"]'})
    response = api.prompt(model, spec)
    assert response.text() == '["Ohio"]'
    assert response.spec == spec  # the response keeps the prompt as asked
    via_cli, via_model, via_spec = logged_rows()[::-1]
    assert via_cli["prefill"] == '["' and via_cli["system"] == "Be brief."
    assert json.loads(via_cli["options_json"])["reply"] == 'Ohio"]'
    assert via_cli == via_model == via_spec


def test_a_chat_turn_builds_its_spec_from_the_chat_state(test_models) -> None:
    from llmcli.cli.chat import ChatState

    model = llmcli.get_model("test-eats")
    state = ChatState(model.conversation(), "Be brief.", "[", options={"reply": "1]"},
                      log=False, context="CONTEXT")
    state.next_prefill = "{"
    first = state.spec("hello")
    assert (first.prompt, first.prefill, first.system) == ("CONTEXT\n\nhello", "{",
                                                          "Be brief.")
    second = state.spec("again")  # the fragments' context and the !prefill are used up
    assert (second.prompt, second.prefill) == ("again", "[")
    assert second.conversation is state.conversation and second.log is False
    assert dict(second.options) == {"reply": "1]"}
