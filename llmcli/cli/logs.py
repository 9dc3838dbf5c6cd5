"""``llmcli logs`` — read the SQLite log; turn logging on or off."""

from __future__ import annotations

import json
from typing import Any

import click
from click_default_group import DefaultGroup

from llmcli import config
from llmcli.cli import render
from llmcli.cli.render import table


@click.group(cls=DefaultGroup, default="list", default_if_no_args=True)
def logs() -> None:
    """Show recent responses (the default), or manage the log."""


@logs.command(name="list")
@click.option("-n", "--count", default=3, show_default=True,
              help="How many responses (0 for all).")
@click.option("-q", "--query", help="Full-text search over prompts and replies.")
@click.option("-m", "--model", help="Only this model's responses.")
@click.option("-c", "--current", is_flag=True, help="Only the most recent conversation.")
@click.option("--cid", "--conversation", "conversation_id", help="Only this conversation.")
@click.option("--batch", "batch_id", help="Only the exchanges of this 'llmcli batch' run.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of rows.")
def list_logs(count: int, query: str | None, model: str | None, current: bool,
              conversation_id: str | None, batch_id: str | None, as_json: bool) -> None:
    """Recent responses, oldest first."""
    from llmcli.log import LogStore, logs_path

    if not logs_path().exists():
        rows: list[dict[str, Any]] = []
    else:
        store = LogStore()
        if current:
            conversation_id = store.last_conversation_id()
        if model:
            from llmcli import api

            model = api.get_model(model).model_id
        rows = store.recent(count or None, query=query, conversation_id=conversation_id,
                            model=model, batch_id=batch_id)
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        click.echo("No responses logged yet." if not query else "No matches.", err=True)
        return
    if render.is_terminal():
        table(
            ["when (UTC)", "model", "status", "prefill", "prompt", "text"],
            [[r["datetime_utc"][:19], r["model"], r["status"], _short(r["prefill"] or "", 12),
              _short(r["prompt"]), _short(r["text"])] for r in rows],
        )
        return
    for r in rows:
        click.echo(f"# {r['datetime_utc']}  {r['model']}  {r['status']}  "
                   f"id={r['id']}  conversation={r['conversation_id']}")
        if r["system"]:
            click.echo(f"\nSystem:\n{r['system']}")
        click.echo(f"\nPrompt:\n{r['prompt']}")
        if r["prefill"]:
            click.echo(f"\nPrefill ({r['prefill_support']}):\n{r['prefill']}")
        click.echo(f"\nResponse:\n{r['text']}\n")


def _short(text: str, width: int = 40) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


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
    click.echo(f"Found log database at {db_path}" if db_path.exists()
               else f"No log database yet at {db_path}")
    if db_path.exists():
        counts = LogStore().counts()
        click.echo(f"Number of conversations logged:\t{counts['conversations']}")
        click.echo(f"Number of responses logged:\t{counts['responses']}")
        click.echo(f"Database file size:\t\t{db_path.stat().st_size:,} bytes")


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
