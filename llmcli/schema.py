"""Structured output: what ``--schema`` accepts, and the checks made on a reply.

A schema is a JSON Schema (a dict). :func:`parse_schema` reads one from what a user types:
inline JSON, a file path, or llm's concise form (``'name, age int, bio: one sentence'``);
:func:`multi` wraps one in llm's list form (``{"items": [...]}``, an object at the top, as
OpenAI's strict mode wants). :func:`schema_id` names a schema by its content (the log stores
each schema once under it). :func:`check_reply` parses a reply and validates it.

How a model honours a schema is its :class:`~llmcli.capabilities.SchemaSupport`; the core
(:mod:`llmcli.prepare`, :mod:`llmcli.response`) adds the instruction and the retries of the
``validated`` mode.

Imports only :mod:`llmcli.errors`; ``jsonschema`` (and its ``referencing``) is imported when a
schema is checked. A schema never makes the validator read a file or a URL
(:func:`check_references`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmcli.errors import InvalidSchemaError, SchemaUnsupportedError, SchemaValidationError

__all__ = [
    "InvalidSchemaError",
    "SchemaUnsupportedError",
    "SchemaValidationError",
    "check_references",
    "check_reply",
    "check_schema",
    "closed",
    "concise_schema",
    "dumps",
    "instruction",
    "is_strict",
    "multi",
    "parse_reply",
    "parse_schema",
    "retry_prompt",
    "schema_id",
    "unwrap",
    "validation_error",
]

#: Retries of the ``validated`` mode: a reply that fails is sent back with the error this
#: many times at most.
DEFAULT_RETRIES = 2

_TYPES = {"str": "string", "string": "string", "int": "integer", "integer": "integer",
          "float": "number", "number": "number", "bool": "boolean", "boolean": "boolean"}


def concise_schema(text: str) -> dict[str, Any]:
    """llm's concise form: fields separated by commas (or newlines, when there are any),
    each ``name [type][: description]``, type one of str, int, float, bool (default str).
    Every field is required."""
    properties: dict[str, Any] = {}
    parts = text.split("\n") if "\n" in text else text.split(",")
    for raw in (p.strip() for p in parts):
        if not raw:
            continue
        head, _, description = raw.partition(":")
        words = head.split()
        if not words or len(words) > 2:
            raise InvalidSchemaError(
                f"Schema field {raw!r}: expected 'name [type][: description]'")
        name = words[0]
        kind = words[1] if len(words) == 2 else "str"
        if kind not in _TYPES:
            raise InvalidSchemaError(
                f"Schema field {name!r}: unknown type {kind!r} (use str, int, float or bool)")
        if name in properties:
            raise InvalidSchemaError(f"Schema field {name!r} is given twice")
        prop: dict[str, Any] = {"type": _TYPES[kind]}
        if description.strip():
            prop["description"] = description.strip()
        properties[name] = prop
    if not properties:
        raise InvalidSchemaError(
            "Empty schema: give a JSON Schema or fields such as 'name, age int'")
    return {"type": "object", "properties": properties, "required": list(properties)}


def parse_schema(value: str | dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema from a dict, inline JSON, a path to a JSON file, or the concise form;
    checked (:func:`check_schema`)."""
    if isinstance(value, dict):
        schema = value
    else:
        text = value.strip()
        if not text:
            raise InvalidSchemaError("Empty schema")
        path = (Path(text).expanduser() if not text.startswith("{") and "\n" not in text
                else None)
        if path is not None and (text.endswith(".json") or _is_file(path)):
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise InvalidSchemaError(f"Cannot read schema file {value}: "
                                         f"{exc.strerror or exc}") from None
            if not text.lstrip().startswith("{"):
                return check_schema(concise_schema(text))
        if text.lstrip().startswith("{"):
            try:
                loaded = json.loads(text)
            except ValueError as exc:
                raise InvalidSchemaError(f"The schema is not valid JSON: {exc}") from None
            if not isinstance(loaded, dict):
                raise InvalidSchemaError("A JSON Schema is a JSON object")
            schema = loaded
        else:
            schema = concise_schema(text)
    return check_schema(schema)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for a path, say: not a file
        return False


def check_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` if it is a valid JSON Schema (draft 2020-12) whose references all resolve
    inside it (:func:`check_references`), else a clear error."""
    import jsonschema

    if not isinstance(schema, dict):
        raise InvalidSchemaError("A JSON Schema is a JSON object")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
        check_references(schema)
        # A reference loop that consumes nothing ({"$ref": "#"}) never ends: find it now,
        # before any model is asked, by validating one value of each JSON type.
        probes: tuple[Any, ...] = (None, True, 0, "", [], {})
        for probe in probes:
            validation_error(schema, probe)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise InvalidSchemaError(
            f"Invalid JSON Schema{f' at {where}' if where else ''}: {exc.message}") from None
    except RecursionError:
        raise InvalidSchemaError("Invalid JSON Schema: nested too deeply") from None
    return schema


#: Keywords whose value is a reference (2019-09's ``$recursiveRef`` too: refused unless
#: internal, though draft 2020-12 ignores it).
_REFERENCES = ("$ref", "$dynamicRef", "$recursiveRef")


def _references(schema: Any, base: str = "") -> Iterator[tuple[str, str, str]]:
    """Each reference in ``schema``: (keyword, value, the base URI it resolves against, from
    the enclosing ``$id``s). Data keywords (``enum``, ``const``, ``default``, ...) are not
    looked into, and a property named ``$ref`` is a name, not a reference."""
    from urllib.parse import urldefrag, urljoin

    if isinstance(schema, list):
        for item in schema:
            yield from _references(item, base)
        return
    if not isinstance(schema, dict):
        return
    if isinstance(schema.get("$id"), str):
        base = urldefrag(urljoin(base, schema["$id"])).url
    for key, value in schema.items():
        if key in _REFERENCES and isinstance(value, str):
            yield key, value, base
        elif key in _LITERAL_KEYWORDS:
            continue
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            for sub in value.values():
                yield from _references(sub, base)
        else:
            yield from _references(value, base)


def check_references(schema: dict[str, Any]) -> None:
    """Refuse any reference that does not resolve inside ``schema`` itself.

    A schema comes from a user or, in ``llmcli serve``, from any client: a ``$ref`` to
    ``file:///...``, ``http://...``, a relative path or a URN would have the validator read
    a local file or make a request. Only references into the schema resolve (``#/$defs/x``,
    ``#anchor``, and ``$id``-named parts of it): each is looked up here, in a registry that
    holds nothing but this schema and never retrieves, so a validation later never reaches
    outside it either (:func:`validation_error` uses the same empty registry)."""
    import referencing
    import referencing.exceptions
    from referencing.jsonschema import DRAFT202012

    refs = list(_references(schema))
    if not refs:
        return
    root = schema["$id"] if isinstance(schema.get("$id"), str) else ""
    try:
        registry = referencing.Registry().with_resource(
            root, DRAFT202012.create_resource(schema)).crawl()
    except Exception:  # a malformed $id: nothing can be looked up by it
        raise InvalidSchemaError("Invalid JSON Schema: its $id values cannot be "
                                 "resolved") from None
    for keyword, value, base in refs:
        try:
            registry.resolver(base_uri=base).lookup(value)
        except (referencing.exceptions.Unresolvable, ValueError, LookupError):
            shown = value if len(value) <= 80 else value[:77] + "..."
            if value.startswith("#"):
                raise InvalidSchemaError(
                    f"Schema {keyword} {shown!r} does not resolve inside the schema") from None
            raise InvalidSchemaError(
                f"Schema {keyword} {shown!r} points outside the schema: only references "
                "inside it are allowed (such as '#/$defs/name'); a schema never reads a "
                "file or a URL") from None


def closed(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that lists its
    properties and says nothing of others. JSON Schema allows extra keys by default; strict
    providers (OpenAI, Anthropic) require objects closed, and a constrained model given the
    choice keeps inventing keys. A reply to the closed schema conforms to the original."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k in _LITERAL_KEYWORDS else
           {name: closed(sub) for name, sub in v.items()} if k in _SCHEMA_MAPS
           and isinstance(v, dict) else closed(v)
           for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


#: Keywords whose values are data, not schemas.
_LITERAL_KEYWORDS = frozenset({"enum", "const", "default", "examples", "required",
                               "description", "title", "pattern"})
#: Keywords whose values map names to schemas (a property may be called "properties").
_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties"})


def is_strict(schema: Any) -> bool:
    """Whether OpenAI's strict mode can take ``schema`` as it is: every object closed and
    every property required (strict mode has no optional properties)."""
    if isinstance(schema, list):
        return all(is_strict(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    props = schema.get("properties")
    if isinstance(props, dict):
        if schema.get("additionalProperties") is not False:
            return False
        if set(schema.get("required") or []) != set(props):
            return False
    return all(is_strict(v) if k not in _SCHEMA_MAPS else
               all(is_strict(sub) for sub in v.values()) if isinstance(v, dict) else True
               for k, v in schema.items() if k not in _LITERAL_KEYWORDS)


def multi(schema: dict[str, Any]) -> dict[str, Any]:
    """llm's ``--schema-multi`` form: an object whose ``items`` is a list of ``schema``."""
    return {"type": "object", "properties": {"items": {"type": "array", "items": schema}},
            "required": ["items"]}


def unwrap(value: Any, schema: dict[str, Any]) -> list[Any]:
    """The objects a reply holds: the ``items`` of a :func:`multi` schema's reply, the
    elements of a top-level array, or the value itself."""
    props = schema.get("properties") or {}
    if (schema.get("required") == ["items"] and list(props) == ["items"]
            and isinstance(value, dict) and isinstance(value.get("items"), list)):
        return list(value["items"])
    if isinstance(value, list):
        return value
    return [value]


def dumps(schema: dict[str, Any]) -> str:
    """The canonical text of a schema (what :func:`schema_id` hashes and the log stores)."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def schema_id(schema: dict[str, Any]) -> str:
    """The schema's id: a hash of its canonical text (the same schema, the same id)."""
    return hashlib.blake2b(dumps(schema).encode("utf-8"), digest_size=16).hexdigest()


def instruction(schema: dict[str, Any]) -> str:
    """What the ``validated`` mode adds to the prompt."""
    return ("Reply with only a JSON value (no prose, no code fence) that conforms to this "
            f"JSON Schema:\n{json.dumps(schema, ensure_ascii=False)}")


def retry_prompt(error: str) -> str:
    """The turn sent after a reply that failed validation."""
    return (f"That reply is not valid: {error}. Reply again with only the corrected JSON, "
            "conforming to the schema.")


_FENCED = re.compile(r"^\s*```[a-zA-Z]*\n(.*?)\n?```\s*$", re.DOTALL)


def parse_reply(text: str) -> Any:
    """The JSON value of a reply (a code fence around it is tolerated)."""
    match = _FENCED.match(text)
    body = match.group(1) if match else text
    try:
        return json.loads(body)
    except ValueError as exc:
        raise SchemaValidationError(f"the reply is not JSON ({exc})") from None


def validation_error(schema: dict[str, Any], value: Any) -> str | None:
    """Why ``value`` does not conform to ``schema`` (the most relevant error), or None."""
    import jsonschema
    import referencing
    import referencing.exceptions

    # An empty registry: a reference is never retrieved (check_schema has refused any that
    # does not resolve inside the schema).
    validator = jsonschema.Draft202012Validator(schema, registry=referencing.Registry())
    try:
        best = jsonschema.exceptions.best_match(validator.iter_errors(value))
    except referencing.exceptions.Unresolvable:
        # Only a schema that skipped check_schema gets here: its reference stays unresolved.
        raise InvalidSchemaError("The schema has a $ref that does not resolve inside "
                                 "it") from None
    except RecursionError:  # {"$ref": "#"}: a reference to itself that never ends
        raise InvalidSchemaError("The schema refers to itself without end (a $ref loop)"
                                 ) from None
    if best is None:
        return None
    where = "/".join(str(p) for p in best.absolute_path)
    return f"{best.message}{f' (at {where})' if where else ''}"


def check_reply(schema: dict[str, Any], text: str) -> Any:
    """The parsed reply, if it is JSON and conforms to ``schema``; else
    :class:`SchemaValidationError`."""
    value = parse_reply(text)
    error = validation_error(schema, value)
    if error is not None:
        raise SchemaValidationError(f"the reply does not match the schema: {error}")
    return value
