"""Structured output in the core: parsing --schema, the validated mode's retries,
response.json(), the CLI flags and `llmcli models`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmcli import schema as schemas
from llmcli.capabilities import SchemaSupport
from llmcli.cli import cli

PERSON = {"type": "object", "properties": {"name": {"type": "string"},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"]}


def test_concise_form_as_llm_writes_it() -> None:
    assert schemas.parse_schema("name, age int, bio: one sentence") == {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                       "bio": {"type": "string", "description": "one sentence"}},
        "required": ["name", "age", "bio"],
    }
    lines = schemas.parse_schema("name: the name, with a comma\nscore float\nok bool")
    assert lines["properties"]["name"]["description"] == "the name, with a comma"
    assert lines["properties"]["score"] == {"type": "number"}
    assert lines["properties"]["ok"] == {"type": "boolean"}


def test_inline_json_and_file(tmp_path: Path) -> None:
    assert schemas.parse_schema(json.dumps(PERSON)) == PERSON
    long = {**PERSON, "description": "x" * 5000}  # not mistaken for a (too long) path
    assert schemas.parse_schema(json.dumps(long)) == long
    many = ", ".join(f"field_number_{i} int" for i in range(300))  # concise, long
    assert len(schemas.parse_schema(many)["properties"]) == 300
    path = tmp_path / "person.json"
    path.write_text(json.dumps(PERSON))
    assert schemas.parse_schema(str(path)) == PERSON
    concise = tmp_path / "fields.txt"
    concise.write_text("name\nage int\n")
    assert schemas.parse_schema(str(concise))["required"] == ["name", "age"]


@pytest.mark.parametrize(("text", "words"), [
    ('{"type": "object", ', "not valid JSON"),
    ('{"type": "objekt"}', "Invalid JSON Schema"),
    ('{"properties": {"a": {"type": 3}}}', "at properties/a/type"),
    ("name, age integer64", "unknown type 'integer64'"),
    ("name, name", "given twice"),
    ("  ", "Empty schema"),
    ("missing.json", "Cannot read schema file"),
])
def test_invalid_schema_is_a_clear_error(text: str, words: str) -> None:
    with pytest.raises(schemas.InvalidSchemaError, match=words):
        schemas.parse_schema(text)


def test_multi_and_unwrap() -> None:
    wrapped = schemas.multi(PERSON)
    assert wrapped["properties"]["items"]["items"] == PERSON
    assert schemas.unwrap({"items": [1, 2]}, wrapped) == [1, 2]
    assert schemas.unwrap([1, 2], {"type": "array"}) == [1, 2]
    assert schemas.unwrap({"a": 1}, PERSON) == [{"a": 1}]


def test_schema_id_is_the_content() -> None:
    reordered = {"required": ["name", "age"], "type": "object",
                 "properties": {"age": {"type": "integer"}, "name": {"type": "string"}}}
    assert schemas.schema_id(PERSON) == schemas.schema_id(reordered)
    assert schemas.schema_id(PERSON) != schemas.schema_id(schemas.multi(PERSON))
    assert len(schemas.schema_id(PERSON)) == 32


def test_check_reply() -> None:
    assert schemas.check_reply(PERSON, '{"name": "Ada", "age": 36}') == {"name": "Ada", "age": 36}
    assert schemas.check_reply(PERSON, '```json\n{"name": "Ada", "age": 36}\n```')["age"] == 36
    with pytest.raises(schemas.SchemaValidationError, match="'age' is a required property"):
        schemas.check_reply(PERSON, '{"name": "Ada"}')
    with pytest.raises(schemas.SchemaValidationError, match="not JSON"):
        schemas.check_reply(PERSON, "Ada, 36")


# -- the validated mode, on the scriptable test models ---------------------------------------


def test_validated_first_reply_conforms(test_models) -> None:
    model = _model("test-eats")
    assert model.get_schema_support(model.Options()) is SchemaSupport.VALIDATED
    test_models.queue.append(['{"name": "Ada", ', '"age": 36}'])
    response = model.prompt("Who?", schema=PERSON, log=False)
    assert response.json() == {"name": "Ada", "age": 36}
    (request,) = test_models.requests
    assert request.schema == PERSON and request.schema_support is SchemaSupport.VALIDATED
    # The instruction goes with the prompt on the wire, not into the logged prompt.
    assert request.messages()[-1].content.startswith("Who?\n\nReply with only a JSON value")
    assert '"required": ["name", "age"]' in request.messages()[-1].content
    assert response.prompt == "Who?"
    assert response.usage().details["schema_attempts"] == 1


def test_validated_retries_with_the_error(test_models) -> None:
    model = _model("test-eats")
    test_models.queue.extend([['{"name": "Ada"}'], ['{"name": "Ada", "age": 36}']])
    response = model.prompt("Who?", schema=PERSON, log=False)
    assert list(response) == ['{"name": "Ada", "age": 36}']  # only the conforming attempt
    first, second = test_models.requests
    assert second.prompt.startswith("That reply is not valid:")
    assert "'age' is a required property" in second.prompt
    turns = second.messages()
    assert [t.role for t in turns] == ["user", "assistant", "user"]
    assert turns[1].content == '{"name": "Ada"}'
    assert response.usage().details["schema_attempts"] == 2


def test_validated_gives_up_after_the_retries(test_models, user_dir) -> None:
    model = _model("test-eats")
    test_models.queue.extend([["nope"]] * 3)
    response = model.prompt("Who?", schema=PERSON)
    with pytest.raises(schemas.SchemaValidationError, match="after 3 attempts"):
        response.text()
    assert response.status == "error"
    assert len(test_models.requests) == 3


def test_prefill_inside_the_json_with_validated_mode(test_models) -> None:
    model = _model("test-eats")
    test_models.queue.append(['Ada", "age": 36}'])
    response = model.prompt("Who?", schema=PERSON, prefill='{"name": "', log=False)
    assert response.json() == {"name": "Ada", "age": 36}
    assert response.text().startswith('{"name": "Ada"')


def test_unsupported_model_refused_before_any_request(test_models, monkeypatch) -> None:
    model = _model("test-eats")
    monkeypatch.setattr(type(model), "schema_support", SchemaSupport.UNSUPPORTED)
    with pytest.raises(schemas.SchemaUnsupportedError, match="cannot honour a schema"):
        model.prompt("Who?", schema=PERSON, log=False)
    assert not test_models.requests


def test_schema_refusal_with_a_prefill(test_models, monkeypatch) -> None:
    model = _model("test-eats")
    monkeypatch.setattr(type(model), "schema_refusal",
                        lambda self, options, prefill: "no prefill with a schema" if prefill
                        else None)
    with pytest.raises(schemas.SchemaUnsupportedError, match="no prefill with a schema"):
        model.prompt("Who?", schema=PERSON, prefill="{", log=False)
    assert not test_models.requests


def test_invalid_schema_refused_before_any_request(test_models) -> None:
    with pytest.raises(schemas.InvalidSchemaError):
        _model("test-eats").prompt("Who?", schema='{"type": 5}', log=False)
    assert not test_models.requests


def test_json_without_a_schema(test_models) -> None:
    test_models.queue.append(["[1, 2]"])
    assert _model("test-eats").prompt("Q", log=False).json() == [1, 2]


# -- the command line ------------------------------------------------------------------------


def test_cli_schema_and_schema_multi(test_models) -> None:
    runner = CliRunner()
    test_models.queue.append(['{"name": "Ada", "age": 36}'])
    result = runner.invoke(cli, ["-m", "test-eats", "Who?", "--schema", "name, age int"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"name": "Ada", "age": 36}
    test_models.queue.append(['{"items": [{"name": "Ada", "age": 36}]}'])
    result = runner.invoke(cli, ["-m", "test-eats", "Who?", "--schema-multi", "name, age int"])
    assert result.exit_code == 0, result.output
    assert test_models.requests[-1].schema == schemas.multi(schemas.parse_schema("name, age int"))


def test_cli_errors(test_models) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["-m", "test-eats", "Q", "--schema", "a", "--schema-multi", "b"])
    assert result.exit_code == 1 and "not both" in result.output
    result = runner.invoke(cli, ["-m", "test-eats", "Q", "--schema", '{"type": "objekt"}'])
    assert result.exit_code == 1 and "Invalid JSON Schema" in result.output
    assert not test_models.requests


def test_models_shows_schema_support(test_models) -> None:
    data = json.loads(CliRunner().invoke(cli, ["models", "--json"]).stdout)
    assert {d["schema_support"] for d in data} == {"validated"}


def _model(name: str):
    from llmcli import api

    return api.get_model(name)


# -- the log ---------------------------------------------------------------------------------


def test_log_stores_each_schema_once_and_filters(test_models, user_dir) -> None:
    import sqlite3

    runner = CliRunner()
    for reply in ('{"name": "Ada", "age": 36}', '{"name": "Alan", "age": 41}'):
        test_models.queue.append([reply])
        assert runner.invoke(cli, ["-m", "test-eats", "Who?", "--schema", "name, age int"]
                             ).exit_code == 0
    test_models.queue.append(['{"items": [{"name": "Grace", "age": 85}, '
                              '{"name": "Edsger", "age": 72}]}'])
    assert runner.invoke(cli, ["-m", "test-eats", "Who?", "--schema-multi", "name, age int"]
                         ).exit_code == 0
    test_models.queue.append(["plain"])
    assert runner.invoke(cli, ["-m", "test-eats", "Hi"]).exit_code == 0

    db = sqlite3.connect(user_dir / "logs.db")
    stored = dict(db.execute("select id, content from schemas").fetchall())
    single = schemas.schema_id(schemas.parse_schema("name, age int"))
    assert set(stored) == {single, schemas.schema_id(schemas.multi(
        schemas.parse_schema("name, age int")))}
    assert json.loads(stored[single]) == schemas.parse_schema("name, age int")
    ids = [r[0] for r in db.execute("select schema_id from responses order by rowid")]
    assert ids[:2] == [single, single] and ids[3] is None

    result = runner.invoke(cli, ["logs", "-n", "0", "--schema", "name, age int", "--data"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"name": "Ada", "age": 36}, {"name": "Alan", "age": 41}]
    result = runner.invoke(cli, ["logs", "-n", "0", "--schema-multi", "name, age int",
                                 "--data"])
    assert [json.loads(line)["name"] for line in result.stdout.splitlines()] == [
        "Grace", "Edsger"]
    by_id = runner.invoke(cli, ["logs", "-n", "0", "--schema", single, "--json"])
    assert len(json.loads(by_id.stdout)) == 2
    everything = runner.invoke(cli, ["logs", "-n", "0", "--data"])
    assert len(everything.stdout.splitlines()) == 4  # "plain" is not JSON: skipped


# -- --grammar -------------------------------------------------------------------------------


def test_grammar_refused_by_models_that_cannot_enforce_one(test_models, tmp_path) -> None:
    with pytest.raises(schemas.SchemaUnsupportedError, match="cannot enforce a grammar"):
        _model("test-eats").prompt("Q", grammar='root ::= "yes"', log=False)
    with pytest.raises(schemas.InvalidSchemaError, match="not both"):
        _model("test-eats").prompt("Q", grammar='root ::= "yes"', schema=PERSON, log=False)
    grammar = tmp_path / "yes.gbnf"
    grammar.write_text('root ::= "yes"')
    result = CliRunner().invoke(cli, ["-m", "test-eats", "Q", "--grammar", str(grammar)])
    assert result.exit_code == 1 and "cannot enforce a grammar" in result.output
    assert not test_models.requests


def test_json_says_when_the_token_limit_cut_the_reply(test_models) -> None:
    from llmcli.models import Usage

    model = _model("test-eats")
    original = type(model).execute

    def cut(self, request):
        yield '{"name": "Ad'
        yield Usage(stop_reason="max_tokens")

    type(model).execute = cut
    try:
        response = model.prompt("Who?", log=False)
        with pytest.raises(schemas.SchemaValidationError, match="raise max_tokens"):
            response.json()
    finally:
        type(model).execute = original


# -- references stay inside the schema -------------------------------------------------------


@pytest.mark.parametrize("ref", [
    "file:///etc/passwd", "file:/etc/passwd", "file://localhost/etc/passwd#/x",
    "FILE:///etc/passwd", "/etc/passwd", "../etc/passwd", "other.json#/$defs/a",
    "http://127.0.0.1:9/schema.json", "https://example.invalid/s.json#/x",
    "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66", "//example.invalid/s.json",
])
def test_a_ref_outside_the_schema_is_refused(ref: str) -> None:
    for schema in ({"$ref": ref}, {"type": "object", "properties": {"a": {"$ref": ref}}},
                   {"items": {"anyOf": [{"type": "string"}, {"$dynamicRef": ref}]}},
                   {"$defs": {"a": {"$ref": ref}}, "x-extension": {"$ref": ref}}):
        with pytest.raises(schemas.InvalidSchemaError, match="points outside the schema"):
            schemas.parse_schema(json.dumps(schema))


def test_an_id_does_not_open_a_way_out() -> None:
    # "passwd" resolves against the $id to file:///etc/passwd: not a part of the schema.
    with pytest.raises(schemas.InvalidSchemaError, match="'passwd' points outside"):
        schemas.check_schema({"$id": "file:///etc/", "properties": {"a": {"$ref": "passwd"}}})


@pytest.mark.parametrize("schema", [
    {"$defs": {"a": {"type": "integer"}}, "properties": {"x": {"$ref": "#/$defs/a"}}},
    {"definitions": {"a": {"type": "integer"}}, "items": {"$ref": "#/definitions/a"}},
    {"$defs": {"a": {"$anchor": "num", "type": "integer"}}, "items": {"$ref": "#num"}},
    {"$id": "https://example.invalid/root.json", "$defs": {
        "a": {"$id": "item.json", "type": "integer"}},
     "properties": {"x": {"$ref": "item.json"},
                    "y": {"$ref": "https://example.invalid/item.json"}}},
    {"$dynamicAnchor": "node", "type": "object",
     "properties": {"kids": {"type": "array", "items": {"$dynamicRef": "#node"}}}},
    # A property named $ref is a name, and enum values are data.
    {"properties": {"$ref": {"type": "string"}}, "enum": [{"$ref": "file:///etc/passwd"}]},
])
def test_refs_inside_the_schema_are_kept(schema: dict) -> None:
    assert schemas.check_schema(schema) is schema


@pytest.mark.parametrize(("schema", "words"), [
    ({"$ref": "#/$defs/missing"}, "does not resolve inside the schema"),
    ({"$ref": "#nowhere"}, "does not resolve inside the schema"),
    ({"$ref": "#"}, "refers to itself without end"),
    ({"allOf": [{"$ref": "#/$defs/b"}], "$defs": {"b": {"$ref": "#"}}}, "without end"),
])
def test_broken_internal_refs_are_refused(schema: dict, words: str) -> None:
    with pytest.raises(schemas.InvalidSchemaError, match=words):
        schemas.check_schema(schema)


def test_validation_never_retrieves_a_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    # Even a schema that skipped check_schema: the validator's registry is empty and
    # retrieves nothing (jsonschema's default would open the URL with urllib).
    import urllib.request

    def retrieve(*args: object, **kwargs: object) -> None:
        raise AssertionError("a reference was retrieved")

    monkeypatch.setattr(urllib.request, "urlopen", retrieve)
    with pytest.raises(schemas.InvalidSchemaError, match="does not resolve"):
        schemas.validation_error({"$ref": "http://127.0.0.1:9/s.json"}, 1)


def test_cli_schema_with_a_file_ref_is_one_line(test_models, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"enum": ["SECRET-1b9"]}))
    for schema in (json.dumps({"$ref": f"file://{secret}"}), str(tmp_path / "s.json")):
        (tmp_path / "s.json").write_text(json.dumps({"$ref": f"{secret}"}))
        result = CliRunner().invoke(cli, ["-m", "test-eats", "--schema", schema, "Say"])
        assert result.exit_code == 1
        assert "points outside the schema" in result.output
        assert len(result.output.strip().splitlines()) == 1
        assert "SECRET" not in result.output and "Traceback" not in result.output
    assert not test_models.requests
