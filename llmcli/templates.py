"""Saved prompts (templates): loading, saving and applying them, for the command line
(``llmcli templates``, ``--save NAME``, ``-t NAME``: :mod:`llmcli.cli.templates`) and for any
other front end; no click here.

A template is a JSON object in ``templates/NAME.json`` in the user directory, with llm's keys
(``prompt``, ``system``, ``model``, ``options``, ``defaults``, ``extract``, ``fragments``,
``system_fragments``) and llmcli's ``prefill``. ``$name`` in its prompt and system is filled
from ``-p name value`` (else from ``defaults``); ``$input`` is the text given with it (the
PROMPT argument after any piped input), appended after a blank line when the prompt does
not place it. JSON, not llm's YAML: the core does not depend on a YAML library.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmcli.errors import TemplateError

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

#: Each key a template may hold, and the JSON type it must have.
FIELDS: dict[str, type | tuple[type, ...]] = {
    "prompt": str, "system": str, "model": str, "prefill": str, "options": dict,
    "defaults": dict, "extract": bool, "fragments": list, "system_fragments": list,
    "schema": dict,
}


@dataclass
class Template:
    name: str
    prompt: str | None = None
    system: str | None = None
    model: str | None = None
    prefill: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    extract: bool = False
    fragments: list[str] = field(default_factory=list)
    system_fragments: list[str] = field(default_factory=list)
    #: ``--schema`` (``--schema-multi`` already wrapped): a JSON Schema object.
    schema: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data = {key: getattr(self, key) for key in FIELDS}
        return {key: value for key, value in data.items() if value not in (None, {}, [], False)}


def templates_dir() -> Path:
    from llmcli.config import user_dir

    return user_dir() / "templates"


def template_path(name: str) -> Path:
    if not _NAME.fullmatch(name):
        raise TemplateError(f"Invalid template name {name!r}: use letters, digits, '_', '-' "
                            "and '.'")
    return templates_dir() / f"{name}.json"


def load_template(name: str) -> Template:
    path = template_path(name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = ", ".join(template_names()) or "none"
        raise TemplateError(f"No template named {name!r} (saved: {known}); save one with "
                            f"--save {name}") from None
    except OSError as exc:
        raise TemplateError(f"Cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise TemplateError(f"Template {name!r} ({path}) is not valid JSON: {exc}") from None
    return _from_json(name, data, path)


def _from_json(name: str, data: Any, path: Path) -> Template:
    if not isinstance(data, dict):
        raise TemplateError(f"Template {name!r} ({path}) must be a JSON object")
    for key, value in data.items():
        if key not in FIELDS:
            raise TemplateError(f"Template {name!r} has an unknown key {key!r} "
                                f"(known: {', '.join(FIELDS)})")
        if value is not None and not isinstance(value, FIELDS[key]):
            raise TemplateError(f"Template {name!r}: {key!r} must be a JSON "
                                f"{_json_type(FIELDS[key])}")
    for key in ("fragments", "system_fragments"):
        if not all(isinstance(item, str) for item in data.get(key) or []):
            raise TemplateError(f"Template {name!r}: {key!r} must be a list of strings")
    if data.get("schema") is not None:
        from llmcli.schema import InvalidSchemaError, check_schema

        try:
            check_schema(data["schema"])
        except InvalidSchemaError as exc:
            raise TemplateError(f"Template {name!r}: 'schema' is not a valid JSON Schema: "
                                f"{exc}") from None
    return Template(name, **{k: v for k, v in data.items() if v is not None})


def _json_type(kind: type | tuple[type, ...]) -> str:
    return {str: "string", dict: "object", bool: "boolean", list: "list"}.get(
        kind if isinstance(kind, type) else kind[0], "value")


def save_template(template: Template) -> Path:
    from llmcli.config import ensure_user_dir

    path = template_path(template.name)
    ensure_user_dir()
    try:
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(template.to_json(), indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"Cannot write {path}: {exc.strerror or exc}") from None
    return path


def template_names() -> list[str]:
    try:
        return sorted(p.stem for p in templates_dir().glob("*.json"))
    except OSError:
        return []


def interpolate(name: str, text: str | None, params: dict[str, Any]) -> str | None:
    if not text:
        return text
    template = string.Template(text)
    if not template.is_valid():
        raise TemplateError(f"Template {name!r} has a '$' that names no variable; write $$ "
                            "for a literal $")
    missing = [v for v in template.get_identifiers() if v not in params]
    if missing:
        raise TemplateError(f"Template {name!r} needs {', '.join(missing)}: pass "
                            + " ".join(f"-p {v} VALUE" for v in missing))
    return template.substitute({k: str(v) for k, v in params.items()})


@dataclass
class Inputs:
    """What ``llmcli prompt`` sends once the template and fragments are applied."""

    text: str
    system: str | None
    model: str | None
    prefill: str | None
    options: dict[str, Any]
    extract: bool
    #: The template's schema (the command line's ``--schema`` wins over it).
    schema: dict[str, Any] | None = None


@dataclass
class _Applied:
    """``-t``/``-p`` applied to what the command line gives (which wins over the template):
    what ``llmcli`` (:func:`resolve_inputs`) and ``llmcli chat`` (:func:`resolve_chat`)
    both take from a template, the template's fragments before the command's."""

    template: Template | None
    #: The template's variables: its defaults, then ``-p`` (``$input`` is the text's).
    values: dict[str, Any]
    #: The command line's system prompt, which wins over the template's.
    given_system: str | None
    model: str | None
    prefill: str | None
    options: dict[str, Any]
    fragments: tuple[str, ...]
    system_fragments: tuple[str, ...]

    def wrap(self, text: str) -> str:
        """``text`` through the template's prompt: as its ``$input``, else after it (after
        a blank line; the prompt alone when there is no text)."""
        template = self.template
        if template is None or not template.prompt:
            return text
        uses_input = "input" in string.Template(template.prompt).get_identifiers()
        prompt = interpolate(template.name, template.prompt, {**self.values, "input": text}) or ""
        return prompt if uses_input or not text.strip() else f"{prompt}\n\n{text}"

    def system(self, text: str | None) -> str | None:
        """The system prompt, the template's filled in (``$input`` is ``text`` where given),
        with the system fragments before it."""
        system = self.given_system
        if system is None and self.template is not None:
            values = self.values if text is None else {**self.values, "input": text}
            system = interpolate(self.template.name, self.template.system, values)
        if self.system_fragments:
            from llmcli.fragments import with_fragments

            system = with_fragments(system, list(self.system_fragments))
        return system


def _apply(template_name: str | None, params: tuple[tuple[str, str], ...],
           fragments: tuple[str, ...], system_fragments: tuple[str, ...], *,
           system: str | None, model: str | None, prefill: str | None) -> _Applied:
    if template_name is None:
        if params:
            raise TemplateError("-p/--param fills a template's variables: use it with -t NAME")
        return _Applied(None, {}, system, model, prefill, {}, fragments, system_fragments)
    template = load_template(template_name)
    return _Applied(template, {**template.defaults, **dict(params)}, system,
                    model or template.model, template.prefill if prefill is None else prefill,
                    dict(template.options), (*template.fragments, *fragments),
                    (*template.system_fragments, *system_fragments))


def resolve_inputs(
    template_name: str | None,
    params: tuple[tuple[str, str], ...],
    fragments: tuple[str, ...],
    system_fragments: tuple[str, ...],
    *,
    text: str,
    system: str | None,
    model: str | None,
    prefill: str | None,
    extract: bool,
) -> Inputs:
    """Apply ``-t`` (what the command line gives wins over what the template holds), then
    ``-f``/``--sf`` (the template's fragments first)."""
    from llmcli.fragments import with_fragments

    applied = _apply(template_name, params, fragments, system_fragments, system=system,
                     model=model, prefill=prefill)
    template = applied.template
    prompt = applied.wrap(text)
    system = applied.system(text)
    if applied.fragments:
        prompt = with_fragments(prompt, list(applied.fragments)) or ""
    return Inputs(prompt, system, applied.model, applied.prefill, applied.options,
                  extract or (template is not None and template.extract),
                  template.schema if template is not None else None)


@dataclass
class ChatInputs:
    """What ``llmcli chat`` uses once ``-t`` and ``-f``/``--sf`` are applied: the system
    prompt (system fragments included) for every turn, the model, prefill and options, the
    fragments' text to send once (before the first message), and the template's prompt to
    wrap each message in (its ``$input``)."""

    system: str | None
    model: str | None
    prefill: str | None
    options: dict[str, Any]
    context: str | None
    template: Template | None
    #: One chat message as sent: through the template's prompt, if it has one.
    message: Callable[[str], str]

    @property
    def schema(self) -> dict[str, Any] | None:
        """The template's schema: every reply of the chat conforms to it."""
        return self.template.schema if self.template is not None else None


def resolve_chat(template_name: str | None, params: tuple[tuple[str, str], ...],
                 fragments: tuple[str, ...], system_fragments: tuple[str, ...], *,
                 system: str | None, model: str | None, prefill: str | None) -> ChatInputs:
    """``-t``/``-p``/``-f``/``--sf`` for a chat, by the same rules as for one prompt: what
    the command line gives wins over what the template holds, the template's fragments come
    first. Fragments are read now (a missing file fails before the chat starts)."""
    from llmcli.fragments import with_fragments

    applied = _apply(template_name, params, fragments, system_fragments, system=system,
                     model=model, prefill=prefill)
    applied.wrap("")  # a variable missing from -p fails now, not at the first turn
    context = with_fragments(None, list(applied.fragments)) if applied.fragments else None
    return ChatInputs(applied.system(None), applied.model, applied.prefill, applied.options,
                      context, applied.template, applied.wrap)
