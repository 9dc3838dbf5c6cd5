"""``llmcli openai-servers add|list|remove|presets``: manage openai-servers.json."""

from __future__ import annotations

import json

import click

from llmcli.errors import ConfigError

from ._servers import (
    PRESETS,
    ServerEntry,
    ServersFile,
    load_servers,
    save_servers,
    servers_path,
)
from ._wire import PREFILL_STYLES, capability_for

__all__ = ["openai_servers"]


def _load() -> ServersFile:
    try:
        return load_servers()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(name="openai-servers")
def openai_servers() -> None:
    """OpenAI-compatible servers (vLLM, llama-server, Ollama, DeepSeek, OpenRouter, ...).

    \b
    llmcli openai-servers add qwen --preset ollama --model-name qwen2.5:7b
    llmcli -m qwen "Write a haiku" --prefill "Autumn"
    """


@openai_servers.command(name="add")
@click.argument("server_id", metavar="ID")
@click.option("--model-name", required=True, help="The model's name on the server.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)),
              help="Fill in base URL, prefill style and key settings for a known server.")
@click.option("--base-url", help="e.g. http://localhost:8000/v1 (default: the preset's).")
@click.option("--prefill-style", type=click.Choice(PREFILL_STYLES),
              help="How the server takes a prefill (default: the preset's).")
@click.option("--echoes/--eats", default=None,
              help="prefix style only: whether the server returns the prefill too.")
@click.option("--key-name", help="The key's name in 'llmcli keys'.")
@click.option("--key-env", help="An environment variable that holds the key.")
@click.option("--alias", "aliases", multiple=True, help="Another name for -m (repeatable).")
@click.option("--replace", is_flag=True, help="Overwrite an entry with the same ID.")
def add(server_id: str, model_name: str, preset: str | None, base_url: str | None,
        prefill_style: str | None, echoes: bool | None, key_name: str | None,
        key_env: str | None, aliases: tuple[str, ...], replace: bool) -> None:
    """Add a model served by an OpenAI-compatible server, usable as -m ID."""
    chosen = PRESETS.get(preset) if preset else None
    values = {
        "id": server_id,
        "model_name": model_name,
        "base_url": base_url or (chosen.base_url if chosen else None),
        "prefill_style": prefill_style or (chosen.prefill_style if chosen else None),
        "echoes": echoes if echoes is not None else (chosen.echoes if chosen else False),
        "key_name": key_name or (chosen.key_name if chosen else None),
        "key_env": key_env or (chosen.key_env if chosen else None),
        "aliases": list(aliases),
    }
    for option, field in (("--base-url", "base_url"), ("--prefill-style", "prefill_style")):
        if values[field] is None:
            raise click.UsageError(f"{option} is required without --preset")
    from pydantic import ValidationError

    try:
        entry = ServerEntry.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise click.BadParameter(error["msg"].removeprefix("Value error, "),
                                 param_hint=where) from None
    servers = _load()
    existing = servers.get(server_id)
    if existing is not None and not replace:
        raise click.ClickException(
            f"A server named {server_id!r} exists; use --replace or 'openai-servers remove'")
    kept = [s for s in servers.servers if s.id != server_id]
    try:
        updated = ServersFile.model_validate({"servers": [*kept, entry]})
    except ValidationError as exc:
        problem = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise click.ClickException(problem) from None
    path = save_servers(updated)
    support = capability_for(entry.prefill_style, entry.echoes)
    click.echo(f"Added {server_id!r} ({entry.model_name} at {entry.base_url}, "
               f"prefill {entry.prefill_style}: {support}) to {path}")


@openai_servers.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def list_(as_json: bool) -> None:
    """List the configured servers."""
    servers = _load()
    entries = servers.servers
    if as_json:
        click.echo(json.dumps([e.model_dump() for e in entries], indent=2))
        return
    if not entries:
        click.echo(f"No servers configured ({servers_path()}). Add one with "
                   "'llmcli openai-servers add ID --preset ollama --model-name NAME'.")
        return
    for e in entries:
        support = capability_for(e.prefill_style, e.echoes)
        key = e.key_env or e.key_name or "none"
        if e.key_env and e.key_name:
            key = f"{e.key_name} / ${e.key_env}"
        click.echo(f"{e.id}: {e.model_name} at {e.base_url}  "
                   f"prefill={e.prefill_style} ({support})  key={key}")


@openai_servers.command(name="remove")
@click.argument("server_id", metavar="ID")
def remove(server_id: str) -> None:
    """Remove a configured server."""
    servers = _load()
    if servers.get(server_id) is None:
        raise click.ClickException(f"No server named {server_id!r} in {servers_path()}")
    servers.servers = [s for s in servers.servers if s.id != server_id]
    save_servers(servers)
    click.echo(f"Removed {server_id!r}")


@openai_servers.command(name="presets")
def presets() -> None:
    """Show the presets (also usable directly: -m ollama/qwen2.5:7b)."""
    for name, p in PRESETS.items():
        key = f"  key=${p.key_env}" if p.key_env else ""
        click.echo(f"{name}: {p.base_url}  prefill={p.prefill_style}{key}  - {p.note}")
