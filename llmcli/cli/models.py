"""``llmcli models`` — list models and their prefill capability; choose the default."""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING

import click
from click_default_group import DefaultGroup

from llmcli.cli.render import table

if TYPE_CHECKING:
    from llmcli.models import Model


def _describe(model: Model) -> dict[str, object]:
    from llmcli import api

    support = model.get_prefill_support(model.Options())
    return {
        "model_id": model.model_id,
        "aliases": list(model.aliases),
        "prefill_support": support.value,
        "prefill_note": model.prefill_note(),
        "plugin": model.plugin,
        "needs_key": model.needs_key.name if model.needs_key else None,
        "key_env_var": model.needs_key.env_var if model.needs_key else None,
        "key_set": api.key_is_set(model) if model.needs_key else None,
        "options": list(model.Options.model_fields),
    }


@click.group(cls=DefaultGroup, default="list", default_if_no_args=True)
def models() -> None:
    """List models (the default) or choose the default model."""


@models.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.option("--options", "show_options", is_flag=True, help="Show each model's options.")
def list_models(as_json: bool, show_options: bool) -> None:
    """Every model with its prefill capability, aliases and whether its key is set."""
    from llmcli import api

    described = [_describe(m) for m in api.get_models()]
    if as_json:
        click.echo(json.dumps(described, indent=2))
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
        row = [name, prefill, ", ".join(d["aliases"]), key]  # type: ignore[arg-type]
        if show_options:
            row.append(", ".join(d["options"]))  # type: ignore[arg-type]
        rows.append(row)
    headers = ["model", "prefill", "aliases", "key"] + (["options"] if show_options else [])
    table(headers, rows)


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
