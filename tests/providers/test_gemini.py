"""Gemini models through the real google-genai SDK over HTTP against tests/fakes/gemini.py:
native prefill (a trailing model turn, eaten) where the model continues one, emulation where
the API rejects it, the response schema, streaming, usage, errors, retries, keys."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from llmcli_gemini import GeminiModel, GeminiOptions, native_prefill
from llmcli_gemini import _models as gemini_models

import llmcli
from llmcli import PrefillSupport, config, emulation_instruction
from llmcli.cli import cli
from llmcli.errors import (
    KeyNeededError,
    PartialResponseError,
    PrefillUnsupportedError,
    ProviderStatusError,
)
from tests.fakes.gemini import MODEL_TURN, FakeGemini, error

KEY = "AIzaFakeGeminiKey0123456789"
NATIVE = "gemini-3.5-flash"
NO_NATIVE = "gemini-3.6-flash"


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch,
           load_plugins: Callable[..., None]) -> Iterator[FakeGemini]:
    monkeypatch.setattr(gemini_models, "RETRY_TUNING",
                        {"initial_delay": 0.01, "max_delay": 0.02, "jitter": 0.0})
    with FakeGemini(api_key=KEY) as fake:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.url)
        monkeypatch.setenv("GEMINI_API_KEY", KEY)
        monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
        load_plugins("llmcli-gemini")
        yield fake


def ask(model: str = NATIVE, prefill: str | None = '["', stream: bool = True,
        **kwargs: Any) -> llmcli.Response:
    kwargs.setdefault("log", False)
    return llmcli.get_model(model).prompt("List two letters as JSON.", prefill=prefill,
                                          stream=stream, **kwargs)


def contents(fake: FakeGemini) -> list[dict[str, Any]]:
    return fake.last_body["contents"]


def posts(fake: FakeGemini) -> int:
    return len([r for r in fake.requests if r.method == "POST"])


# -- capability per model ----------------------------------------------------------------------


@pytest.mark.parametrize(("model_id", "native"), [
    ("gemini-2.5-flash", True),
    ("gemini-2.5-pro", True),
    ("gemini-3-flash-preview", True),
    ("gemini-3.1-pro-preview", True),
    ("gemini-3.1-pro-preview-customtools", True),
    ("gemini-3.5-flash", True),
    ("gemini-3.5-flash-lite", False),
    ("gemini-3.6-flash", False),
    ("gemini-3.8-flash", False),
    ("gemini-4-pro", False),
    ("gemini-flash-latest", False),  # an alias that moves: emulate, never risk the 400
])
def test_native_prefill_by_version(model_id: str, native: bool) -> None:
    assert native_prefill(model_id) is native


def test_models_listed_with_capability(served: FakeGemini) -> None:
    result = CliRunner().invoke(cli, ["models", "--json"])
    listed = {m["model_id"]: m for m in json.loads(result.stdout)}
    assert listed["gemini-3.5-flash"]["prefill_support"] == "eats"
    assert listed["gemini-3.1-pro-preview"]["prefill_support"] == "eats"
    assert listed["gemini-3.6-flash"]["prefill_support"] == "emulated"
    assert listed["gemini-3.5-flash-lite"]["prefill_support"] == "emulated"
    assert listed["gemini-3.6-flash"]["key_env_var"] == "GEMINI_API_KEY"
    assert listed["gemini-3.6-flash"]["schema_support"] == "native"
    assert llmcli.get_model("gemini/gemini-2.5-flash").model_id == "gemini-2.5-flash"
    assert llmcli.get_model("gemini-flash").model_id == "gemini-3.6-flash"


# -- native prefill (eats) ---------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_trailing_model_turn_is_eaten_once(served: FakeGemini, stream: bool) -> None:
    served.reply = 'a", "b"]'
    response = ask(stream=stream)
    assert response.text() == '["a", "b"]'
    assert response.prefill_support is PrefillSupport.EATS_PREFIX
    assert contents(served)[-1] == {"role": "model", "parts": [{"text": '["'}]}
    assert contents(served)[-2]["role"] == "user"
    path = served.requests[-1].path
    assert path.endswith(":streamGenerateContent?alt=sse" if stream else ":generateContent")
    assert served.requests[-1].headers["x-goog-api-key"] == KEY
    usage = response.usage()
    assert usage.input_tokens and usage.output_tokens and usage.stop_reason == "end_turn"


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("reply", ['["a", "b"]', 'a", "b"]', 'Sure:\n["a", "b"]'])
def test_newer_models_emulate(served: FakeGemini, stream: bool, reply: str) -> None:
    served.reply = reply
    response = ask(NO_NATIVE, stream=stream, system="Be terse.")
    assert response.text() == '["a", "b"]'
    assert contents(served)[-1]["role"] == "user"
    instruction = served.last_body["systemInstruction"]["parts"][0]["text"]
    assert instruction == "Be terse.\n\n" + emulation_instruction('["')


def test_the_fake_rejects_what_the_api_rejects(served: FakeGemini) -> None:
    from google import genai

    client = genai.Client(api_key=KEY, http_options={"base_url": served.url})
    with pytest.raises(genai.errors.ClientError) as info:
        client.models.generate_content(model=NO_NATIVE, contents=[
            {"role": "user", "parts": [{"text": "q"}]},
            {"role": "model", "parts": [{"text": "A"}]}])
    assert info.value.code == 400 and info.value.message == MODEL_TURN


def test_strict_prefill_is_refused_before_any_request(served: FakeGemini) -> None:
    with pytest.raises(PrefillUnsupportedError, match="gemini-3.6-flash"):
        ask(NO_NATIVE, prefill_strict=True)
    assert served.requests == []


def test_conversation_history_roles(served: FakeGemini) -> None:
    conversation = llmcli.get_model(NATIVE).conversation()
    served.reply = "first"
    conversation.prompt("one", log=False).text()
    served.reply = 'x"]'
    assert conversation.prompt("two", prefill='["', log=False).text() == '["x"]'
    assert [c["role"] for c in contents(served)] == ["user", "model", "user", "model"]


# -- options, schema, usage --------------------------------------------------------------------


def test_options_reach_generation_config(served: FakeGemini) -> None:
    served.reply = "one two ### three"
    response = ask(prefill=None, max_output_tokens=50, temperature=0.2, top_p=0.9, seed=7,
                   stop_sequences="###")
    assert response.text() == "one two "
    assert served.last_body["generationConfig"] == {
        "maxOutputTokens": 50, "temperature": 0.2, "topP": 0.9, "seed": 7,
        "stopSequences": ["###"]}


@pytest.mark.parametrize("stream", [True, False])
def test_schema_goes_as_response_json_schema(served: FakeGemini, stream: bool) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    served.reply = '{"n": 3}'
    response = ask(NO_NATIVE, prefill=None, schema=schema, stream=stream)
    assert response.json() == {"n": 3}
    cfg = served.last_body["generationConfig"]
    assert cfg["responseMimeType"] == "application/json"
    assert cfg["responseJsonSchema"] == schema


def test_schema_with_native_prefill_is_refused(served: FakeGemini) -> None:
    from llmcli.schema import SchemaUnsupportedError

    with pytest.raises(SchemaUnsupportedError, match="cannot continue a native prefill"):
        ask(prefill="{", schema={"type": "object"})
    assert served.requests == []


def test_thinking_tokens_count_as_output(served: FakeGemini) -> None:
    served.reply = "Hi."
    served.thoughts = 40
    usage = ask(prefill=None, stream=False).usage()
    assert usage.details["reasoning_tokens"] == 40
    assert usage.output_tokens is not None and usage.output_tokens >= 41


def test_finish_reasons_in_llmcli_words(served: FakeGemini) -> None:
    served.reply = "cut"
    served.finish_reason = "MAX_TOKENS"
    assert ask(prefill=None).usage().stop_reason == "max_tokens"
    served.finish_reason = "SAFETY"
    assert ask(prefill=None, stream=False).usage().stop_reason == "content_filter"


# -- keys, errors, retries, streams --------------------------------------------------------------


def test_key_from_keys_store(served: FakeGemini, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY")
    with pytest.raises(KeyNeededError, match="llmcli keys set gemini"):
        ask()
    assert CliRunner().invoke(cli, ["keys", "set", "gemini", "--value", KEY]).exit_code == 0
    served.reply = 'k"]'
    assert ask().text() == '["k"]'


def test_bad_key_one_line_no_key(served: FakeGemini) -> None:
    wrong = "AIzaWrongKey-999999999999"
    result = CliRunner().invoke(cli, ["-m", NATIVE, "--key", wrong, "--prefill", "x", "hi"])
    assert result.exit_code == 1
    err = result.stderr.strip()
    assert err == ("Error: Gemini rejected the request (400, INVALID_ARGUMENT): API key not "
                   "valid. Please pass a valid API key. Run 'llmcli keys set gemini' or set "
                   "GEMINI_API_KEY")
    assert wrong not in result.output
    assert posts(served) == 1


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("status", "expected"), [
    (401, "Gemini rejected the API key (401): Request had invalid authentication credentials. "
          "Run 'llmcli keys set gemini' or set GEMINI_API_KEY."),
    (429, "Gemini rate limit (429) after 2 retries: Resource has been exhausted. Wait, or "
          "raise -o max_retries."),
    (503, "Gemini server error (503) after 2 retries: The model is overloaded"),
])
def test_errors_mapped(served: FakeGemini, stream: bool, status: int, expected: str) -> None:
    message = {401: "Request had invalid authentication credentials.",
               429: "Resource has been exhausted.", 503: "The model is overloaded."}[status]
    served.enqueue(*[error(status, message)] * 3)
    response = ask(stream=stream, log=True)
    with pytest.raises(ProviderStatusError) as info:
        response.text()
    assert str(info.value) == expected
    assert (info.value.status, info.value.provider) == (status, "gemini")
    assert posts(served) == (1 if status == 401 else 3)
    assert response.status == "error"


@pytest.mark.parametrize("stream", [True, False])
def test_429_retried_then_succeeds(served: FakeGemini, stream: bool) -> None:
    served.enqueue(error(429, "Resource has been exhausted."))
    served.reply = 'a"]'
    assert ask(stream=stream).text() == '["a"]'
    assert posts(served) == 2


def test_error_frame_mid_stream_is_partial(served: FakeGemini) -> None:
    served.reply = 'a", "b", "c"]'
    served.chunk_size = 3
    served.error_after_chunks = 2
    response = ask(log=True)
    with pytest.raises(PartialResponseError) as info:
        response.text()
    assert info.value.status == 503
    assert response.text_so_far() == '["a", "b'
    assert response.status == "partial"


def test_broken_and_unfinished_streams(served: FakeGemini) -> None:
    served.reply = 'a", "b", "c", "d"]'
    served.chunk_size = 3
    served.cut_after = 2
    response = ask()
    with pytest.raises(PartialResponseError):
        response.text()
    assert response.text_so_far() == '["a", "b'
    served.cut_after = None
    served.unfinished = True
    response = ask()
    with pytest.raises(PartialResponseError, match="no finishReason"):
        response.text()
    assert response.status == "partial"


def test_no_key_in_the_log(served: FakeGemini) -> None:
    served.reply = 'z"]'
    ask(log=True).text()
    logged = CliRunner().invoke(cli, ["logs", "--json", "-n", "1"]).stdout
    assert KEY not in logged
    assert json.loads(logged)[0]["text"] == '["z"]'


def test_cli_prefill_and_options(served: FakeGemini) -> None:
    served.reply = 'a", "b"]'
    result = CliRunner().invoke(cli, ["-m", "gemini-3.5", "--prefill", '["', "-o",
                                      "max_output_tokens", "20", "two letters"])
    assert result.exit_code == 0, result.output
    assert result.stdout == '["a", "b"]\n'
    assert served.last_body["generationConfig"]["maxOutputTokens"] == 20


def test_model_class_and_options() -> None:
    model = GeminiModel("gemini-2.5-flash")
    assert model.get_prefill_support(GeminiOptions(prefill_strict=True)) is (
        PrefillSupport.EATS_PREFIX)
    assert config.REDACTED  # the core's redaction marker exists for the scrubbed errors


def test_docs_examples_run(served: FakeGemini, capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "providers" / "gemini.md"
    blocks = doc.read_text().split("```python\n")[1:]
    assert blocks
    served.reply = "2, 3]"
    for i, block in enumerate(blocks):
        exec(compile(block.split("```")[0], f"{doc.name}[{i}]", "exec"), {})
    out = capsys.readouterr().out
    assert out.splitlines()[:4] == ["[2, 3]", "end_turn", "emulated", "unsupported"]
    # The page's table is the plugin's.
    for model_id, _ in gemini_models.KNOWN_MODELS:
        model = GeminiModel(model_id)
        kind = "native (eats)" if model.prefill_support is PrefillSupport.EATS_PREFIX \
            else "emulated"
        assert f"| `{model_id}` |" in doc.read_text()
        row = next(line for line in doc.read_text().splitlines()
                   if line.startswith(f"| `{model_id}` |"))
        assert row.endswith(f"| {kind} |"), row
