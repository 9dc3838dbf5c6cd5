"""``llmcli aliases`` — your own names for models, in ``aliases.json`` (llm's format)."""

from __future__ import annotations

import json

import click
from click_default_group import DefaultGroup


@click.group(cls=DefaultGroup, default="list", default_if_no_args=True)
def aliases() -> None:
    """Manage model aliases: list (the default), set, remove, path."""


@aliases.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object: alias to model id.")
def list_aliases(as_json: bool) -> None:
    """Every alias: the models' own, then yours (yours win on a clash)."""
    from llmcli import api, config

    found: dict[str, str] = {}
    for model in api.get_models():
        for alias in model.aliases:
            found[alias] = model.model_id
    found.update(config.load_aliases())
    if as_json:
        click.echo(json.dumps(found, indent=4))
        return
    width = max((len(alias) for alias in found), default=0)
    for alias, model_id in found.items():
        click.echo(f"{alias:<{width}} : {model_id}")


@aliases.command(name="set")
@click.argument("alias")
@click.argument("model")
def set_alias(alias: str, model: str) -> None:
    """Make ALIAS a name for MODEL (a model id or an existing alias).

    \b
    llmcli aliases set haiku claude-haiku-4-5
    llmcli -m haiku "Hello"
    """
    from llmcli import api, config

    if not alias.strip():
        raise click.ClickException("An alias cannot be empty")
    model_id = api.get_model(model).model_id  # an unknown model fails here, with suggestions
    stored = config.load_aliases()
    stored[alias] = model_id
    config.save_aliases(stored)
    click.echo(f"Alias {alias!r} -> {model_id}", err=True)


@aliases.command(name="remove")
@click.argument("alias")
def remove_alias(alias: str) -> None:
    """Remove the alias ALIAS (one you set; a model's own aliases stay)."""
    from llmcli import config

    stored = config.load_aliases()
    if alias not in stored:
        known = ", ".join(sorted(stored)) or "none"
        raise click.ClickException(f"No alias named {alias!r} was set (set: {known})")
    del stored[alias]
    config.save_aliases(stored)


@aliases.command(name="path")
def path() -> None:
    """Print the path of aliases.json."""
    from llmcli import config

    click.echo(str(config.aliases_path()))
