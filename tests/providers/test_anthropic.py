"""Claude models through the real anthropic SDK over HTTP against tests/fakes/anthropic.py:
what is particular to the Messages API (native prefill and its limits, thinking, error types
and events). What every provider shares, exact error wording included, is asserted in the
fault matrix (tests/hardening/test_provider_faults.py); the fixtures are in conftest.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from llmcli_anthropic import ClaudeModel, ClaudeOptions, native_prefill, prefill_support

import llmcli
from llmcli import PrefillSupport, config, emulation_instruction
from llmcli.capabilities import ReasoningPrefill
from llmcli.errors import (
    OptionsError,
    PartialResponseError,
    PrefillUnsupportedError,
    ProviderError,
)
from llmcli.models import Reasoning
from tests.fakes.anthropic import (
    NO_PREFILL,
    THINKING_PREFILL,
    TRAILING_WHITESPACE,
    FakeAnthropic,
    error,
)
from tests.fakes.base import Reply
from tests.providers.conftest import PROVIDERS

PROVIDER = "anthropic"
KEY = PROVIDERS[PROVIDER].key
ask = PROVIDERS[PROVIDER].ask
NATIVE = "claude-sonnet-4-5"
NO_NATIVE = "claude-opus-4-7"

pytestmark = pytest.mark.filterwarnings(
    # The SDK warns that Sonnet 4.5 reaches end-of-life on 2026-11-30; not what we test.
    "ignore:The model 'claude-sonnet-4-5' is deprecated:DeprecationWarning"
)


def messages(fake: FakeAnthropic, index: int = -1) -> list[dict[str, Any]]:
    return fake.requests[index].body["messages"]


# -- models and capabilities -------------------------------------------------------------


def test_models_and_aliases(served: FakeAnthropic) -> None:
    assert llmcli.get_model("sonnet-4.5").model_id == "claude-sonnet-4-5"
    assert llmcli.get_model("haiku-4.5").model_id == "claude-haiku-4-5"
    assert llmcli.get_model("opus-4.7").model_id == "claude-opus-4-7"
    assert llmcli.get_model("opus").model_id.startswith("claude-opus-")
    ids = {m.model_id for m in llmcli.get_models()}
    assert {"claude-sonnet-4-5", "claude-opus-4-5", "claude-sonnet-4-6", "claude-opus-4-7"} <= ids
    for model in llmcli.get_models():
        if model.model_id.startswith(("bedrock/", "vertex/")):
            continue  # the platforms' own credentials: tests/providers/test_cloud_claude.py
        assert model.needs_key is not None and model.needs_key.env_var == "ANTHROPIC_API_KEY"
        assert model.prefill_note()


@pytest.mark.parametrize(("model_id", "native"), [
    ("claude-sonnet-4-5", True),
    ("claude-haiku-4-5-20251001", True),
    ("claude-opus-4-1", True),
    ("claude-sonnet-4-20250514", True),
    ("claude-3-5-haiku-20241022", True),
    ("claude-3-7-sonnet-latest", True),
    ("claude-opus-4-6", False),
    ("claude-sonnet-4-6", False),
    ("claude-opus-4-7", False),
    ("claude-opus-5", False),
    ("claude-sonnet-5-5", False),
    ("claude-mythos-preview", False),  # unknown shape: emulate, never risk the 400
])
def test_native_prefill_by_version(model_id: str, native: bool) -> None:
    assert native_prefill(model_id) is native


def test_capability_depends_on_options() -> None:
    assert prefill_support(NATIVE, ClaudeOptions()) is PrefillSupport.EATS_PREFIX
    assert prefill_support(NATIVE, ClaudeOptions(thinking=True)) is PrefillSupport.EMULATED
    assert prefill_support(NATIVE, ClaudeOptions(thinking_budget=2000)) is (
        PrefillSupport.EMULATED)
    assert prefill_support(NATIVE, ClaudeOptions(prefill_strict=True)) is (
        PrefillSupport.EATS_PREFIX)
    assert prefill_support(NATIVE, ClaudeOptions(thinking=True, prefill_strict=True)) is (
        PrefillSupport.UNSUPPORTED)
    assert prefill_support(NO_NATIVE, ClaudeOptions()) is PrefillSupport.EMULATED
    assert prefill_support(NO_NATIVE, ClaudeOptions(prefill_strict=True)) is (
        PrefillSupport.UNSUPPORTED)


# Older anthropic releases warn at request time that this model is deprecated.
@pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")
def test_resolve_any_claude_id(served: FakeAnthropic) -> None:
    model = llmcli.get_model("anthropic/claude-3-5-haiku-20241022")
    assert model.model_id == "claude-3-5-haiku-20241022"
    assert model.prefill_support is PrefillSupport.EATS_PREFIX
    dated = llmcli.get_model("claude-haiku-4-5-20251001")
    assert dated.prefill_support is PrefillSupport.EATS_PREFIX
    assert llmcli.get_model("anthropic/claude-opus-4-6").prefill_support is (
        PrefillSupport.EMULATED)
    served.reply = 'a", "b"]'
    r = llmcli.get_model("anthropic/claude-3-5-haiku-20241022").prompt(
        "x", prefill='["', log=False)
    assert r.text() == '["a", "b"]'
    assert served.last_body["model"] == "claude-3-5-haiku-20241022"


@pytest.mark.parametrize("stream", [True, False])
def test_prompt_cache_reads_count_in_the_input_and_as_cached_tokens(
    served: FakeAnthropic, stream: bool
) -> None:
    """Anthropic leaves cache reads out of ``input_tokens``; llmcli's input is the whole
    prompt (as OpenAI and the local runtime count it), the cached part in the details."""
    served.reply = "Hi."
    plain = ask(stream=stream).usage()
    assert plain.input_tokens and "cached_tokens" not in plain.details
    served.cache_read = 1200
    usage = ask(stream=stream).usage()
    assert usage.input_tokens == plain.input_tokens + 1200
    assert usage.details["cached_tokens"] == 1200


# -- native prefill (eats) ---------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_native_prefill_is_eaten_and_prepended(served: FakeAnthropic, stream: bool) -> None:
    served.reply = 'a", "b"]'
    r = ask(stream=stream)
    assert r.text() == '["a", "b"]'
    assert r.status == "complete"
    assert r.prefill_support is PrefillSupport.EATS_PREFIX
    assert messages(served)[-1] == {"role": "assistant", "content": '["'}
    assert served.last_body.get("stream", False) is stream
    usage = r.usage()
    assert usage.input_tokens and usage.output_tokens
    assert usage.stop_reason == "end_turn"


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("continuation", [" 42.", "42."])
def test_trailing_whitespace_is_trimmed_on_the_wire(
    served: FakeAnthropic, stream: bool, continuation: str
) -> None:
    # The model may or may not re-type the space the API never saw; the user gets it once.
    served.reply = continuation
    r = ask(prefill="Answer: ", stream=stream)
    assert r.text() == "Answer: 42."
    assert messages(served)[-1] == {"role": "assistant", "content": "Answer:"}


@pytest.mark.parametrize("stream", [True, False])
def test_whitespace_only_prefill_sends_no_assistant_message(
    served: FakeAnthropic, stream: bool
) -> None:
    served.reply = "Hi."
    r = ask(prefill="\n\n", stream=stream)
    assert r.text() == "\n\nHi."
    assert messages(served)[-1]["role"] == "user"


def test_no_prefill(served: FakeAnthropic) -> None:
    served.reply = "Plain."
    assert ask(prefill=None).text() == "Plain."
    assert messages(served)[-1]["role"] == "user"
    assert "system" not in served.last_body


def test_conversation_history_is_sent(served: FakeAnthropic) -> None:
    conversation = llmcli.get_model(NATIVE).conversation()
    served.reply = "first"
    assert conversation.prompt("one", log=False).text() == "first"
    served.reply = 'x"]'
    assert conversation.prompt("two", prefill='["', log=False).text() == '["x"]'
    assert messages(served) == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "first"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": '["'},
    ]


# -- Claude 4.6+: emulated, or refused when strict ----------------------------------------


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("reply", ['["a", "b"]', 'a", "b"]', 'Sure, here it is:\n["a", "b"]'])
def test_new_models_emulate(served: FakeAnthropic, stream: bool, reply: str) -> None:
    served.reply = reply
    r = ask(NO_NATIVE, stream=stream, system="Be terse.")
    assert r.text() == '["a", "b"]'
    assert r.prefill_support is PrefillSupport.EMULATED
    assert messages(served)[-1]["role"] == "user"
    assert served.last_body["system"] == "Be terse.\n\n" + emulation_instruction('["')


def test_the_fake_rejects_what_the_api_rejects(served: FakeAnthropic) -> None:
    """The fake is faithful: the requests the plugin avoids really fail on it."""
    import anthropic

    client: Any = anthropic.Anthropic(api_key=KEY, base_url=served.url, max_retries=0)
    cases = [
        (NO_NATIVE, {}, "Answer", NO_PREFILL),
        (NATIVE, {}, "Answer: ", TRAILING_WHITESPACE),
        (NATIVE, {"thinking": {"type": "enabled", "budget_tokens": 1024}}, "A",
         THINKING_PREFILL),
    ]
    for model, extra, prefill, message in cases:
        with pytest.raises(anthropic.BadRequestError) as info:
            client.messages.create(model=model, max_tokens=2048, **extra, messages=[
                {"role": "user", "content": "q"}, {"role": "assistant", "content": prefill}])
        # The error body as the wire has it (every SDK release parses it the same way).
        assert info.value.body["error"]["message"] == message


def test_strict_prefill_on_new_model_is_refused_before_any_request(
    served: FakeAnthropic,
) -> None:
    with pytest.raises(PrefillUnsupportedError) as info:
        ask(NO_NATIVE, prefill_strict=True)
    assert "claude-opus-4-7" in str(info.value)
    assert "4.6" in str(info.value)
    assert served.requests == []
    # Without a prefill, strict mode changes nothing.
    served.reply = "ok"
    assert ask(NO_NATIVE, prefill=None, prefill_strict=True).text() == "ok"


# -- extended thinking ---------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_thinking_switches_to_emulation(served: FakeAnthropic, stream: bool) -> None:
    served.reply = '["a"]'
    r = ask(stream=stream, thinking=True)
    assert r.text() == '["a"]'  # thinking text is not part of the reply
    assert r.prefill_support is PrefillSupport.EMULATED
    body = served.last_body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert messages(served)[-1]["role"] == "user"
    assert emulation_instruction('["') in body["system"]


def test_thinking_budget_and_adaptive_thinking(served: FakeAnthropic) -> None:
    served.reply = "ok"
    ask(prefill=None, thinking_budget=3000, max_tokens=8000).text()
    assert served.last_body["thinking"] == {"type": "enabled", "budget_tokens": 3000}
    ask(NO_NATIVE, prefill=None, thinking=True).text()
    assert served.last_body["thinking"] == {"type": "adaptive"}
    with pytest.raises(OptionsError, match="thinking_budget"):
        ask(thinking_budget=5000, max_tokens=4096)
    with pytest.raises(PrefillUnsupportedError):
        ask(thinking=True, prefill_strict=True)


# -- options ---------------------------------------------------------------------------------


def test_options_reach_the_wire(served: FakeAnthropic) -> None:
    served.reply = "one two ### three"
    r = ask(prefill=None, max_tokens=100, stop_sequences="###")
    assert r.text() == "one two "
    assert r.usage().stop_reason == "stop_sequence"
    body = served.last_body
    assert body["max_tokens"] == 100
    assert body["stop_sequences"] == ["###"]
    assert not {"temperature", "top_p", "top_k"} & set(body)
    ask(prefill=None, stop_sequences='["a", "b"]').text()
    assert served.last_body["stop_sequences"] == ["a", "b"]
    assert served.last_body["max_tokens"] == 4096


@pytest.mark.parametrize("name", ["temperature", "top_p", "top_k"])
def test_sampling_parameters_are_refused_with_a_reason(served: FakeAnthropic, name: str) -> None:
    # API version 2026-10-21 (pinned by the SDK) rejects them on every model.
    with pytest.raises(OptionsError, match="rejects sampling parameters"):
        options: dict[str, Any] = {name: 0.5}
        ask(**options)
    assert served.requests == []


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{"retry-after": "0"}, {"retry-after-ms": "5"}, {}])
@pytest.mark.parametrize("stream", [True, False])
def test_429_is_retried_then_succeeds(
    served: FakeAnthropic, headers: dict[str, str], stream: bool
) -> None:
    served.queued.append(error(429, "rate_limit_error", "Number of requests exceeded",
                               headers))
    served.reply = 'a"]'
    r = ask(stream=stream)
    assert r.text() == '["a"]'
    assert len(served.requests) == 2
    assert served.requests[1].headers["x-stainless-retry-count"] == "1"


def test_400_shows_the_provider_message_and_no_key(served: FakeAnthropic) -> None:
    served.queued.append(error(400, "invalid_request_error",
                               f"max_tokens: too large for key {KEY}"))
    with pytest.raises(ProviderError) as info:
        ask().text()
    message = str(info.value)
    assert message.startswith("Anthropic rejected the request (400, invalid_request_error): "
                              "max_tokens: too large")
    assert KEY not in message and config.REDACTED in message
    assert len(served.requests) == 1


def test_broken_stream_is_partial(served: FakeAnthropic) -> None:
    served.reply = 'a", "b", "c", "d", "e"]'
    served.cut_after = 6  # message_start, block start, ping, three deltas
    r = ask(log=True)
    with pytest.raises(PartialResponseError) as info:
        r.text()
    assert r.status == "partial"
    assert r.text_so_far().startswith('["')
    assert r.text_so_far() == '["a", "b", '
    assert info.value.provider == "anthropic"
    from llmcli.log import LogStore

    row = LogStore().recent(1)[0]
    assert (row["status"], row["text"], row["prefill"]) == ("partial", '["a", "b", ', '["')


def test_error_event_mid_stream(served: FakeAnthropic) -> None:
    served.reply = 'a", "b", "c"]'
    served.error_after_deltas = 2
    r = ask()
    with pytest.raises(PartialResponseError) as info:
        r.text()
    assert info.value.status == 529
    assert str(info.value).startswith("Anthropic is overloaded (529): Overloaded. Try again")
    assert r.text_so_far() == '["a", "b'


# -- the log ---------------------------------------------------------------------------------


def test_complete_response_is_logged(served: FakeAnthropic) -> None:
    from llmcli.log import LogStore

    served.reply = " 42."
    ask(prefill="Answer: ", log=True).text()
    row = LogStore().recent(1)[0]
    assert row["model"] == NATIVE
    assert (row["prefill"], row["text"], row["continuation"]) == ("Answer: ", "Answer: 42.",
                                                                   "42.")
    assert (row["status"], row["prefill_support"], row["stop_reason"]) == (
        "complete", "eats", "end_turn")
    assert row["input_tokens"] and row["output_tokens"]


# -- the command line ------------------------------------------------------------------------


def run_cli(*args: str) -> Any:
    from click.testing import CliRunner

    from llmcli.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_prefill(served: FakeAnthropic) -> None:
    served.reply = 'a", "b"]'
    result = run_cli("-m", "claude-sonnet-4-5", "--prefill", '["', "Two letters as JSON")
    assert result.exit_code == 0, result.output
    assert result.output == '["a", "b"]\n'
    assert messages(served)[-1] == {"role": "assistant", "content": '["'}
    assert served.last_body["stream"] is True


def test_cli_json_no_stream_system_options_key(served: FakeAnthropic,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    served.reply = " 7"
    result = run_cli("-m", "sonnet-4.5", "-s", "Be terse.", "--prefill", "Answer: ",
                     "--no-stream", "-o", "stop_sequences", "###", "-o", "max_tokens", "50",
                     "--key", KEY, "--json", "What is 3+4?")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["text"] == "Answer: 7"
    assert data["continuation"] == "7"
    assert data["prefill_support"] == "eats"
    assert data["usage"]["stop_reason"] == "end_turn"
    body = served.last_body
    assert body["system"] == "Be terse."
    assert (body["stop_sequences"], body["max_tokens"]) == (["###"], 50)
    assert body.get("stream", False) is False
    assert messages(served)[-1]["content"] == "Answer:"


def test_cli_thinking_option_and_emulation(served: FakeAnthropic) -> None:
    served.reply = '["x"]'
    result = run_cli("-m", "sonnet-4.5", "-o", "thinking", "1", "--prefill", '["', "q")
    assert result.exit_code == 0, result.output
    assert result.output == '["x"]\n'
    assert served.last_body["thinking"]["type"] == "enabled"


def test_cli_strict_prefill_error(served: FakeAnthropic) -> None:
    result = run_cli("-m", "opus-4.7", "-o", "prefill_strict", "1", "--prefill", "x", "q")
    assert result.exit_code == 1
    assert "does not support prefill" in result.output
    assert served.requests == []


def test_fake_reply_helper_types() -> None:
    # Guard against the helper drifting from the documented error shape.
    reply = error(401, "authentication_error", "invalid x-api-key")
    assert isinstance(reply, Reply)
    assert reply.json_body["type"] == "error"
    assert reply.json_body["error"] == {"type": "authentication_error",
                                        "message": "invalid x-api-key"}


def test_docs_examples_run(served: FakeAnthropic, capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "providers" / "anthropic.md"
    blocks = doc.read_text().split("```python\n")[1:]
    assert blocks
    served.reply = '2, 3]'
    for i, block in enumerate(blocks):
        exec(compile(block.split("```")[0], f"{doc.name}[{i}]", "exec"), {})
    out = capsys.readouterr().out
    assert out.splitlines()[:4] == ["[2, 3]", "end_turn", "emulated", "unsupported"]


# -- pure transforms (no network) ------------------------------------------------------------


def test_map_status_error_pure() -> None:
    """Anthropic's error bodies and stream error events as the plugin reads them, worded by
    the kit (no network)."""
    from llmcli_anthropic._wire import status_fault

    def map_status_error(status: int, body: Any, *, fallback: str, key: str | None,
                         retries: int) -> ProviderError:
        return ClaudeModel(NATIVE).http_error(status_fault(status, body, fallback),
                                              retries=retries, secrets=(key,) if key else ())

    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    # An error event inside a 200 stream gets the status the same error has as a response.
    err = map_status_error(200, body, fallback="x", key=None, retries=0)
    assert (err.status, str(err)) == (529, "Anthropic is overloaded (529): Overloaded. Try "
                                           "again later.")
    err = map_status_error(502, "<html>\nBad gateway\n</html>", fallback="x", key=None,
                           retries=2)
    assert str(err) == "Anthropic server error (502) after 2 retries: <html> Bad gateway </html>"
    err = map_status_error(404, None, fallback="Error code: 404", key=None, retries=0)
    assert str(err) == "Anthropic found nothing there (404): Error code: 404"
    leaked = map_status_error(400, {"error": {"message": "sk-ant-api03-abcdefghijkl bad"}},
                              fallback="x", key="other", retries=0)
    assert "sk-ant-api03" not in str(leaked)


def test_build_request_pure() -> None:
    from llmcli_anthropic._wire import build_request

    from llmcli.models import Message, Request

    def request(model_id: str, prefill: str, **options: Any) -> Request:
        opts = ClaudeOptions(**options)
        return Request(model_id=model_id, prompt="q", system=None,
                       history=[Message("user", "a"), Message("assistant", "b ")],
                       prefill=prefill, prefill_support=prefill_support(model_id, opts),
                       options=opts, stream=False)

    wire = build_request(request(NATIVE, "Answer:\t "))
    assert wire.sent_prefill == "Answer:"
    assert wire.params["messages"][-1] == {"role": "assistant", "content": "Answer:"}
    assert wire.params["messages"][1] == {"role": "assistant", "content": "b "}  # not final
    wire = build_request(request(NATIVE, "Answer:"))
    assert wire.sent_prefill is None
    wire = build_request(request(NO_NATIVE, "{"))
    assert wire.params["messages"][-1]["role"] == "user"
    assert wire.params["system"] == emulation_instruction("{")


# -- reasoning (#28) -------------------------------------------------------------------------


def _events(response: llmcli.Response) -> list[Any]:
    """What the backend yields for a prepared response, Reasoning events included."""
    return list(response.model.execute(response.request))


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("model", [NATIVE, NO_NATIVE])
def test_thinking_blocks_come_back_as_reasoning_before_the_text(
        served: FakeAnthropic, stream: bool, model: str) -> None:
    served.reply = "Paris."
    served.thinking_text = "The capital of France: that is Paris, surely."
    served.chunk_size = 7
    events = _events(ask(model, prefill=None, stream=stream, thinking=True))
    reasoning = [i for i, e in enumerate(events) if isinstance(e, Reasoning)]
    assert "".join(events[i].text for i in reasoning) == served.thinking_text
    if stream:
        assert len(reasoning) > 1  # thinking_delta by thinking_delta, as it arrives
    text = [i for i, e in enumerate(events) if isinstance(e, str) and e]
    assert max(reasoning) < min(text)
    assert "".join(e for e in events if isinstance(e, str)) == "Paris."
    # The reply is the text alone; the signature is never shown.
    assert ask(model, prefill=None, stream=stream, thinking=True).text() == "Paris."
    assert not any("sig" in e.text for e in events if isinstance(e, Reasoning))


@pytest.mark.parametrize("stream", [True, False])
def test_reasoning_prefill_skip_turns_thinking_off_for_a_native_prefill(
        served: FakeAnthropic, stream: bool) -> None:
    served.reply = 'a"]'
    r = ask(NATIVE, stream=stream, thinking=True, reasoning_prefill="skip")
    assert r.prefill_support is PrefillSupport.EATS_PREFIX
    assert r.text() == '["a"]'
    assert "thinking" not in served.last_body
    assert messages(served)[-1] == {"role": "assistant", "content": '["'}
    # Without a prefill the policy has nothing to do: thinking stays on.
    ask(NATIVE, prefill=None, stream=stream, thinking=True, reasoning_prefill="skip").text()
    assert served.last_body["thinking"]["type"] == "enabled"
    # Claude 4.6+: no thinking, the prefill emulated.
    r = ask(NO_NATIVE, stream=stream, thinking=True, reasoning_prefill="skip")
    assert r.text() == '["a"]' and "thinking" not in served.last_body
    assert r.prefill_support is PrefillSupport.EMULATED


def test_reasoning_prefill_after_is_refused_before_any_request(served: FakeAnthropic) -> None:
    """A thinking block at the start of a final assistant message must carry Anthropic's
    signature: a client cannot close the thinking itself, so 'after' is not offered."""
    model = llmcli.get_model(NATIVE)
    assert model.reasoning_prefills() == {ReasoningPrefill.SKIP: "native",
                                          ReasoningPrefill.EMULATE: "emulated"}
    with pytest.raises(OptionsError, match="after is not supported.*takes: skip, emulate"):
        ask(NATIVE, thinking=True, reasoning_prefill="after")
    assert served.requests == []
    ask(NATIVE, thinking=True, reasoning_prefill="emulate").text()
    assert messages(served)[-1]["role"] == "user"
