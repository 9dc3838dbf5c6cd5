"""Reasoning on the Chat Completions wire (#28): ``reasoning_content`` and ``reasoning``
(message and deltas) come back as :class:`llmcli.models.Reasoning`, never as answer text;
``-o reasoning_prefill``; llama-server's "prefill is incompatible with enable_thinking" 400
retried once with the thinking closed."""

from __future__ import annotations

import json
from typing import Any

import pytest

import llmcli
from llmcli import PrefillSupport
from llmcli.capabilities import ReasoningPrefill
from llmcli.errors import OptionsError
from llmcli.models import Reasoning
from tests.fakes.openai import FakeOpenAI
from tests.providers import test_openai_compat as compat
from tests.providers.test_openai_compat import CONTINUATION, PREFILL, body_of

#: The compatible-server fixtures (a fake per STYLES case, configured as model 'local').
server = compat.server
servers_file = compat.servers_file

THOUGHT = "The user wants JSON. An object with one key will do."


def events_of(response: llmcli.Response) -> list[Any]:
    return list(response.model.execute(response.request))


@pytest.mark.parametrize("server", ["vllm", "deepseek", "llama-old"], indirect=True)
@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
@pytest.mark.parametrize("stream", [True, False])
def test_reasoning_fields_come_back_as_reasoning_before_the_answer(
        server: FakeOpenAI, field: str, stream: bool) -> None:
    server.reasoning, server.reasoning_field = THOUGHT, field
    model = llmcli.get_model("local")
    events = events_of(model.prompt("Give JSON", prefill=PREFILL, stream=stream, log=False))
    thoughts = [i for i, e in enumerate(events) if isinstance(e, Reasoning)]
    assert "".join(events[i].text for i in thoughts) == THOUGHT
    assert len(thoughts) == (len(THOUGHT) + 3) // 4 if stream else len(thoughts) == 1
    texts = [i for i, e in enumerate(events) if isinstance(e, str) and e]
    assert max(thoughts) < min(texts)
    # The answer is untouched by it: the prefill once, then the continuation.
    response = model.prompt("Give JSON", prefill=PREFILL, stream=stream, log=False)
    assert response.text() == PREFILL + CONTINUATION


@pytest.mark.parametrize("server", ["llama-server"], indirect=True)
@pytest.mark.parametrize("stream", [True, False])
def test_llama_server_thinking_prefill_400_is_retried_once_with_thinking_off(
        server: FakeOpenAI, stream: bool) -> None:
    server.reasoning = THOUGHT
    response = llmcli.get_model("local").prompt("Give JSON", prefill=PREFILL, stream=stream,
                                                 log=False)
    assert response.text() == PREFILL + CONTINUATION
    first, second = (r.body for r in server.chat_requests)
    assert "chat_template_kwargs" not in first
    assert second["chat_template_kwargs"] == {"enable_thinking": False}
    assert second["messages"][-1] == {"role": "assistant", "content": PREFILL}
    retried = response.usage().details["retried"]
    assert retried.startswith("reasoning_prefill skip: the server refused a prefill")
    assert "incompatible with enable_thinking" in retried
    # The log says so: it is part of the usage the log stores.
    assert json.loads(response.record().usage_json or "{}")["retried"] == retried


@pytest.mark.parametrize("server", ["llama-server"], indirect=True)
def test_the_400_is_not_retried_under_an_explicit_policy_nor_twice(server: FakeOpenAI) -> None:
    from llmcli.errors import ProviderStatusError

    server.reasoning = THOUGHT
    # emulate: no trailing assistant message, so no 400 (thinking stays on).
    model = llmcli.get_model("local")
    response = model.prompt("Give JSON", prefill=PREFILL, log=False,
                            reasoning_prefill="emulate")
    assert response.prefill_support is PrefillSupport.EMULATED
    events = events_of(response)
    assert any(isinstance(e, Reasoning) for e in events)
    assert body_of(server)["messages"][-1]["role"] == "user"
    assert "chat_template_kwargs" not in body_of(server)
    # A server that refuses the prefill even with thinking off: one retry, then its error.
    from tests.fakes.openai import THINKING_PREFILL, error_reply

    server.enqueue(error_reply(400, THINKING_PREFILL), error_reply(400, THINKING_PREFILL))
    count = len(server.chat_requests)
    with pytest.raises(ProviderStatusError, match="incompatible with enable_thinking"):
        model.prompt("Give JSON", prefill=PREFILL, log=False).text()
    assert len(server.chat_requests) == count + 2


@pytest.mark.parametrize("server", ["vllm", "llama-server", "emulated"], indirect=True)
def test_reasoning_prefill_skip_sends_the_no_think_switch(server: FakeOpenAI) -> None:
    server.reasoning = THOUGHT
    model = llmcli.get_model("local")
    response = model.prompt("Give JSON", prefill=PREFILL, log=False, reasoning_prefill="skip")
    assert response.text().startswith(PREFILL)
    body = body_of(server)
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert len(server.chat_requests) == 1  # no 400 to retry: the thinking was off
    assert not any(isinstance(e, Reasoning) for e in events_of(
        model.prompt("Give JSON", prefill=PREFILL, log=False, reasoning_prefill="skip")))
    expected = "emulated" if server.case == "emulated" else "native"  # type: ignore[attr-defined]
    assert model.reasoning_prefills() == {ReasoningPrefill.SKIP: expected,
                                          ReasoningPrefill.EMULATE: "emulated"}
    # Without a prefill the switch is not sent: the policy is about a prefill.
    model.prompt("Give JSON", log=False, reasoning_prefill="skip").text()
    assert "chat_template_kwargs" not in body_of(server)


@pytest.mark.parametrize("server", ["vllm"], indirect=True)
def test_reasoning_prefill_after_is_refused_on_a_server(server: FakeOpenAI) -> None:
    with pytest.raises(OptionsError, match="after is not supported .*takes: skip, emulate"):
        llmcli.get_model("local").prompt("q", prefill=PREFILL, reasoning_prefill="after")
    assert server.chat_requests == []


def test_openai_models_declare_what_chat_completions_allows(
        load_plugins: Any) -> None:
    load_plugins("llmcli-openai")
    assert llmcli.get_model("o3").reasoning_prefills() == {ReasoningPrefill.EMULATE:
                                                            "emulated"}
    with pytest.raises(OptionsError, match="it takes: none"):
        llmcli.get_model("gpt-4o").prompt("q", prefill="A", reasoning_prefill="emulate",
                                          key="sk-test")
