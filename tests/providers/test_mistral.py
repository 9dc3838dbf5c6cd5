"""Mistral models through the real mistralai SDK over HTTP against tests/fakes/mistral.py:
what is particular to Mistral (``prefix: true`` and its echo, options, error bodies, the
retry window). What every provider shares, exact error wording included, is asserted in the
fault matrix (tests/hardening/test_provider_faults.py); the fixtures are in conftest.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from llmcli_mistral import MistralModel
from llmcli_mistral._wire import retry_plan

import llmcli
from llmcli import PrefillSupport
from llmcli.errors import OptionsError, PartialResponseError, ProviderError
from tests.fakes.mistral import NO_PREFIX, FakeMistral, error
from tests.providers.conftest import PROVIDERS

PROVIDER = "mistral"
KEY = PROVIDERS[PROVIDER].key
ask = PROVIDERS[PROVIDER].ask
MODEL = "mistral-small-latest"


def messages(fake: FakeMistral, index: int = -1) -> list[dict[str, Any]]:
    return fake.requests[index].body["messages"]


# -- models --------------------------------------------------------------------------------


def test_models_and_aliases(served: FakeMistral) -> None:
    ids = {m.model_id for m in llmcli.get_models()}
    assert ids == {"mistral-large-latest", "mistral-medium-latest", "mistral-small-latest",
                   "codestral-latest", "open-mistral-nemo"}
    assert llmcli.get_model("codestral").model_id == "codestral-latest"
    for model in llmcli.get_models():
        assert model.prefill_support is PrefillSupport.ECHOES_PREFIX
        assert model.needs_key is not None and model.needs_key.env_var == "MISTRAL_API_KEY"


def test_resolve_any_mistral_id(served: FakeMistral) -> None:
    served.reply = 'x"]'
    model = llmcli.get_model("mistral/magistral-medium-latest")
    assert model.model_id == "magistral-medium-latest"
    assert model.prompt("q", prefill='["', log=False).text() == '["x"]'
    assert served.last_body["model"] == "magistral-medium-latest"
    with pytest.raises(llmcli.UnknownModelError):
        llmcli.get_model("magistral-medium-latest")


# -- prefix: true, echoed ------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("prefill", ['["', "Answer: ", "def f(x):\n    "])
def test_prefix_is_sent_and_echo_stripped(served: FakeMistral, stream: bool,
                                          prefill: str) -> None:
    served.reply = "done"
    r = ask(prefill=prefill, stream=stream)
    assert r.text() == prefill + "done"  # echoed by the API, kept once
    assert r.status == "complete"
    assert messages(served)[-1] == {"role": "assistant", "content": prefill, "prefix": True}
    assert served.last_body["stream"] is stream
    usage = r.usage()
    assert usage.input_tokens and usage.output_tokens
    assert usage.stop_reason == "end_turn"


@pytest.mark.parametrize("stream", [True, False])
def test_token_limit_is_max_tokens(served: FakeMistral, stream: bool) -> None:
    served.reply = "one two three four"
    r = ask(prefill="P: ", stream=stream, max_tokens=2)
    assert r.text() == "P: one two"
    assert r.stop_reason == "max_tokens"


def test_echo_split_across_stream_chunks(served: FakeMistral) -> None:
    served.chunk_size = 1  # every character its own SSE event
    served.reply = 'a", "b"]'
    assert ask(prefill='["').text() == '["a", "b"]'


def test_no_prefill_sends_no_assistant_message(served: FakeMistral) -> None:
    served.reply = "Plain."
    assert ask(prefill=None).text() == "Plain."
    assert messages(served)[-1]["role"] == "user"


def test_system_and_history(served: FakeMistral) -> None:
    conversation = llmcli.get_model(MODEL).conversation()
    served.reply = "first"
    conversation.prompt("one", system="Be terse.", log=False).text()
    served.reply = 'x"]'
    assert conversation.prompt("two", system="Be terse.", prefill='["',
                               log=False).text() == '["x"]'
    sent = messages(served)
    assert [(m["role"], m["content"]) for m in sent] == [
        ("system", "Be terse."), ("user", "one"), ("assistant", "first"), ("user", "two"),
        ("assistant", '["'),
    ]
    # Only the final message carries prefix: true (the SDK writes false on earlier turns).
    assert [m.get("prefix", False) for m in sent] == [False, False, False, False, True]


def test_the_fake_rejects_a_trailing_assistant_without_prefix(served: FakeMistral) -> None:
    """The fake is faithful: the request the plugin avoids really fails on it."""
    from llmcli_mistral._models import _SDK

    sdk = _SDK()  # the SDK's names where this mistralai version keeps them
    client: Any = sdk.Mistral(api_key=KEY, server_url=served.url)
    with pytest.raises(sdk.status_errors) as info:
        client.chat.complete(model=MODEL, messages=[
            {"role": "user", "content": "q"}, {"role": "assistant", "content": "A"}])
    assert info.value.status_code == 400
    assert NO_PREFIX in info.value.body and '"3230"' in info.value.body


# -- options -------------------------------------------------------------------------------


def test_options_reach_the_wire(served: FakeMistral) -> None:
    served.reply = "one two ### three"
    r = ask(prefill=None, max_tokens=100, temperature=0.2, top_p=0.9, stop="###",
            random_seed=7)
    assert r.text() == "one two "
    body = served.last_body
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["random_seed"]) == (
        100, 0.2, 0.9, 7)
    assert body["stop"] == ["###"]
    ask(prefill=None, stop='["a", "b"]').text()
    assert served.last_body["stop"] == ["a", "b"]
    assert "max_tokens" not in served.last_body


def test_unknown_option_fails_loudly(served: FakeMistral) -> None:
    with pytest.raises(OptionsError, match="seed"):
        ask(seed=1)


def test_retry_plan() -> None:
    assert retry_plan(0) is None
    plan = retry_plan(2)
    assert plan is not None
    # 500 ms then 1000 ms of backoff, 250 ms jitter each, 1 s per attempt.
    assert plan.max_elapsed_time == 500 + 250 + 1000 + 250 + 2000
    assert (plan.initial_interval, plan.exponent) == (500, 2.0)
    # The SDK caps each sleep, jitter included, at max_ms: so does the window.
    capped = retry_plan(2, initial_ms=5, max_ms=20, jitter_ms=1000, slack_ms=500)
    assert capped is not None and capped.max_elapsed_time == 20 + 20 + 2 * 500


class _OldBackoff:
    """BackoffStrategy as mistralai 1.x and 2.x define it: no jitter_ms."""

    def __init__(self, initial_interval: int, max_interval: int, exponent: float,
                 max_elapsed_time: int) -> None:
        self.max_elapsed_time = max_elapsed_time


class _NewBackoff(_OldBackoff):
    """... and as later releases do."""

    def __init__(self, initial_interval: int, max_interval: int, exponent: float,
                 max_elapsed_time: int, jitter_ms: int | None = None) -> None:
        super().__init__(initial_interval, max_interval, exponent, max_elapsed_time)
        self.jitter_ms = jitter_ms


@pytest.mark.parametrize("backoff", [_NewBackoff, _OldBackoff])
def test_backoff_fits_the_sdk_release(monkeypatch: pytest.MonkeyPatch,
                                      backoff: type[_OldBackoff]) -> None:
    """mistralai took ``jitter_ms`` late; before that it added up to 1 s of its own, which
    the retry window must then make room for. Both signatures are replayed, whichever
    release is installed (make test-oldest-sdks runs the plugin on a 1.x one)."""
    from llmcli_mistral import _models

    monkeypatch.setattr(_models, "RETRY_TUNING", {})  # the real delays, not the tests'
    sdk = _models._SDK()
    sdk.BackoffStrategy = backoff
    config = sdk.retry_config(2)
    jitter = 250 if backoff is _NewBackoff else 1000
    assert config.backoff.max_elapsed_time == 500 + jitter + 1000 + jitter + 2000
    assert getattr(config.backoff, "jitter_ms", None) == (250 if jitter == 250 else None)


def test_the_installed_release_gets_a_backoff_it_takes() -> None:
    from llmcli_mistral import _models

    assert _models._SDK().retry_config(2).backoff.max_elapsed_time > 0


# -- errors --------------------------------------------------------------------------------


def test_400_shows_the_provider_message_and_no_key(served: FakeMistral) -> None:
    served.queued.append(error(400, f"Invalid model for key {KEY}", code="1500"))
    with pytest.raises(ProviderError) as info:
        ask().text()
    message = str(info.value)
    assert message.startswith("Mistral rejected the request (400, code 1500): Invalid model")
    assert KEY not in message and "[REDACTED]" in message
    assert len(served.requests) == 1


def test_422_validation_error(served: FakeMistral) -> None:
    from tests.fakes.base import Reply

    served.queued.append(Reply(status=422, json_body={"detail": [
        {"type": "less_than_equal", "loc": ["body", "temperature"],
         "msg": "Input should be less than or equal to 1.5"}]}))
    with pytest.raises(ProviderError) as info:
        ask().text()
    assert info.value.status == 422
    assert "less than or equal to 1.5" in str(info.value)


def test_broken_stream_is_partial(served: FakeMistral) -> None:
    served.reply = 'a", "b", "c", "d", "e"]'
    served.cut_after = 4  # the role chunk, then three 3-character pieces of the echoed text
    r = ask(log=True)
    with pytest.raises(PartialResponseError) as info:
        r.text()
    assert r.status == "partial"
    assert r.text_so_far() == '["a", "b"'
    assert info.value.provider == "mistral"
    from llmcli.log import LogStore

    row = LogStore().recent(1)[0]
    assert (row["status"], row["text"], row["prefill"]) == ("partial", '["a", "b"', '["')


def test_stream_cut_inside_the_echo(served: FakeMistral) -> None:
    served.chunk_size = 1
    served.cut_after = 2  # only '[' of the echo arrived
    r = ask(prefill='["')
    with pytest.raises(PartialResponseError):
        r.text()
    assert r.text_so_far().startswith('["')


# -- the log -------------------------------------------------------------------------------


def test_complete_response_is_logged(served: FakeMistral) -> None:
    from llmcli.log import LogStore

    served.reply = "42."
    ask(prefill="Answer: ", log=True).text()
    row = LogStore().recent(1)[0]
    assert (row["model"], row["prefill"], row["text"], row["continuation"]) == (
        MODEL, "Answer: ", "Answer: 42.", "42.")
    assert (row["status"], row["prefill_support"], row["stop_reason"]) == (
        "complete", "echoes", "end_turn")


# -- the command line ----------------------------------------------------------------------


def run_cli(*args: str) -> Any:
    from click.testing import CliRunner

    from llmcli.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_prefill(served: FakeMistral) -> None:
    served.reply = 'a", "b"]'
    result = run_cli("-m", "mistral-small", "--prefill", '["', "Two letters as JSON")
    assert result.exit_code == 0, result.output
    assert result.output == '["a", "b"]\n'
    assert messages(served)[-1] == {"role": "assistant", "content": '["', "prefix": True}


def test_cli_json_no_stream_options_key(served: FakeMistral,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MISTRAL_API_KEY")
    served.reply = "7"
    result = run_cli("-m", "codestral", "-s", "Be terse.", "--prefill", "Answer: ",
                     "--no-stream", "-o", "temperature", "0.3", "-o", "random_seed", "1",
                     "--key", KEY, "--json", "What is 3+4?")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["text"], data["continuation"]) == ("Answer: 7", "7")
    assert data["prefill_support"] == "echoes"
    body = served.last_body
    assert (body["temperature"], body["random_seed"], body["stream"]) == (0.3, 1, False)
    assert body["messages"][0] == {"role": "system", "content": "Be terse."}


def test_docs_examples_run(served: FakeMistral, capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "providers" / "mistral.md"
    blocks = doc.read_text().split("```python\n")[1:]
    assert blocks
    served.reply = "2, 3]"
    for i, block in enumerate(blocks):
        exec(compile(block.split("```")[0], f"{doc.name}[{i}]", "exec"), {})
    assert capsys.readouterr().out.startswith("[2, 3]\n")


# -- pure transforms (no network) ----------------------------------------------------------


def test_error_bodies_pure() -> None:
    from llmcli_mistral._wire import error_message_from_body, status_fault

    def map_status_error(status: int, body: Any, *, fallback: str, key: str | None,
                         retries: int) -> ProviderError:
        return MistralModel(MODEL).http_error(status_fault(status, body, fallback),
                                              retries=retries, secrets=(key,) if key else ())

    assert error_message_from_body('{"object": "error", "message": "m", "code": "3230"}') == (
        "3230", "m")
    assert error_message_from_body(b"upstream connect error") == (
        None, "upstream connect error")
    code, message = error_message_from_body({"detail": [{"msg": "Field required"}]})
    assert code is None and message is not None and "Field required" in message
    err = map_status_error(401, '{"message": "Unauthorized"}', fallback="x",
                           key="k-123", retries=2)
    assert (err.status, err.provider) == (401, "mistral")
    err = map_status_error(400, {"message": "Bearer abc.def is bad"}, fallback="x", key=None,
                           retries=0)
    assert "abc.def" not in str(err)
