"""``llmcli plugins`` — what is installed."""

from __future__ import annotations

import json

import click

from llmcli.cli.render import table


@click.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json: bool) -> None:
    """Installed plugins, their versions and models."""
    from llmcli.plugins import load_plugins

    data = [
        {"name": p.name, "version": p.version, "models": [m.model_id for m in p.models],
         "commands": p.register_commands is not None}
        for p in load_plugins()
    ]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    if not data:
        click.echo("No plugins installed.", err=True)
        return
    table(["plugin", "version", "models"],
          [[p.name, p.version or "-", ", ".join(m.model_id for m in p.models)]
           for p in load_plugins()])
