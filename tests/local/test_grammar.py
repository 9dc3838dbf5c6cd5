"""Constrained decoding in the local runtime (llguidance): replies conform to the schema, the
prefill goes through the grammar first, forced tokens run in one pass, on both backends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmcli import schema as schemas
from llmcli.errors import ConfigError
from llmcli.models import Usage
from tests.local.test_keepalive import workers as workers  # the fixture

#: Bounded everywhere a random-weight model could otherwise go on forever (digits, strings).
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "score": {"type": "number", "enum": [0.5, 1.25, -3]},
        "colour": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10},
                           "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
        },
        "nickname": {"type": "string", "maxLength": 6},  # optional
    },
    "required": ["name", "age", "score", "colour", "tags", "address"],
}

LONG_KEYS = {
    "type": "object",
    "properties": {
        "the_first_rather_long_property_name": {"type": "boolean"},
        "a_second_property_with_a_long_name_too": {"enum": ["yes", "no"]},
        "and_a_third_one_to_make_the_point": {"type": "boolean"},
    },
    "required": ["the_first_rather_long_property_name",
                 "a_second_property_with_a_long_name_too", "and_a_third_one_to_make_the_point"],
}

MESSAGES = [{"role": "user", "content": "Describe a person as JSON."}]


def run(backend: Any, schema: dict[str, Any] | None = None, prefill: str = "",
        grammar: str | None = None, **settings: Any) -> tuple[str, Any]:
    from llmcli_local import decode
    from llmcli_local import grammar as grammars

    text = grammar if grammar is not None else grammars.from_schema(schema or {})
    chunks = list(decode.generate(backend, MESSAGES, prefill, decode.GenerationSettings(
        max_tokens=settings.pop("max_tokens", 300), grammar=text, **settings)))
    usage = chunks[-1]
    return prefill + "".join(c for c in chunks if isinstance(c, str)), usage


@pytest.mark.parametrize("prefill", ["", '{"name": "Zoë ', '{"name": "日本'])
def test_reply_conforms_to_the_schema(tiny_any: Any, prefill: str) -> None:
    text, usage = run(tiny_any, PERSON, prefill)
    value = schemas.check_reply(PERSON, text)
    assert text.startswith(prefill)
    assert usage.stop_reason == "end_turn"
    assert value["colour"] in ("red", "green", "blue") and isinstance(value["age"], int)
    assert set(value["address"]) == {"city", "zip"}


@pytest.mark.parametrize("mode", ["exact", "heal", "none"])
def test_prefill_inside_a_string_value_in_every_mode(tiny: Any, mode: str) -> None:
    prefill = '{"name": "Ca'
    text, _ = run(tiny, PERSON, prefill, prefill_mode=mode)
    assert schemas.check_reply(PERSON, text)["name"].startswith("Ca")


def test_a_prefill_the_schema_cannot_start_with_fails_before_any_pass(
        tiny: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmcli_local import exact

    def no_pass(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a forward pass was made")

    monkeypatch.setattr(type(tiny), "prompt", no_pass)
    monkeypatch.setattr(exact, "start", no_pass)
    with pytest.raises(ConfigError, match="cannot start a reply that matches"):
        run(tiny, PERSON, '{"nom": ')
    with pytest.raises(ConfigError, match="cannot start"):
        run(tiny, PERSON, "Sure! ")


def test_forced_runs_go_in_one_pass(tiny: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmcli_local import decode

    text, usage = run(tiny, LONG_KEYS)
    schemas.check_reply(LONG_KEYS, text)
    tokens, passes = usage.output_tokens, usage.details["forward_passes"]
    assert usage.details["forced_tokens"] > tokens / 2
    assert passes < tokens / 3, (passes, tokens)
    # Without batching: one step per token, the same schema-valid reply.
    monkeypatch.setattr(decode.Decoding, "forced", lambda self: [])
    text_unbatched, usage = run(tiny, LONG_KEYS)
    schemas.check_reply(LONG_KEYS, text_unbatched)
    assert usage.details["forward_passes"] >= usage.output_tokens


def test_budget_cuts_a_forced_run(tiny: Any) -> None:
    text, usage = run(tiny, LONG_KEYS, max_tokens=5)
    assert usage.output_tokens == 5 and usage.stop_reason == "max_tokens"
    assert '{"the_first_rather_long_property_name": '.startswith(text) and len(text) > 3


def test_gbnf_and_lark_grammars(tiny: Any) -> None:
    from llmcli_local import grammar

    text, _ = run(tiny, grammar=grammar.from_text('root ::= "yes" | "no"'))
    assert text in ("yes", "no")
    text, _ = run(tiny, grammar=grammar.from_text('start: "A" /[0-9]{3}/ "."'))
    assert len(text) == 5 and text[0] == "A" and text[1:4].isdigit()
    with pytest.raises(ConfigError, match="Invalid grammar"):
        run(tiny, grammar=grammar.from_text("start: ("))


def test_closed_objects() -> None:
    from llmcli_local.grammar import closed

    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {}}},
              "$defs": {"x": {"properties": {"b": {}}, "additionalProperties": True}},
              "enum_like": {"enum": [{"properties": 1}]}}
    out = closed(schema)
    assert out["additionalProperties"] is False
    assert out["properties"]["a"]["additionalProperties"] is False
    assert out["$defs"]["x"]["additionalProperties"] is True


def test_local_model_declares_native_and_json_round_trips(tiny_model_dir: Path) -> None:
    from llmcli_local.model import LocalModel
    from llmcli_local.sources import ModelSource

    from llmcli.capabilities import SchemaSupport

    model = LocalModel("tiny", ModelSource("hf", tiny_model_dir))
    assert model.get_schema_support(model.Options()) is SchemaSupport.NATIVE
    listed = schemas.multi(PERSON)
    listed["properties"]["items"]["maxItems"] = 2  # a random model never stops by itself
    response = model.prompt("Who?", schema=listed, prefill='{"items": [', log=False,
                            max_tokens=400)
    value = response.json()
    assert isinstance(value["items"], list)
    assert json.loads(response.text()) == value


@pytest.mark.slow
def test_smollm2_json_list(smollm2: Any) -> None:
    schema = {"type": "array", "items": {"type": "string"}, "minItems": 5, "maxItems": 5}
    response = smollm2.prompt("Give a JSON array of 5 fruits. Reply with the JSON only.",
                              schema=schema, prefill='["', log=False)
    fruits = response.json()
    assert len(fruits) == 5 and all(isinstance(f, str) and f for f in fruits)
    response = smollm2.prompt("Describe an apple as JSON.", schema=LONG_KEYS, log=False)
    schemas.check_reply(LONG_KEYS, response.text())
    usage = response.usage()
    assert usage.details["forward_passes"] < usage.output_tokens / 2


def test_the_batched_engine_masks_each_sequence_by_its_own_grammar(tiny: Any) -> None:
    from llmcli_local import decode
    from llmcli_local import grammar as grammars
    from llmcli_local.scheduler import Scheduler

    from tests.local.conftest import without_eos

    alone_text, alone_usage = run(tiny, PERSON, '{"name": "')
    scheduler = Scheduler(without_eos(tiny))
    free = scheduler.submit(MESSAGES, "", decode.GenerationSettings(max_tokens=60))
    person = scheduler.submit(MESSAGES, '{"name": "', decode.GenerationSettings(
        max_tokens=300, grammar=grammars.from_schema(PERSON)), backend=tiny)
    chunks = list(person)
    text = '{"name": "' + "".join(c for c in chunks if isinstance(c, str))
    assert schemas.check_reply(PERSON, text) == json.loads(alone_text)
    assert chunks[-1].details["forced_tokens"] == alone_usage.details["forced_tokens"]
    assert sum(1 for c in free if isinstance(c, Usage)) == 1
    assert scheduler.peak_batch == 2


def test_local_model_takes_a_grammar(tiny_model_dir: Path) -> None:
    from llmcli_local.model import LocalModel
    from llmcli_local.sources import ModelSource

    model = LocalModel("tiny", ModelSource("hf", tiny_model_dir))
    text = model.prompt("Yes or no?", grammar='root ::= "yes" | "no"', log=False).text()
    assert text in ("yes", "no")


def test_the_keep_alive_worker_decodes_under_the_schema(workers: Any) -> None:  # noqa: F811
    schema = json.dumps(PERSON)
    first = workers.cli("-m", "tiny", "Who?", "--schema", schema, "--prefill", '{"name": "',
                        "-o", "max_tokens", "300", "-o", "keep_alive", "60").stdout
    assert schemas.check_reply(PERSON, first)
    assert workers.ping()["model"] == "tiny"  # the worker is up: the next call is its
    again = workers.cli("-m", "tiny", "Who?", "--schema", schema, "--prefill", '{"name": "',
                        "-o", "max_tokens", "300", "-o", "keep_alive", "60", "-u")
    assert again.stdout == first


@pytest.mark.parametrize("schema", [
    {"type": "array", "items": {"type": "string"}},
    {"type": "array", "items": {"type": "number"}},
    {"type": "object", "properties": {"name": {"type": "string"},
                                      "tags": {"type": "array", "items": {"type": "string"}}},
     "required": ["name", "tags"]},
])
def test_a_schema_reply_cut_by_max_tokens_is_closed_valid_json(tiny: Any,
                                                               schema: dict[str, Any]) -> None:
    """Under --schema the reply is valid JSON even where max_tokens would cut it: once the
    budget left is what closing takes, the constraint closes the value (usage says so)."""
    from llmcli_local import decode, grammar

    closed = 0
    for max_tokens in range(24, 60, 5):
        for temperature in (0.0, 1.0):
            settings = decode.GenerationSettings(
                max_tokens=max_tokens, temperature=temperature, seed=max_tokens,
                grammar=grammar.from_schema(schema))
            out = list(decode.generate(tiny, [{"role": "user", "content": "x"}], "", settings))
            text = "".join(out[:-1])
            json.loads(text)  # never cut mid-value
            closed += bool(out[-1].details.get("closed_by_budget"))
    assert closed  # the random model runs long: some replies needed closing
