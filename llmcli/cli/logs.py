"""``llmcli logs`` — read the SQLite log; turn logging on or off; back it up."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click_default_group import DefaultGroup

from llmcli import config
from llmcli.cli import render
from llmcli.errors import ConversationError, LogError, LogsInputError, UnknownModelError

if TYPE_CHECKING:
    from llmcli.log import LogStore

DEFAULT_COUNT = 3


@click.group(cls=DefaultGroup, default="list", default_if_no_args=True)
def logs() -> None:
    """Show recent responses (the default), or manage the log."""


@logs.command(name="list")
@click.option("-n", "--count", type=int, default=None,
              help=f"How many responses (0 for all; default {DEFAULT_COUNT}, all with "
                   "--id-gt).")
@click.option("-q", "--query", help="Search prompts and replies (words match by prefix).")
@click.option("-m", "--model", help="Only this model's responses.")
@click.option("-c", "--current", is_flag=True, help="Only the most recent conversation.")
@click.option("--cid", "--conversation", "conversation_id", help="Only this conversation.")
@click.option("--batch", "batch_id", help="Only the exchanges of this 'llmcli batch' run.")
@click.option("--id-gt", "after_id", metavar="ID",
              help="Only responses logged after the response ID.")
@click.option("-s", "--short", is_flag=True,
              help="One short entry per response (prompt and reply truncated).")
@click.option("-r", "--response", "last_response", is_flag=True,
              help="Print only the text of the last response.")
@click.option("-u", "--usage", is_flag=True, help="Show each response's token usage.")
@click.option("-x", "--extract", is_flag=True,
              help="Print only each reply's first fenced code block (all of it if none).")
@click.option("-t", "--truncate", is_flag=True,
              help="Truncate long prompts and replies to one line.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of rows.")
@click.option("--schema", "schema", metavar="SCHEMA",
              help="Only replies to this schema (as --schema takes it, or its id).")
@click.option("--schema-multi", "schema_multi", metavar="SCHEMA",
              help="Only replies to this --schema-multi schema.")
@click.option("--data", is_flag=True,
              help="Print each reply's parsed JSON as JSON Lines (a --schema-multi reply: "
                   "one line per item).")
def list_logs(count: int | None, query: str | None, model: str | None, current: bool,
              conversation_id: str | None, batch_id: str | None, after_id: str | None,
              short: bool, last_response: bool, usage: bool, extract: bool, truncate: bool,
              as_json: bool, schema: str | None, schema_multi: str | None,
              data: bool) -> None:
    """Recent responses, oldest first, each in full: its id, conversation, model, time,
    prompt, prefill and text.

    \b
    llmcli logs -n 10 -q zorb      # words match by prefix: finds Zorblax
    llmcli logs -r -x              # the code in the last reply
    llmcli logs backup logs-copy.db
    """
    from llmcli.log import LogStore

    if count is not None and count < 0:
        raise LogsInputError(f"-n/--count must be 0 (all) or more, not {count}")
    if as_json and (short or last_response or extract or truncate or usage):
        raise LogsInputError("--json prints every field; it cannot be combined with "
                             "-s, -r, -u, -x or -t")
    if count is None:
        count = 0 if after_id else DEFAULT_COUNT
    schema_id = _schema_id(schema, schema_multi)
    if data and (as_json or short or last_response or extract or truncate):
        raise LogsInputError("--data prints JSON Lines; it cannot be combined with --json, "
                             "-s, -r, -x or -t")
    store = LogStore.for_reading()
    rows: list[dict[str, Any]] = []
    if store is None:
        if conversation_id:
            raise ConversationError(f"No conversation with id {conversation_id!r}")
        if current:
            raise ConversationError("No conversation yet: none has been logged")
    else:
        try:
            rows = _select(store, count, query, model, current, conversation_id, batch_id,
                           after_id, schema_id)
            if data:
                for line in _data_lines(store, rows):
                    click.echo(line)
                return
        finally:
            store.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        click.echo("No matches." if query or model or batch_id or after_id
                   else "No responses logged yet.", err=True)
        return
    if last_response:
        click.echo(_reply(rows[-1], extract))
    elif extract:
        for row in rows:
            click.echo(_reply(row, extract))
    elif short:
        for row in rows:
            click.echo(render.short_entry(row, usage=usage))
    else:
        for row in rows:
            click.echo(render.full_entry(row, usage=usage, truncate=truncate))


def _select(store: LogStore, count: int, query: str | None, model: str | None, current: bool,
            conversation_id: str | None, batch_id: str | None, after_id: str | None,
            schema_id: str | None = None) -> list[dict[str, Any]]:
    if current:
        conversation_id = store.last_conversation_id()
    if model:
        from llmcli import api

        with contextlib.suppress(UnknownModelError):  # an uninstalled model keeps its logs
            model = api.get_model(model).model_id
    rows = store.recent(count or None, query=query, conversation_id=conversation_id,
                        model=model, batch_id=batch_id, after_id=after_id,
                        schema_id=schema_id)
    if conversation_id and not rows and not store.has_conversation(conversation_id):
        raise ConversationError(f"No conversation with id {conversation_id!r}")
    return rows


def _schema_id(schema: str | None, schema_multi: str | None) -> str | None:
    """The id a --schema/--schema-multi filter names: an id as given, else the schema's."""
    import re

    from llmcli import schema as schemas

    if schema and schema_multi:
        raise LogsInputError("Give --schema or --schema-multi, not both")
    given = schema or schema_multi
    if not given:
        return None
    if schema and re.fullmatch(r"[0-9a-f]{32}", schema):
        return schema
    parsed = schemas.parse_schema(given)
    return schemas.schema_id(schemas.multi(parsed) if schema_multi else parsed)


def _data_lines(store: LogStore, rows: list[dict[str, Any]]) -> list[str]:
    """Each reply's parsed JSON, one object per line (a reply that is not JSON is skipped;
    a list schema's items one by one)."""
    from llmcli import schema as schemas

    lines = []
    cache: dict[str, Any] = {}
    for row in rows:
        try:
            value = schemas.parse_reply(str(row["text"] or ""))
        except schemas.SchemaValidationError:
            continue
        schema_id = row.get("schema_id")
        if schema_id and schema_id not in cache:
            cache[schema_id] = store.schema(schema_id) or {}
        items = schemas.unwrap(value, cache.get(schema_id or "", {})) if schema_id else [value]
        lines += [json.dumps(item, ensure_ascii=False) for item in items]
    return lines


def _reply(row: dict[str, Any], extract: bool) -> str:
    text = str(row["text"] or "")
    if extract:
        from llmcli.cli.common import extract_code_block

        block = extract_code_block(text)
        text = block if block is not None else text
    return text[:-1] if text.endswith("\n") else text


@logs.command(name="path")
def path() -> None:
    """Print the path of logs.db."""
    from llmcli.log import logs_path

    click.echo(str(logs_path()))


@logs.command(name="status")
def status() -> None:
    """Whether logging is on, where the database is, and what it holds."""
    from llmcli.log import LogStore, logs_path

    db_path = logs_path()
    click.echo(f"Logging is {'ON' if config.logging_enabled() else 'OFF'}")
    store = LogStore.for_reading(db_path)
    if store is None:
        click.echo(f"No log database yet at {db_path}")
        return
    click.echo(f"Found log database at {db_path}")
    try:
        counts = store.counts()
    finally:
        store.close()
    click.echo(f"Number of conversations logged:\t{counts['conversations']}")
    click.echo(f"Number of responses logged:\t{counts['responses']}")
    click.echo(f"Database file size:\t\t{db_path.stat().st_size:,} bytes")


@logs.command(name="backup")
@click.argument("target", metavar="PATH", type=click.Path(dir_okay=False, path_type=Path))
def backup(target: Path) -> None:
    """Copy the whole log into the new file PATH (safe while others are logging)."""
    from llmcli.log import LogStore, logs_path

    store = LogStore.for_reading()
    if store is None:
        raise LogError(f"No log database yet at {logs_path()}")
    try:
        store.backup(target)
    finally:
        store.close()
    click.echo(f"Backed up {target.stat().st_size:,} bytes to {target}")


@logs.command(name="on")
def on() -> None:
    """Log every exchange (the default)."""
    config.set_logging(True)
    click.echo("Logging is ON")


@logs.command(name="off")
def off() -> None:
    """Stop logging exchanges."""
    config.set_logging(False)
    click.echo("Logging is OFF")
