"""``llmcli openai-servers add|list|probe|remove|presets``: manage openai-servers.json."""

from __future__ import annotations

import json
from typing import Any

import click

from llmcli.errors import ConfigError

from ._servers import (
    PRESETS,
    ProbeRecord,
    ServerEntry,
    ServersFile,
    load_servers,
    preset_echo,
    save_servers,
    servers_path,
)
from ._wire import (
    PREFILL_STYLES,
    SCHEMA_FIELDS,
    TOOL_MODES,
    EchoMode,
    PrefillStyle,
    capability_for,
    takes_grammar,
)

__all__ = ["openai_servers"]


def _load() -> ServersFile:
    try:
        return load_servers()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _validation_problem(exc: Any) -> tuple[str, str]:
    """(where, message) of a pydantic ValidationError's first problem."""
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    return where, str(error["msg"]).removeprefix("Value error, ")


#: Entry fields and the options that set them, for errors that name what the user typed.
_OPTION_FOR = {"id": "ID", "model_name": "--model-name", "base_url": "--base-url",
               "prefill_style": "--prefill-style", "key_name": "--key-name",
               "key_env": "--key-env", "aliases": "--alias", "echoes": "--echoes/--eats",
               "tools": "--tools"}


def _entry(values: dict[str, Any]) -> ServerEntry:
    from pydantic import ValidationError

    try:
        return ServerEntry.model_validate(values)
    except ValidationError as exc:
        where, message = _validation_problem(exc)
        option = _OPTION_FOR.get(where.split(".")[0])
        if option is None:
            raise click.UsageError(message) from None
        raise click.BadParameter(message, param_hint=option) from None


def _key_for(entry: ServerEntry) -> str | None:
    from llmcli import config

    if not (entry.key_name or entry.key_env):
        return None
    key = config.get_key(entry.key_name or entry.id, entry.key_env)
    config.remember_secret(key)
    return key


def _probe(entry: ServerEntry, tools: bool) -> ProbeRecord:
    """Probe, or a ClickException that says why it could not (nothing is recorded then)."""
    from llmcli.config import scrub

    from ._probe import ProbeError, probe_server

    what = "prefill and tool calling" if tools else "prefill"
    click.echo(f"Probing {entry.base_url} ({entry.model_name}) for its {what} behaviour...",
               err=True)
    try:
        return probe_server(entry.base_url, entry.model_name, _key_for(entry), tools=tools,
                            schema_field=entry.schema_field)
    except ProbeError as exc:
        raise click.ClickException(
            scrub(f"Cannot probe {entry.base_url}: {exc}")) from None


def _describe_probe(record: ProbeRecord) -> str:
    parts = [f"{style}: stream {p.stream}, complete {p.complete}"
             for style, p in record.styles.items()]
    if record.tools is not None:
        choices = ", ".join(f"{kind} {outcome}" for kind, outcome in record.tools.choices.items())
        parts.append(f"tools: {record.tools.chosen} ({choices})")
    return "; ".join(parts) + f" (probed {record.at})"


def _tools_text(entry: ServerEntry) -> str:
    mode = entry.tool_mode()
    served = entry.native_choices()
    if mode == "native" and set(served) != {"auto", "required", "named", "none"}:
        others = "grammar" if takes_grammar(entry.schema_field) else "refused by the server"
        return f"native for {', '.join(c for c in served if c != 'none')}, else {others}"
    return mode


def _support(entry: ServerEntry) -> str:
    return _support_text(entry.prefill_style, entry.echo(stream=True), entry.echo(stream=False))


def _support_text(style: PrefillStyle, echo_stream: EchoMode, echo_complete: EchoMode) -> str:
    """How the normalizer treats the server, per stream mode when they differ."""
    streamed = capability_for(style, echo_stream)
    whole = capability_for(style, echo_complete)
    if style != "none" and echo_stream == echo_complete == "auto":
        return f"{streamed}, detected per reply"
    if streamed == whole:
        return str(streamed)
    return f"stream {streamed}, complete {whole}"


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
              help="How the server takes a prefill. Given: no probe is sent. "
                   "Default: probe the server and pick the best style that works.")
@click.option("--echoes/--eats", default=None,
              help="The server returns the prefill too / only the continuation, streamed "
                   "or not. Default: what the probe saw, else detected per reply.")
@click.option("--probe/--no-probe", "do_probe", default=True,
              help="Without --prefill-style: ask the server (default), or take the "
                   "preset's style unprobed.")
@click.option("--key-name", help="The key's name in 'llmcli keys'.")
@click.option("--key-env", help="An environment variable that holds the key.")
@click.option("--alias", "aliases", multiple=True, help="Another name for -m (repeatable).")
@click.option("--schema-field", type=click.Choice([*SCHEMA_FIELDS, "none"]),
              help="The request field the server enforces a --schema with (default: the "
                   "preset's; none: ask for JSON in the prompt and validate the reply).")
@click.option("--images", is_flag=True,
              help="The model sees images: -a sends them as image_url parts (data URLs).")
@click.option("--tools", "tools", type=click.Choice([*TOOL_MODES, "auto"]),
              help="How the server calls tools: native (tools/tool_choice, tool_calls back), "
                   "grammar (the tools in the prompt, the reply constrained by the schema "
                   "field's grammar), none. Default (auto): what the probe finds, else "
                   "grammar where --schema-field takes one.")
@click.option("--replace", is_flag=True, help="Overwrite an entry with the same ID.")
def add(server_id: str, model_name: str, preset: str | None, base_url: str | None,
        prefill_style: str | None, echoes: bool | None, do_probe: bool, key_name: str | None,
        key_env: str | None, aliases: tuple[str, ...], schema_field: str | None,
        replace: bool, images: bool = False, tools: str | None = None) -> None:
    """Add a model served by an OpenAI-compatible server, usable as -m ID.

    Without --prefill-style the server is probed: two tiny requests per style (streamed
    and not, 3 tokens) show whether it continues a prefill and whether it echoes it."""
    chosen = PRESETS.get(preset) if preset else None
    if base_url is None and chosen is None:
        raise click.UsageError("--base-url is required without --preset")
    if prefill_style is None and chosen is None and not do_probe:
        raise click.UsageError("--prefill-style is required with --no-probe and no --preset")
    values: dict[str, Any] = {
        "id": server_id,
        "model_name": model_name,
        "base_url": base_url or (chosen.base_url if chosen else None),
        # Validated now with a placeholder style; the probe may choose another.
        "prefill_style": prefill_style or (chosen.prefill_style if chosen else "none"),
        "echoes": echoes if echoes is not None else (chosen.echoes if chosen else None),
        "key_name": key_name or (chosen.key_name if chosen else None),
        "key_env": key_env or (chosen.key_env if chosen else None),
        "aliases": list(aliases),
        "schema_field": (None if schema_field == "none" else schema_field) if schema_field
        else (chosen.schema_field if chosen else None),
        **({"images": True} if images else {}),
        **({"tools": tools} if tools and tools != "auto" else {}),
    }
    entry = _entry(values)
    if entry.tools == "grammar" and not takes_grammar(entry.schema_field):
        raise click.BadParameter(
            "grammar needs a server that takes a grammar (--schema-field json_schema for "
            "llama-server, structured_outputs for vLLM)", param_hint="--tools")
    servers = _load()
    if servers.get(server_id) is not None and not replace:
        raise click.ClickException(
            f"A server named {server_id!r} exists; use --replace or 'openai-servers remove'")
    if prefill_style is None and do_probe:
        entry = _with_probe(entry, required=chosen is None)
    kept = [s for s in servers.servers if s.id != server_id]
    from pydantic import ValidationError

    try:
        updated = ServersFile.model_validate({"servers": [*kept, entry]})
    except ValidationError as exc:
        raise click.ClickException(_validation_problem(exc)[1]) from None
    path = save_servers(updated)
    click.echo(f"Added {server_id!r} ({entry.model_name} at {entry.base_url}, "
               f"prefill {entry.prefill_style}: {_support(entry)}, tools "
               f"{_tools_text(entry)}) to {path}")


def _with_probe(entry: ServerEntry, required: bool) -> ServerEntry:
    """The entry with a probe's record and chosen style. When the server cannot be asked,
    a preset's style is kept (with a warning) and no style is an error."""
    try:
        record = _probe(entry, tools=entry.tools is None)
    except click.ClickException as exc:
        if required:
            raise click.ClickException(
                f"{exc.message}; start the server, or give --prefill-style") from None
        click.echo(f"Warning: {exc.message}; keeping the preset's style "
                   f"{entry.prefill_style} (run 'llmcli openai-servers probe {entry.id}' "
                   "later)", err=True)
        return entry
    click.echo(f"Probe: {_describe_probe(record)}", err=True)
    return entry.model_copy(update={"probe": record, "prefill_style": record.chosen})


@openai_servers.command(name="probe")
@click.argument("server_id", metavar="ID")
def probe(server_id: str) -> None:
    """Ask a configured server again what it does with a prefill, and record it.

    The best style that works streamed and not is chosen, and how the server calls tools;
    an --echoes/--eats or --tools given at 'add' is dropped in favour of what the server
    does now."""
    servers = _load()
    entry = servers.get(server_id)
    if entry is None:
        raise click.ClickException(f"No server named {server_id!r} in {servers_path()}")
    record = _probe(entry, tools=True)
    updated = entry.model_copy(update={"probe": record, "prefill_style": record.chosen,
                                       "echoes": None, "tools": None})
    servers.servers = [updated if s.id == server_id else s for s in servers.servers]
    save_servers(servers)
    click.echo(f"{server_id}: {_describe_probe(record)}")
    for style, result in record.styles.items():
        click.echo(f"  {style}: {result.seen}")
    if record.tools is not None:
        click.echo(f"  tools: {record.tools.seen}")
    click.echo(f"{server_id}: prefill {updated.prefill_style} ({_support(updated)}), "
               f"tools {_tools_text(updated)}")


@openai_servers.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def list_(as_json: bool) -> None:
    """List the configured servers, with what a probe saw."""
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
        key = e.key_env or e.key_name or "none"
        if e.key_env and e.key_name:
            key = f"{e.key_name} / ${e.key_env}"
        click.echo(f"{e.id}: {e.model_name} at {e.base_url}  "
                   f"prefill={e.prefill_style} ({_support(e)})  tools={_tools_text(e)}  "
                   f"key={key}")
        if e.probe is not None:
            click.echo(f"  probe: {_describe_probe(e.probe)}")


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
    from llmcli.cli.render import table

    rows = []
    for name, p in PRESETS.items():
        echo = preset_echo(p)
        key = f"{p.key_name} / ${p.key_env}" if p.key_env else "none"
        rows.append([name, p.base_url, p.prefill_style,
                     _support_text(p.prefill_style, echo, echo), key, p.note])
    table(["preset", "base URL", "prefill style", "capability", "key", "note"], rows)
