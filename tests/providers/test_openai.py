"""OpenAI models through the real openai SDK over HTTP against the fake in tests/fakes/openai.py:
what is particular to OpenAI (emulated prefill, reasoning models, the models that refuse a
prefill, the SDK's error shapes). What every provider shares, exact error wording included,
is asserted in the fault matrix (tests/hardening/test_provider_faults.py); the fixtures are
in conftest.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner

import llmcli
from llmcli import PrefillSupport
from llmcli.errors import OptionsError, PartialResponseError, PrefillUnsupportedError, ProviderError
from tests.fakes.base import Reply
from tests.fakes.openai import FRESH_TURN, PREAMBLE, FakeOpenAI, error_reply
from tests.providers.conftest import OPENAI_CONTINUATION as CONTINUATION
from tests.providers.conftest import PROVIDERS

PROVIDER = "openai"
KEY = PROVIDERS[PROVIDER].key
ask = PROVIDERS[PROVIDER].ask


def sent(fake: FakeOpenAI, index: int = -1) -> dict[str, Any]:
    body = fake.chat_requests[index].body
    assert isinstance(body, dict)
    return body


# -- loading ------------------------------------------------------------------------------


def test_importing_and_listing_does_not_import_the_sdk() -> None:
    code = (
        "import sys, os\n"
        "os.environ['LLMCLI_LOAD_PLUGINS'] = 'llmcli-openai'\n"
        "import llmcli\n"
        "names = [m.model_id for m in llmcli.get_models()]\n"
        "assert 'gpt-4o' in names, names\n"
        "llmcli.get_model('openai/gpt-4o-2024-08-06')\n"
        "llmcli.get_model('ollama/qwen2.5:7b')\n"
        "assert 'openai' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_models_and_capabilities(served: FakeOpenAI) -> None:
    models = {m.model_id: m for m in llmcli.get_models()}
    for name in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-5",
                 "gpt-5-mini", "o3", "o4-mini"):
        assert models[name].prefill_support is PrefillSupport.EMULATED
        assert models[name].needs_key == llmcli.KeySpec("openai", "OPENAI_API_KEY")
    for name in ("o1-mini", "o1-preview"):
        assert models[name].prefill_support is PrefillSupport.UNSUPPORTED
        assert "system or developer" in models[name].prefill_note()


# -- emulated prefill ---------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("echo", ["echo", "no_echo", "preamble"])
def test_emulated_prefill_appears_once(served: FakeOpenAI, echo: str, stream: bool) -> None:
    served.echo = echo
    response = ask(prefill="Hello", stream=stream)
    assert response.text() == "Hello" + CONTINUATION
    assert response.prefill_support is PrefillSupport.EMULATED
    body = sent(served)
    system = body["messages"][0]
    assert system["role"] == "system"
    assert "<reply_prefix>Hello</reply_prefix>" in system["content"]
    # The instruction lives in the system message; the user's prompt is sent untouched and
    # no trailing assistant message is sent (OpenAI would take it as a finished turn).
    assert body["messages"][1:] == [{"role": "user", "content": "Say hello"}]
    assert body["stream"] is stream
    assert body["model"] == "gpt-4o"


def test_preamble_is_really_sent_by_the_fake(served: FakeOpenAI) -> None:
    served.echo = "preamble"
    chunks = list(ask(prefill="Hello", stream=True))
    assert "".join(chunks) == "Hello" + CONTINUATION
    assert PREAMBLE.strip() not in "".join(chunks)


def test_user_system_prompt_comes_first(served: FakeOpenAI) -> None:
    ask(system="You are terse.").text()
    system = sent(served)["messages"][0]["content"]
    assert system.startswith("You are terse.\n\n")
    assert "<reply_prefix>Hello</reply_prefix>" in system


def test_no_prefill_sends_plain_messages(served: FakeOpenAI) -> None:
    response = ask(prefill="", stream=False)
    assert response.text() == CONTINUATION.lstrip()
    assert sent(served)["messages"] == [{"role": "user", "content": "Say hello"}]


def test_streaming_asks_for_usage_and_reports_it(served: FakeOpenAI) -> None:
    response = ask(stream=True)
    response.text()
    assert sent(served)["stream_options"] == {"include_usage": True}
    usage = response.usage()
    assert (usage.input_tokens, usage.output_tokens, usage.stop_reason) == (12, 7, "end_turn")


def test_bearer_key_is_sent(served: FakeOpenAI) -> None:
    ask().text()
    assert served.chat_requests[-1].headers["authorization"] == f"Bearer {KEY}"


def test_conversation_history_is_sent(served: FakeOpenAI) -> None:
    conversation = llmcli.get_model("gpt-4o").conversation()
    conversation.prompt("First", prefill="Hello", log=False).text()
    conversation.prompt("Second", log=False).text()
    messages = sent(served)["messages"]
    assert messages == [
        {"role": "user", "content": "First"},
        {"role": "assistant", "content": "Hello" + CONTINUATION},
        {"role": "user", "content": "Second"},
    ]


# -- reasoning and unsupported models ----------------------------------------------------------


def test_reasoning_model_uses_developer_role_and_max_completion_tokens(
    served: FakeOpenAI,
) -> None:
    response = ask("gpt-5", stream=False, max_tokens=50, reasoning_effort="low", seed=3)
    assert response.text() == "Hello" + CONTINUATION
    body = sent(served)
    assert body["messages"][0]["role"] == "developer"
    assert body["max_completion_tokens"] == 50
    assert "max_tokens" not in body
    assert body["reasoning_effort"] == "low"
    assert body["seed"] == 3


def test_reasoning_model_rejects_temperature_before_any_request(
    served: FakeOpenAI,
) -> None:
    with pytest.raises(OptionsError, match="temperature"):
        ask("gpt-5", temperature=0.5)
    assert served.chat_requests == []


@pytest.mark.parametrize("name", ["o1-mini", "o1-preview", "openai/o1-mini-2024-09-12"])
def test_unsupported_models_refuse_a_prefill(served: FakeOpenAI, name: str) -> None:
    with pytest.raises(PrefillUnsupportedError, match=name):
        ask(name)
    assert served.chat_requests == []


def test_unsupported_model_works_without_prefill(served: FakeOpenAI) -> None:
    assert ask("o1-mini", prefill="", stream=False).text() == CONTINUATION.lstrip()


def test_chat_options_are_sent(served: FakeOpenAI) -> None:
    ask(stream=False, max_tokens=20, temperature=0.2, top_p=0.9, stop=["\n\n"], seed=7).text()
    body = sent(served)
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["stop"],
            body["seed"]) == (20, 0.2, 0.9, ["\n\n"], 7)


def test_resolver_passes_any_model_id(served: FakeOpenAI) -> None:
    model = llmcli.get_model("openai/gpt-4o-2024-08-06")
    assert model.prefill_support is PrefillSupport.EMULATED
    model.prompt("Hi", prefill="Hello", stream=False, log=False).text()
    assert sent(served)["model"] == "gpt-4o-2024-08-06"


def test_resolver_classifies_by_family(served: FakeOpenAI) -> None:
    from llmcli_openai._models import OpenAIChat, OpenAIReasoning

    assert type(llmcli.get_model("openai/o3-2025-04-16")) is OpenAIReasoning
    assert type(llmcli.get_model("openai/gpt-5-chat-latest")) is OpenAIChat
    assert type(llmcli.get_model("openai/gpt-3.5-turbo")) is OpenAIChat


def test_fresh_turn_without_instruction_is_what_a_trailing_message_gets(
    served: FakeOpenAI,
) -> None:
    """Why no trailing assistant message: OpenAI answers it with a new turn (the fake too)."""
    import openai

    client = openai.OpenAI(api_key=KEY, base_url=served.url + "/v1", max_retries=0)
    completion = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    )
    assert completion.choices[0].message.content == FRESH_TURN


# -- errors -------------------------------------------------------------------------------


def test_404_unknown_model(served: FakeOpenAI) -> None:
    served.models = ("gpt-4o",)
    with pytest.raises(ProviderError, match=r"found nothing there \(404\).*gpt-4\.1-nano") as info:
        ask("gpt-4.1-nano").text()
    assert info.value.status == 404


def test_400_shows_the_providers_message(served: FakeOpenAI) -> None:
    served.enqueue(error_reply(400, "Invalid value for 'top_p': must be <= 1.",
                                   code="invalid_value"))
    with pytest.raises(ProviderError, match=r"rejected the request \(400\): Invalid value") as info:
        ask(stream=False).text()
    assert info.value.status == 400
    assert len(served.chat_requests) == 1  # a 400 is not retried


def test_502_html_body_from_a_proxy(served: FakeOpenAI) -> None:
    served.enqueue(Reply(status=502, raw_body=b"<html>Bad Gateway</html>",
                             headers={"content-type": "text/html"}))
    with pytest.raises(ProviderError, match=r"\(502\).*Bad Gateway"):
        ask(max_retries=0).text()


@pytest.mark.parametrize("echo", ["echo", "no_echo"])
def test_broken_stream_keeps_partial_text_starting_with_prefill(served: FakeOpenAI,
                                                                echo: str) -> None:
    served.echo = echo
    served.cut_after = 4
    response = ask(stream=True)
    with pytest.raises(PartialResponseError, match="stream broke off") as info:
        response.text()
    assert info.value.provider == "OpenAI"
    assert response.status == "partial"
    partial = response.text_so_far()
    assert partial.startswith("Hello") and not partial.startswith("HelloHello")
    assert len(served.chat_requests) == 1  # a stream that had started is not retried


def test_malformed_sse_line(served: FakeOpenAI) -> None:
    served.malformed_after = 3
    response = ask(stream=True)
    with pytest.raises(ProviderError, match="malformed response.*invalid JSON"):
        response.text()
    assert response.text_so_far().startswith("Hello")


def test_malformed_sse_before_any_text(served: FakeOpenAI) -> None:
    served.malformed_after = 0
    response = ask(stream=True)
    with pytest.raises(ProviderError, match="malformed response") as info:
        response.text()
    assert not isinstance(info.value, PartialResponseError)
    assert response.status == "error"


def test_invalid_json_body(served: FakeOpenAI) -> None:
    served.invalid_json = True
    with pytest.raises(ProviderError, match="malformed response.*invalid JSON"):
        ask(stream=False).text()


def test_error_event_inside_a_stream(served: FakeOpenAI) -> None:
    events = ['data: {"error": {"message": "The model is overloaded", "type": "server_error"}}'
              "\n\n"]
    served.enqueue(Reply(events=events))
    with pytest.raises(ProviderError, match="mid-stream: The model is overloaded"):
        ask(stream=True).text()


# -- CLI ----------------------------------------------------------------------------------


def run_cli(*args: str) -> Any:
    from llmcli.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize("stream_flag", [[], ["--no-stream"]])
@pytest.mark.parametrize("echo", ["echo", "no_echo", "preamble"])
def test_cli_prompt_with_prefill(served: FakeOpenAI, echo: str,
                                 stream_flag: list[str]) -> None:
    served.echo = echo
    result = run_cli("-m", "gpt-4o", "--prefill", "Hello", "Say hello", *stream_flag)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "Hello" + CONTINUATION.rstrip()
    assert sent(served)["stream"] is (not stream_flag)


def test_cli_system_options_key_and_json(served: FakeOpenAI,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    result = run_cli("-m", "gpt-4o-mini", "-s", "Be brief.", "--prefill", "Hello", "-o",
                     "temperature", "0.3", "-o", "max_tokens", "40", "--key", KEY, "--json",
                     "Say hello")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["text"] == "Hello" + CONTINUATION
    assert data["prefill"] == "Hello"
    body = sent(served)
    assert body["temperature"] == 0.3 and body["max_tokens"] == 40
    assert body["messages"][0]["content"].startswith("Be brief.")
    assert body["model"] == "gpt-4o-mini"


def test_cli_logs_the_exchange(served: FakeOpenAI) -> None:
    result = run_cli("-m", "gpt-4o", "--prefill", "Hello", "Say hello")
    assert result.exit_code == 0, result.output
    logs = run_cli("logs", "--json")
    assert logs.exit_code == 0, logs.output
    assert "Hello" + CONTINUATION in logs.output


def test_cli_unsupported_model(served: FakeOpenAI) -> None:
    result = run_cli("-m", "o1-mini", "--prefill", "Hello", "Say hello")
    assert result.exit_code == 1
    assert "does not support prefill" in result.output
    assert served.chat_requests == []


def test_cli_models_lists_openai(served: FakeOpenAI) -> None:
    result = run_cli("models")
    assert result.exit_code == 0, result.output
    assert "gpt-4o" in result.output and "o1-mini" in result.output


def test_docs_python_example_runs(served: FakeOpenAI) -> None:
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "providers" / "openai.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.DOTALL)
    assert blocks
    for block in blocks:
        exec(compile(block, str(doc), "exec"), {})
    assert sent(served)["model"] == "gpt-4o-mini"
