"""--schema on the remote providers, through the real SDKs against the fakes: each request
carries the schema in its documented field, the declared support per model, and the
schema + prefill combinations refused before any request."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import llmcli
from llmcli import schema as schemas
from llmcli.capabilities import SchemaSupport
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.mistral import FakeMistral
from tests.fakes.openai import FRESH_TURN, FakeOpenAI
from tests.providers.conftest import PROVIDERS, serving

PERSON = {"type": "object",
          "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
OPTIONAL = {"type": "object",
            "properties": {"name": {"type": "string"}, "nick": {"type": "string"}},
            "required": ["name"]}
REPLY = '{"name": "Ada", "age": 36}'


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch, load_plugins: Callable[..., None]) -> Any:
    def start(name: str) -> Any:
        return serving(PROVIDERS[name], monkeypatch, load_plugins)

    return start


def body(fake: Any) -> dict[str, Any]:
    requests = getattr(fake, "chat_requests", None) or fake.requests
    result = requests[-1].body
    assert isinstance(result, dict)
    return result


# -- OpenAI ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_openai_response_format_strict(serve: Any, stream: bool) -> None:
    with serve("openai") as fake:
        fake.continuation = REPLY
        response = llmcli.get_model("gpt-4o").prompt("Who?", schema=PERSON, stream=stream,
                                                     log=False)
        assert response.json() == {"name": "Ada", "age": 36}
        sent = body(fake)["response_format"]
    assert sent == {"type": "json_schema", "json_schema": {
        "name": "reply", "strict": True,
        "schema": {**PERSON, "additionalProperties": False}}}


def test_openai_optional_properties_are_not_strict(serve: Any) -> None:
    with serve("openai") as fake:
        fake.continuation = '{"name": "Ada"}'
        llmcli.get_model("gpt-4o").prompt("Who?", schema=OPTIONAL, log=False).text()
        sent = body(fake)["response_format"]["json_schema"]
    assert sent["strict"] is False and sent["schema"] == OPTIONAL


def test_openai_schema_with_an_emulated_prefill(serve: Any) -> None:
    with serve("openai") as fake:
        fake.continuation = 'Ada", "age": 36}'
        response = llmcli.get_model("gpt-4o").prompt("Who?", schema=PERSON,
                                                     prefill='{"name": "', log=False)
        assert response.json()["name"] == "Ada"
        assert "response_format" in body(fake)


def test_openai_declared_support(serve: Any) -> None:
    with serve("openai"):
        support = {m.model_id: m.get_schema_support(m.Options()) for m in llmcli.get_models()}
        assert support["gpt-4o"] is SchemaSupport.NATIVE
        o1 = llmcli.get_model("o1-mini")
        assert support.get("o1-mini", o1.get_schema_support(o1.Options())) is (
            SchemaSupport.UNSUPPORTED)
        with pytest.raises(schemas.SchemaUnsupportedError, match="cannot honour a schema"):
            o1.prompt("Who?", schema=PERSON, log=False)


# -- OpenAI-compatible servers, per preset ------------------------------------------------


def _compat(servers: Path, fake: FakeOpenAI, style: str, field: str | None) -> None:
    entry: dict[str, Any] = {"id": "local", "model_name": "served-model",
                             "base_url": fake.url + "/v1", "prefill_style": style}
    if field:
        entry["schema_field"] = field
    servers.parent.mkdir(parents=True, exist_ok=True)
    servers.write_text(json.dumps({"servers": [entry]}))


@pytest.mark.parametrize(("mode", "style", "field", "expected"), [
    ("vllm", "continue_final_message", "structured_outputs", {"json": PERSON}),
    ("llama-server", "trailing_assistant", "json_schema", PERSON),
])
def test_compatible_server_fields(user_dir: Path, load_plugins: Callable[..., None],
                                  mode: str, style: str, field: str, expected: Any) -> None:
    with FakeOpenAI(mode) as fake:
        _compat(user_dir / "openai-servers.json", fake, style, field)
        load_plugins("llmcli-openai")
        model = llmcli.get_model("local")
        assert model.get_schema_support(model.Options()) is SchemaSupport.NATIVE
        model.prompt("Who?", schema=PERSON, log=False).text()
        assert body(fake)[field] == expected
        assert "response_format" not in body(fake)
        # The server's grammar starts after a native prefill: refused before any request.
        sent = len(fake.chat_requests)
        with pytest.raises(schemas.SchemaUnsupportedError, match="cannot continue a prefill"):
            model.prompt("Who?", schema=PERSON, prefill='{"name": ', log=False)
        assert len(fake.chat_requests) == sent


def test_llama_server_takes_a_gbnf_grammar(user_dir: Path,
                                           load_plugins: Callable[..., None]) -> None:
    with FakeOpenAI("llama-server") as fake:
        _compat(user_dir / "openai-servers.json", fake, "trailing_assistant", "json_schema")
        load_plugins("llmcli-openai")
        # The fake answers only where the grammar accepts its reply (llguidance), as a real
        # server's constrained decoding would.
        grammar = f"root ::= {json.dumps(FRESH_TURN)}"
        reply = llmcli.get_model("local").prompt("Yes?", grammar=grammar, log=False).text()
        assert body(fake)["grammar"] == grammar
        assert reply == FRESH_TURN


def test_presets_name_their_fields(load_plugins: Callable[..., None]) -> None:
    from llmcli_openai._servers import PRESETS

    assert PRESETS["vllm"].schema_field == "structured_outputs"
    assert PRESETS["llama-server"].schema_field == "json_schema"
    assert PRESETS["deepseek"].schema_field is None
    load_plugins("llmcli-openai")
    model = llmcli.get_model("deepseek/deepseek-chat")
    assert model.get_schema_support(model.Options()) is SchemaSupport.VALIDATED


def test_unknown_server_is_validated_and_retried(user_dir: Path,
                                                 load_plugins: Callable[..., None]) -> None:
    with FakeOpenAI("openai", continuation="not JSON") as fake:
        _compat(user_dir / "openai-servers.json", fake, "none", None)
        load_plugins("llmcli-openai")
        model = llmcli.get_model("local")
        assert model.get_schema_support(model.Options()) is SchemaSupport.VALIDATED
        with pytest.raises(schemas.SchemaValidationError, match="after 3 attempts"):
            model.prompt("Who?", schema=PERSON, log=False).text()
        first, _, last = (r.body for r in fake.chat_requests)
        assert "response_format" not in first
        assert "conforms to this JSON Schema" in first["messages"][-1]["content"]
        assert last["messages"][-2] == {"role": "assistant", "content": "not JSON"}
        assert last["messages"][-1]["content"].startswith("That reply is not valid")


# -- Mistral ---------------------------------------------------------------------------------


def test_mistral_response_format(serve: Any) -> None:
    with serve("mistral") as fake:
        assert isinstance(fake, FakeMistral)
        fake.reply = REPLY
        response = llmcli.get_model("mistral-small-latest").prompt("Who?", schema=PERSON,
                                                                   log=False)
        assert response.json() == {"name": "Ada", "age": 36}
        sent = body(fake)["response_format"]
    assert sent == {"type": "json_schema", "json_schema": {
        "name": "reply", "strict": True, "schema": {**PERSON, "additionalProperties": False}}}


def test_mistral_refuses_a_prefill_with_a_schema(serve: Any) -> None:
    with serve("mistral") as fake:
        with pytest.raises(schemas.SchemaUnsupportedError, match="prefix"):
            llmcli.get_model("mistral-small-latest").prompt("Who?", schema=PERSON,
                                                            prefill="{", log=False)
        assert not fake.requests


# -- Anthropic -------------------------------------------------------------------------------


def test_anthropic_output_config(serve: Any) -> None:
    with serve("anthropic") as fake:
        assert isinstance(fake, FakeAnthropic)
        fake.reply = REPLY
        response = llmcli.get_model("claude-opus-4-8").prompt("Who?", schema=PERSON,
                                                              log=False)
        assert response.json() == {"name": "Ada", "age": 36}
        sent = body(fake)["output_config"]
    assert sent == {"format": {"type": "json_schema",
                               "schema": {**PERSON, "additionalProperties": False}}}


def test_anthropic_prefill_rules(serve: Any) -> None:
    with serve("anthropic") as fake:
        # 4.5 takes a native prefill: JSON outputs cannot continue it.
        with pytest.raises(schemas.SchemaUnsupportedError, match="native prefill"):
            llmcli.get_model("claude-sonnet-4-5").prompt("Who?", schema=PERSON,
                                                         prefill='{"name": "', log=False)
        assert not fake.requests
        # 4.6+: the prefill is emulated (asked for in the system prompt) and goes together.
        fake.reply = 'Ada", "age": 36}'
        response = llmcli.get_model("claude-sonnet-4-6").prompt(
            "Who?", schema=PERSON, prefill='{"name": "', log=False)
        assert response.json()["name"] == "Ada"
        assert "output_config" in body(fake) and "reply_prefix" in body(fake)["system"]


def test_anthropic_older_models_are_validated(serve: Any) -> None:
    with serve("anthropic"):
        old = llmcli.get_model("anthropic/claude-3-5-haiku-20241022")
        assert old.get_schema_support(old.Options()) is SchemaSupport.VALIDATED
        # Claude on Bedrock and Vertex AI validates instead (output_config is a first-party
        # API feature): tests/providers/test_cloud_claude.py.
        assert all(m.get_schema_support(m.Options()) is SchemaSupport.NATIVE
                   for m in llmcli.get_models()
                   if not m.model_id.startswith(("bedrock/", "vertex/")))
