"""``llmcli keys`` — store API keys in a 0600 file in the user directory."""

from __future__ import annotations

import click

from llmcli import config


@click.group()
def keys() -> None:
    """Manage stored API keys (environment variables work too)."""


@keys.command(name="set")
@click.argument("name")
@click.option("--value", help="The key (default: prompt for it without echo).")
def set_key(name: str, value: str | None) -> None:
    """Store the key NAME (e.g. anthropic, openai, mistral)."""
    if value is None:
        value = click.prompt("Enter key", hide_input=True)
    value = value.strip()
    if not value:
        raise click.ClickException("Empty key; nothing stored")
    config.set_key(name, value)
    click.echo(f"Stored key {name!r} in {config.keys_path()}", err=True)


@keys.command(name="get")
@click.argument("name")
def get_key(name: str) -> None:
    """Print the stored key NAME (not one from the environment)."""
    stored = config.load_keys()
    if name not in stored:
        known = ", ".join(sorted(stored)) or "none"
        raise click.ClickException(f"No key named {name!r} is stored (stored: {known}); "
                                   f"run 'llmcli keys set {name}'")
    click.echo(stored[name])


@keys.command(name="list")
def list_keys() -> None:
    """The names of the stored keys (never their values)."""
    for name in sorted(config.load_keys()):
        click.echo(name)


@keys.command(name="path")
def path() -> None:
    """Print the path of the keys file."""
    click.echo(str(config.keys_path()))
