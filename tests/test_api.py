"""The Python API: get_model, prompt with a prefill for every capability, conversations,
errors raised before any request, and what lands in the log."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

import llmcli
from llmcli import PrefillSupport
from llmcli.errors import (
    KeyNeededError,
    OptionsError,
    PartialResponseError,
    PrefillUnsupportedError,
    UnknownModelError,
)


def rows(user_dir: Path) -> list[dict]:
    conn = sqlite3.connect(user_dir / "logs.db")
    conn.row_factory = sqlite3.Row
    return [dict(r) for r in conn.execute("select * from responses order by rowid")]


@pytest.mark.parametrize("model_id", ["test-eats", "test-echoes", "test-emulated"])
@pytest.mark.parametrize("stream", [True, False])
def test_prompt_text_starts_with_prefill_once(test_models, user_dir, model_id, stream) -> None:
    model = llmcli.get_model(model_id)
    response = model.prompt("US states", prefill='["', stream=stream, reply='Alabama"]')
    chunks = list(response)
    assert "".join(chunks) == '["Alabama"]'
    assert response.text() == '["Alabama"]'
    assert response.continuation == 'Alabama"]'
    assert response.prefill == '["'
    assert response.prefill_support is model.prefill_support
    assert response.status == "complete"
    assert response.usage().stop_reason == "end_turn"
    (row,) = rows(user_dir)
    assert row["text"] == '["Alabama"]'
    assert row["continuation"] == 'Alabama"]'
    assert row["prefill"] == '["'
    assert row["prefill_support"] == model.prefill_support.value
    assert row["status"] == "complete"
    assert row["stop_reason"] == "end_turn"
    assert row["output_tokens"] is not None


def test_streaming_yields_several_chunks(test_models) -> None:
    response = llmcli.get_model("test-eats").prompt("x", prefill="P:", reply="abcdefghij",
                                                    chunk_size=2)
    assert list(response) == ["P:ab", "cd", "ef", "gh", "ij"]


def test_emulated_with_preamble(test_models) -> None:
    response = llmcli.get_model("test-emulated").prompt("x", prefill="1.", reply=" Texas",
                                                        style="preamble")
    assert response.text() == "1. Texas"


def test_trimmed_prefill_reported_by_backend_is_reconciled(test_models) -> None:
    test_models.queue.append([" 4", "2"])
    response = llmcli.get_model("test-eats").prompt("x", prefill="Answer: ", trim_prefill=True)
    assert response.text() == "Answer: 42"
    assert test_models.requests[-1].prefill == "Answer: "  # the request carries the user's


def test_unsupported_refused_before_any_request(test_models) -> None:
    model = llmcli.get_model("test-unsupported")
    with pytest.raises(PrefillUnsupportedError) as info:
        model.prompt("x", prefill='["')
    assert "test-unsupported" in str(info.value)
    assert "test-eats" in str(info.value)  # alternatives are named
    assert test_models.requests == []
    # Without a prefill it works.
    assert model.prompt("x", reply="fine").text() == "fine"


def test_unknown_model_lists_close_matches(test_models) -> None:
    with pytest.raises(UnknownModelError) as info:
        llmcli.get_model("test-eat")
    assert "test-eats" in str(info.value)


def test_aliases_and_case(test_models) -> None:
    assert llmcli.get_model("t-echoes").model_id == "test-echoes"
    assert llmcli.get_model("TEST-EATS").model_id == "test-eats"


def test_options_validated(test_models) -> None:
    model = llmcli.get_model("test-eats")
    with pytest.raises(OptionsError, match="Unknown option 'temprature'"):
        model.prompt("x", temprature=1)
    with pytest.raises(OptionsError, match="max_tokens"):
        model.prompt("x", max_tokens=0)
    with pytest.raises(OptionsError, match="max_tokens"):
        model.prompt("x", max_tokens="many")


def test_key_needed(test_models, monkeypatch) -> None:
    model = llmcli.get_model("test-keyed")
    with pytest.raises(KeyNeededError, match="llmcli keys set testkey"):
        model.prompt("x")
    monkeypatch.setenv("TESTKEY_API_KEY", "sk-env")
    model.prompt("x").text()
    assert test_models.requests[-1].key == "sk-env"
    model.prompt("x", key="sk-explicit").text()
    assert test_models.requests[-1].key == "sk-explicit"


def test_conversation_carries_full_prefilled_text(test_models, user_dir) -> None:
    model = llmcli.get_model("test-eats")
    conversation = model.conversation()
    first = conversation.prompt("Name a state", prefill='["', reply='Texas"]')
    assert first.text() == '["Texas"]'
    conversation.prompt("Another", reply="Ohio").text()
    history = test_models.requests[-1].history
    assert [(m.role, m.content) for m in history] == [
        ("user", "Name a state"),
        ("assistant", '["Texas"]'),
    ]
    logged = rows(user_dir)
    assert {r["conversation_id"] for r in logged} == {conversation.id}


def test_broken_stream_logged_as_partial_with_prefill(test_models, user_dir) -> None:
    response = llmcli.get_model("test-eats").prompt("x", prefill="P:", reply="abcdefgh",
                                                    chunk_size=2, fail_after=2)
    with pytest.raises(PartialResponseError):
        response.text()
    assert response.status == "partial"
    (row,) = rows(user_dir)
    assert row["status"] == "partial"
    assert row["text"] == "P:abcd"
    assert "connection reset" in row["error"]


def test_error_before_any_text_logged_as_error(test_models, user_dir) -> None:
    response = llmcli.get_model("test-eats").prompt("x", prefill="P:", fail_after=0)
    with pytest.raises(llmcli.ProviderError):
        response.text()
    (row,) = rows(user_dir)
    assert row["status"] == "error"


def test_consumer_stopping_early_logs_partial(test_models, user_dir) -> None:
    response = llmcli.get_model("test-eats").prompt("x", prefill="P:", reply="abcdefgh",
                                                    chunk_size=2)
    for _chunk in response:
        break
    response.close()
    (row,) = rows(user_dir)
    assert row["status"] == "partial"
    assert row["text"] == "P:ab"


def test_log_false_and_logs_off(test_models, user_dir) -> None:
    llmcli.get_model("test-eats").prompt("x", log=False).text()
    assert not (user_dir / "logs.db").exists()
    from llmcli import config

    config.set_logging(False)
    llmcli.get_model("test-eats").prompt("x").text()
    assert not (user_dir / "logs.db").exists()


def test_capability_enum_is_exactly_four() -> None:
    assert {m.name: m.value for m in PrefillSupport} == {
        "EATS_PREFIX": "eats", "ECHOES_PREFIX": "echoes",
        "EMULATED": "emulated", "UNSUPPORTED": "unsupported",
    }


def test_public_api_is_locked() -> None:
    assert sorted(llmcli.__all__) == sorted([
        "Attachment", "AttachmentError", "AttachmentUnsupportedError",
        "ConfigError", "Conversation", "ConversationError", "KeyNeededError", "KeySpec",
        "LLMCLIError", "LogError", "LogWarning", "Message", "Model", "Options", "OptionsError",
        "PartialResponseError", "PluginError", "PrefillSent", "PrefillSupport",
        "PrefillUnsupportedError",
        "PromptSpec", "ProviderError", "Request", "Response", "UnknownModelError", "Usage",
        "SchemaSupport", "InvalidSchemaError", "SchemaUnsupportedError", "SchemaValidationError",
        "emulation_instruction", "get_default_model", "get_model", "get_models",
        "load_conversation", "normalize_stream", "normalize_text",
        # tools (#29)
        "ChainLimitError", "ChainResponse", "Tool", "ToolCall", "ToolError", "ToolResult",
        "ToolSupport", "ToolsUnsupportedError",
        # the async API (#29 item 7)
        "AsyncChainResponse", "AsyncConversation", "AsyncModel", "AsyncResponse",
        "get_async_model",
    ])
    for name in llmcli.__all__:
        assert hasattr(llmcli, name)


def test_conversation_continued_after_a_failed_turn_skips_it(test_models) -> None:
    """A turn that failed before any text is not history: neither in-process nor from the
    log (one rule), so no empty assistant message is ever sent."""
    model = llmcli.get_model("test-eats")
    conversation = model.conversation()
    conversation.prompt("first", reply="one").text()
    failed = conversation.prompt("broken", fail_after=0)
    with pytest.raises(llmcli.ProviderError):
        failed.text()
    conversation.prompt("third", reply="three").text()
    in_process = [(m.role, m.content) for m in test_models.requests[-1].history]
    assert in_process == [("user", "first"), ("assistant", "one")]
    assert all(m.content for m in test_models.requests[-1].history)


def test_a_conversation_loaded_from_the_log_has_the_same_turns(test_models) -> None:
    model = llmcli.get_model("test-eats")
    conversation = model.conversation()
    conversation.prompt("first", prefill="1.", reply=" one").text()
    with pytest.raises(llmcli.ProviderError):
        conversation.prompt("broken", fail_after=0).text()
    loaded = llmcli.load_conversation(conversation.id)
    assert loaded.id == conversation.id and loaded.model is model
    assert loaded.history() == conversation.history() == [
        llmcli.Message("user", "first"), llmcli.Message("assistant", "1. one")]
    assert llmcli.load_conversation().id == conversation.id  # the most recent
    assert llmcli.load_conversation(model="t-echoes").model.model_id == "test-echoes"
    with pytest.raises(llmcli.ConversationError, match="No conversation with id"):
        llmcli.load_conversation("missing")


def test_to_dict_and_the_log_share_one_record(test_models, user_dir) -> None:
    from llmcli.log import LogStore

    conversation = llmcli.get_model("test-echoes").conversation()
    response = conversation.prompt("x", prefill="P:", reply=" yes", max_tokens=5)
    response.text()
    record = response.record()
    assert response.to_dict() == record.to_dict()
    assert record.continuation == response.continuation == " yes"
    (row,) = rows(user_dir)
    assert {k: row[k] for k in record.row()} == record.row()
    _, (logged,) = LogStore().conversation(conversation.id)
    assert dataclasses.replace(record, conversation_name=None) == logged


def test_request_repr_never_shows_the_key(test_models, monkeypatch) -> None:
    secret = "sk-SECRET-0123456789"
    monkeypatch.setenv("TESTKEY_API_KEY", secret)
    response = llmcli.get_model("test-keyed").prompt("x", prefill="P")
    response.text()
    request = test_models.requests[-1]
    assert request.key == secret  # the backend gets it...
    for shown in (repr(request), str(request), repr(test_models.requests), repr(response),
                  str(response.to_dict()), str(response.record())):
        assert secret not in shown  # ...printing never shows it
