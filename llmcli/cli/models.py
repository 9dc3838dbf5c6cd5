"""``llmcli models`` — list models and their prefill capability; choose the default."""

from __future__ import annotations

import contextlib
import json
import types
import typing
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import click
from click_default_group import DefaultGroup

from llmcli.attachments import TYPES, describe_types
from llmcli.cli.render import table

if TYPE_CHECKING:
    from llmcli.contract import Model


def _type_name(annotation: Any) -> str:
    """An option's type as a user reads it: int, float, str, bool, list[str], 'a' | 'b'."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " | ".join(names) + (" | none" if type(None) in args else "")
    if origin is list:
        return f"list[{_type_name(args[0])}]" if args else "list"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def describe_options(model: Model) -> list[dict[str, Any]]:
    """Each option's name, type, bounds, default and description."""
    described = []
    for name, field in model.Options.model_fields.items():
        bounds = [f"{sign} {getattr(m, attr)}" for m in field.metadata
                  for attr, sign in _BOUNDS if getattr(m, attr, None) is not None]
        item: dict[str, Any] = {"name": name, "type": _type_name(field.annotation),
                                "bounds": bounds, "description": field.description or ""}
        if not field.is_required() and field.default_factory is None:
            item["default"] = field.default
        described.append(item)
    return described


def _option_line(option: dict[str, Any], stored: dict[str, Any]) -> str:
    details = [option["type"], *option["bounds"]]
    if option.get("default") is not None:
        details.append(f"default {option['default']!r}")
    if option["name"] in stored:
        details.append(f"set to {stored[option['name']]!r} (llmcli models options)")
    line = f"  {option['name']}: {', '.join(details)}"
    if option["description"]:
        line += f"\n    {option['description']}"
    return line


def _describe(model: Model, user_aliases: dict[str, str]) -> dict[str, object]:
    from llmcli import api

    support = model.get_prefill_support(model.Options())
    mine = [alias for alias, target in user_aliases.items() if target == model.model_id]
    return {
        "model_id": model.model_id,
        "aliases": [*model.aliases, *mine],
        "prefill_support": support.value,
        "prefill_note": model.prefill_note(),
        "schema_support": model.get_schema_support(model.Options()).value,
        "attachment_types": [t for t in TYPES
                             if t in model.get_attachment_types(model.Options())],
        "reasoning_prefill": {str(p): how for p, how in model.reasoning_prefills().items()},
        "tool_support": model.get_tool_support(model.Options()).value,
        "plugin": model.plugin,
        "needs_key": model.needs_key.name if model.needs_key else None,
        "key_env_var": model.needs_key.env_var if model.needs_key else None,
        "key_set": api.key_is_set(model) if model.needs_key else None,
        "options": list(model.Options.model_fields),
        "option_details": describe_options(model),
    }


@click.group(cls=DefaultGroup, default="list", default_if_no_args=True)
def models() -> None:
    """List models (the default) or choose the default model."""


@models.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.option("--options", "show_options", is_flag=True,
              help="Each model's options: type, bounds, default and description.")
def list_models(as_json: bool, show_options: bool) -> None:
    """Every model with its prefill capability, aliases and whether its key is set."""
    from llmcli import api, config
    from llmcli.errors import ConfigError

    try:
        config.load_keys()
    except ConfigError as exc:  # it affects only the models that need a stored key
        click.echo(f"Warning: {exc}", err=True)
    user_aliases = config.load_aliases()
    described = [_describe(m, user_aliases) for m in api.get_models()]
    if as_json:
        click.echo(json.dumps(described, indent=2, default=str))
        return
    if show_options:
        stored = config.load_model_options()
        for d in described:
            names = ", ".join(d["reasoning_prefill"]) or "-"  # type: ignore[arg-type]
            click.echo(f"{d['model_id']} (prefill: {d['prefill_support']}, "
                       f"schema: {d['schema_support']}, "
                       f"attachments: {_attachments(d)}, tools: {d['tool_support']}, "
                       f"reasoning prefill: {names})")
            mine = stored.get(str(d["model_id"]), {})
            details: list[dict[str, Any]] = d["option_details"]  # type: ignore[assignment]
            lines = [_option_line(o, mine) for o in details]
            click.echo("\n".join(lines) if lines else "  (no options)")
        return
    default = None
    with contextlib.suppress(Exception):
        default = api.get_default_model().model_id
    rows = []
    for d in described:
        key = "-" if d["needs_key"] is None else ("set" if d["key_set"] else
                                                  f"needed ({d['key_env_var']})")
        prefill = str(d["prefill_support"])
        if d["prefill_note"]:
            prefill += f" ({d['prefill_note']})"
        name = str(d["model_id"]) + (" *" if d["model_id"] == default else "")
        policies: dict[str, str] = d["reasoning_prefill"]  # type: ignore[assignment]
        reasoning = ", ".join(f"{p} ({how})" for p, how in policies.items()) or "-"
        rows.append([name, prefill, ", ".join(d["aliases"]), key,  # type: ignore[arg-type]
                     str(d["schema_support"]), _attachments(d), str(d["tool_support"]),
                     reasoning])
    table(["model", "prefill", "aliases", "key", "schema", "attachments", "tools",
           "reasoning prefill"], rows)


def _attachments(described: dict[str, object]) -> str:
    """The attachment column: "images", "images, PDF", or "-" for none."""
    types: list[str] = described["attachment_types"]  # type: ignore[assignment]
    return describe_types(set(types)) if types else "-"


@models.command(name="default")
@click.argument("model", required=False)
def default_model(model: str | None) -> None:
    """Show the default model, or set it to MODEL."""
    from llmcli import api, config

    if model is None:
        click.echo(api.get_default_model().model_id)
        return
    resolved = api.get_model(model)
    config.set_default_model(resolved.model_id)
    click.echo(f"Default model: {resolved.model_id}")


@models.group(name="options")
def options() -> None:
    """Default options per model, applied beneath -o: set, show, clear."""


def _model_id(name: str, stored: dict[str, Any]) -> str:
    """The model id for NAME; a model no longer installed can still be named by its id."""
    from llmcli import api
    from llmcli.errors import UnknownModelError

    try:
        return api.get_model(name).model_id
    except UnknownModelError:
        if name in stored:
            return name
        raise


@options.command(name="set")
@click.argument("model")
@click.argument("name")
@click.argument("value")
def set_option(model: str, name: str, value: str) -> None:
    """Make VALUE the default of option NAME for MODEL (checked by the model now).

    \b
    llmcli models options set claude-haiku-4-5 temperature 0.5
    llmcli models options set smollm2 stop '["END", "STOP"]'   # a list option, as with -o
    """
    from llmcli import api, config
    from llmcli.cli.common import parse_options

    resolved = api.get_model(model)
    stored = config.load_model_options()
    mine = dict(stored.get(resolved.model_id, {}))
    mine[name] = parse_options(resolved, ((name, value),))[name]
    api.validate_options(resolved, mine)
    stored[resolved.model_id] = mine
    config.save_model_options(stored)
    click.echo(f"{resolved.model_id}: {name} = {_show(mine[name])}", err=True)


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@options.command(name="show")
@click.argument("model", required=False)
def show_options(model: str | None) -> None:
    """The default options set for MODEL, or for every model."""
    from llmcli import config

    stored = config.load_model_options()
    if model is not None:
        for name, value in stored.get(_model_id(model, stored), {}).items():
            click.echo(f"{name}: {_show(value)}")
        return
    for model_id, values in stored.items():
        click.echo(f"{model_id}:")
        for name, value in values.items():
            click.echo(f"  {name}: {_show(value)}")


@options.command(name="clear")
@click.argument("model")
@click.argument("name", required=False)
def clear_options(model: str, name: str | None) -> None:
    """Clear the default option NAME for MODEL, or all of MODEL's defaults."""
    from llmcli import config

    stored = config.load_model_options()
    model_id = _model_id(model, stored)
    mine = dict(stored.get(model_id, {}))
    if name is None:
        mine.clear()
    elif name not in mine:
        known = ", ".join(mine) or "none"
        raise click.ClickException(f"No default {name!r} is set for {model_id} (set: {known})")
    else:
        del mine[name]
    stored[model_id] = mine
    config.save_model_options(stored)
