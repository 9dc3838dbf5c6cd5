"""Mistral models through the real mistralai SDK over HTTP against tests/fakes/mistral.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from llmcli_mistral.transform import retry_plan

import llmcli
from llmcli import PrefillSupport
from llmcli.errors import OptionsError, PartialResponseError, ProviderError
from tests.fakes.mistral import NO_PREFIX, FakeMistral, error, unauthorized

KEY = "mistral-test-0123456789abcdef"
MODEL = "mistral-small-latest"


@pytest.fixture
def fake() -> Iterator[FakeMistral]:
    with FakeMistral(api_key=KEY) as server:
        yield server  # type: ignore[misc]


@pytest.fixture
def mistral(fake: FakeMistral, load_plugins: Callable[..., None],
            monkeypatch: pytest.MonkeyPatch) -> FakeMistral:
    monkeypatch.setenv("MISTRAL_BASE_URL", fake.url)
    monkeypatch.setenv("MISTRAL_API_KEY", KEY)
    load_plugins("llmcli-mistral")
    return fake


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff in milliseconds rather than half-seconds, so the suite stays quick."""
    import llmcli_mistral

    monkeypatch.setattr(llmcli_mistral, "RETRY_TUNING",
                        {"initial_ms": 5, "max_ms": 20, "jitter_ms": 0, "slack_ms": 500})


def ask(model: str = MODEL, prefill: str | None = '["', stream: bool = True,
        **kwargs: Any) -> llmcli.Response:
    kwargs.setdefault("log", False)
    return llmcli.get_model(model).prompt("List two letters as JSON.", prefill=prefill,
                                          stream=stream, **kwargs)


def messages(fake: FakeMistral, index: int = -1) -> list[dict[str, Any]]:
    return fake.requests[index].body["messages"]


# -- models --------------------------------------------------------------------------------


def test_models_and_aliases(mistral: FakeMistral) -> None:
    ids = {m.model_id for m in llmcli.get_models()}
    assert ids == {"mistral-large-latest", "mistral-medium-latest", "mistral-small-latest",
                   "codestral-latest", "open-mistral-nemo"}
    assert llmcli.get_model("codestral").model_id == "codestral-latest"
    for model in llmcli.get_models():
        assert model.prefill_support is PrefillSupport.ECHOES_PREFIX
        assert model.needs_key is not None and model.needs_key.env_var == "MISTRAL_API_KEY"


def test_resolve_any_mistral_id(mistral: FakeMistral) -> None:
    mistral.reply = 'x"]'
    model = llmcli.get_model("mistral/magistral-medium-latest")
    assert model.model_id == "magistral-medium-latest"
    assert model.prompt("q", prefill='["', log=False).text() == '["x"]'
    assert mistral.last_body["model"] == "magistral-medium-latest"
    with pytest.raises(llmcli.UnknownModelError):
        llmcli.get_model("magistral-medium-latest")


def test_importing_the_plugin_does_not_import_the_sdk() -> None:
    code = (
        "import sys, llmcli_mistral\n"
        "models = []\n"
        "llmcli_mistral.register_models(models.append)\n"
        "assert models\n"
        "assert not [m for m in sys.modules if m.startswith('mistralai')], 'SDK imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- prefix: true, echoed ------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("prefill", ['["', "Answer: ", "def f(x):\n    "])
def test_prefix_is_sent_and_echo_stripped(mistral: FakeMistral, stream: bool,
                                          prefill: str) -> None:
    mistral.reply = "done"
    r = ask(prefill=prefill, stream=stream)
    assert r.text() == prefill + "done"  # echoed by the API, kept once
    assert r.status == "complete"
    assert messages(mistral)[-1] == {"role": "assistant", "content": prefill, "prefix": True}
    assert mistral.last_body["stream"] is stream
    usage = r.usage()
    assert usage.input_tokens and usage.output_tokens
    assert usage.stop_reason == "end_turn"


@pytest.mark.parametrize("stream", [True, False])
def test_token_limit_is_max_tokens(mistral: FakeMistral, stream: bool) -> None:
    mistral.reply = "one two three four"
    r = ask(prefill="P: ", stream=stream, max_tokens=2)
    assert r.text() == "P: one two"
    assert r.stop_reason == "max_tokens"


def test_echo_split_across_stream_chunks(mistral: FakeMistral) -> None:
    mistral.chunk_size = 1  # every character its own SSE event
    mistral.reply = 'a", "b"]'
    assert ask(prefill='["').text() == '["a", "b"]'


def test_no_prefill_sends_no_assistant_message(mistral: FakeMistral) -> None:
    mistral.reply = "Plain."
    assert ask(prefill=None).text() == "Plain."
    assert messages(mistral)[-1]["role"] == "user"


def test_system_and_history(mistral: FakeMistral) -> None:
    conversation = llmcli.get_model(MODEL).conversation()
    mistral.reply = "first"
    conversation.prompt("one", system="Be terse.", log=False).text()
    mistral.reply = 'x"]'
    assert conversation.prompt("two", system="Be terse.", prefill='["',
                               log=False).text() == '["x"]'
    sent = messages(mistral)
    assert [(m["role"], m["content"]) for m in sent] == [
        ("system", "Be terse."), ("user", "one"), ("assistant", "first"), ("user", "two"),
        ("assistant", '["'),
    ]
    # Only the final message carries prefix: true (the SDK writes false on earlier turns).
    assert [m.get("prefix", False) for m in sent] == [False, False, False, False, True]


def test_the_fake_rejects_a_trailing_assistant_without_prefix(mistral: FakeMistral) -> None:
    """The fake is faithful: the request the plugin avoids really fails on it."""
    from mistralai.client import Mistral, errors

    client: Any = Mistral(api_key=KEY, server_url=mistral.url)
    with pytest.raises(errors.SDKError) as info:
        client.chat.complete(model=MODEL, messages=[
            {"role": "user", "content": "q"}, {"role": "assistant", "content": "A"}])
    assert info.value.status_code == 400
    assert NO_PREFIX in info.value.body and '"3230"' in info.value.body


# -- options -------------------------------------------------------------------------------


def test_options_reach_the_wire(mistral: FakeMistral) -> None:
    mistral.reply = "one two ### three"
    r = ask(prefill=None, max_tokens=100, temperature=0.2, top_p=0.9, stop="###",
            random_seed=7)
    assert r.text() == "one two "
    body = mistral.last_body
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["random_seed"]) == (
        100, 0.2, 0.9, 7)
    assert body["stop"] == ["###"]
    ask(prefill=None, stop='["a", "b"]').text()
    assert mistral.last_body["stop"] == ["a", "b"]
    assert "max_tokens" not in mistral.last_body


def test_unknown_option_fails_loudly(mistral: FakeMistral) -> None:
    with pytest.raises(OptionsError, match="seed"):
        ask(seed=1)


def test_base_url_option(fake: FakeMistral, load_plugins: Callable[..., None]) -> None:
    load_plugins("llmcli-mistral")
    fake.reply = "via option"
    assert ask(prefill=None, key=KEY, base_url=fake.url).text() == "via option"


def test_retry_plan() -> None:
    assert retry_plan(0) is None
    plan = retry_plan(2)
    assert plan is not None
    # 500 ms then 1000 ms of backoff, 250 ms jitter each, 1 s per attempt.
    assert plan.max_elapsed_time == 500 + 250 + 1000 + 250 + 2000
    assert (plan.initial_interval, plan.exponent) == (500, 2.0)


# -- errors --------------------------------------------------------------------------------


def test_bad_key_401(mistral: FakeMistral) -> None:
    bad = "mistral-wrong-key-000000"
    r = ask(key=bad)
    with pytest.raises(ProviderError) as info:
        r.text()
    assert str(info.value) == (
        "Mistral rejected the API key (401): Unauthorized. "
        "Run 'llmcli keys set mistral' or set MISTRAL_API_KEY."
    )
    assert info.value.status == 401 and info.value.provider == "mistral"
    assert r.status == "error"
    assert len(mistral.requests) == 1


def test_403(mistral: FakeMistral) -> None:
    mistral.queued.append(error(403, "Model not available for your organization",
                                error_type="forbidden", code="1700"))
    with pytest.raises(ProviderError) as info:
        ask().text()
    assert info.value.status == 403
    assert "Mistral refused the request (403): Model not available" in str(info.value)


@pytest.mark.parametrize("headers", [{"retry-after": "0"}, {"retry-after": "0.01"}, {}])
@pytest.mark.parametrize("stream", [True, False])
def test_429_is_retried_then_succeeds(mistral: FakeMistral, headers: dict[str, str],
                                      stream: bool) -> None:
    mistral.queued.append(error(429, "Requests rate limit exceeded", error_type="rate_limited",
                                code="1300", headers=headers))
    mistral.reply = 'a"]'
    assert ask(stream=stream).text() == '["a"]'
    assert len(mistral.requests) == 2


def test_retry_after_is_respected(mistral: FakeMistral) -> None:
    mistral.queued.append(error(429, "slow down", error_type="rate_limited",
                                headers={"retry-after": "0.4"}))
    mistral.reply = "ok"
    started = time.monotonic()
    assert ask(prefill=None).text() == "ok"
    assert time.monotonic() - started >= 0.35


def test_429_persisting_becomes_a_clear_error(mistral: FakeMistral) -> None:
    for _ in range(200):
        mistral.queued.append(error(429, "Requests rate limit exceeded",
                                    error_type="rate_limited", code="1300"))
    with pytest.raises(ProviderError) as info:
        ask(max_retries=1).text()
    assert info.value.status == 429
    assert str(info.value) == ("Mistral rate limit (429) after retrying: Requests rate limit "
                               "exceeded. Wait, or raise -o max_retries.")
    assert len(mistral.requests) >= 2


def test_no_retries_when_max_retries_is_zero(mistral: FakeMistral) -> None:
    mistral.queued.append(error(503, "Service unavailable", error_type="service_unavailable"))
    with pytest.raises(ProviderError) as info:
        ask(max_retries=0).text()
    assert str(info.value) == "Mistral server error (503): Service unavailable"
    assert len(mistral.requests) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_retried(mistral: FakeMistral, status: int) -> None:
    mistral.queued.append(error(status, "Internal error", error_type="internal_server_error",
                                code="1000"))
    mistral.reply = "ok"
    assert ask(prefill=None).text() == "ok"
    assert len(mistral.requests) == 2


def test_400_shows_the_provider_message_and_no_key(mistral: FakeMistral) -> None:
    mistral.queued.append(error(400, f"Invalid model for key {KEY}", code="1500"))
    with pytest.raises(ProviderError) as info:
        ask().text()
    message = str(info.value)
    assert message.startswith("Mistral rejected the request (400, code 1500): Invalid model")
    assert KEY not in message and "[redacted]" in message
    assert len(mistral.requests) == 1


def test_422_validation_error(mistral: FakeMistral) -> None:
    from tests.fakes.base import Reply

    mistral.queued.append(Reply(status=422, json_body={"detail": [
        {"type": "less_than_equal", "loc": ["body", "temperature"],
         "msg": "Input should be less than or equal to 1.5"}]}))
    with pytest.raises(ProviderError) as info:
        ask().text()
    assert info.value.status == 422
    assert "less than or equal to 1.5" in str(info.value)


def test_broken_stream_is_partial(mistral: FakeMistral) -> None:
    mistral.reply = 'a", "b", "c", "d", "e"]'
    mistral.cut_after = 4  # the role chunk, then three 3-character pieces of the echoed text
    r = ask(log=True)
    with pytest.raises(PartialResponseError) as info:
        r.text()
    assert r.status == "partial"
    assert r.text_so_far() == '["a", "b"'
    assert info.value.provider == "mistral"
    from llmcli.log import LogStore

    row = LogStore().recent(1)[0]
    assert (row["status"], row["text"], row["prefill"]) == ("partial", '["a", "b"', '["')


def test_stream_cut_inside_the_echo(mistral: FakeMistral) -> None:
    mistral.chunk_size = 1
    mistral.cut_after = 2  # only '[' of the echo arrived
    r = ask(prefill='["')
    with pytest.raises(PartialResponseError):
        r.text()
    assert r.text_so_far().startswith('["')


def test_timeout(mistral: FakeMistral) -> None:
    mistral.delay = 1.0
    with pytest.raises(ProviderError) as info:
        ask(timeout=0.2, max_retries=0).text()
    assert str(info.value) == "Mistral did not answer within 0.2s; raise -o timeout"


def test_connection_refused(load_plugins: Callable[..., None],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MISTRAL_BASE_URL", f"http://127.0.0.1:{port}")
    load_plugins("llmcli-mistral")
    with pytest.raises(ProviderError) as info:
        ask(key=KEY, max_retries=0).text()
    assert str(info.value).startswith(f"Could not connect to Mistral at http://127.0.0.1:{port}")


def test_missing_key_fails_before_any_request(
    fake: FakeMistral, load_plugins: Callable[..., None]
) -> None:
    load_plugins("llmcli-mistral")
    with pytest.raises(llmcli.KeyNeededError, match="MISTRAL_API_KEY"):
        ask()
    assert fake.requests == []


# -- the log -------------------------------------------------------------------------------


def test_complete_response_is_logged(mistral: FakeMistral) -> None:
    from llmcli.log import LogStore

    mistral.reply = "42."
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


def test_cli_prefill(mistral: FakeMistral) -> None:
    mistral.reply = 'a", "b"]'
    result = run_cli("-m", "mistral-small", "--prefill", '["', "Two letters as JSON")
    assert result.exit_code == 0, result.output
    assert result.output == '["a", "b"]\n'
    assert messages(mistral)[-1] == {"role": "assistant", "content": '["', "prefix": True}


def test_cli_json_no_stream_options_key(mistral: FakeMistral,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MISTRAL_API_KEY")
    mistral.reply = "7"
    result = run_cli("-m", "codestral", "-s", "Be terse.", "--prefill", "Answer: ",
                     "--no-stream", "-o", "temperature", "0.3", "-o", "random_seed", "1",
                     "--key", KEY, "--json", "What is 3+4?")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["text"], data["continuation"]) == ("Answer: 7", "7")
    assert data["prefill_support"] == "echoes"
    body = mistral.last_body
    assert (body["temperature"], body["random_seed"], body["stream"]) == (0.3, 1, False)
    assert body["messages"][0] == {"role": "system", "content": "Be terse."}


def test_cli_bad_key_is_one_line(mistral: FakeMistral) -> None:
    mistral.queued.append(unauthorized())
    result = run_cli("-m", "mistral-small", "q")
    assert result.exit_code == 1
    assert "Mistral rejected the API key (401)" in result.output
    assert KEY not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_docs_examples_run(mistral: FakeMistral, capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "providers" / "mistral.md"
    blocks = doc.read_text().split("```python\n")[1:]
    assert blocks
    mistral.reply = "2, 3]"
    for i, block in enumerate(blocks):
        exec(compile(block.split("```")[0], f"{doc.name}[{i}]", "exec"), {})
    assert capsys.readouterr().out.startswith("[2, 3]\n")


# -- pure transforms (no network) ----------------------------------------------------------


def test_error_bodies_pure() -> None:
    from llmcli_mistral.transform import error_message_from_body, map_status_error

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
