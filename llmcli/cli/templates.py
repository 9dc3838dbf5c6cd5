"""``llmcli templates``: list, show, edit and locate the saved templates. What a template is,
and loading, saving and applying one, are the library's (:mod:`llmcli.templates`)."""

from __future__ import annotations

import json

import click
from click_default_group import DefaultGroup

from llmcli.errors import TemplateError
from llmcli.templates import Template, load_template, template_names, template_path, templates_dir


@click.group(cls=DefaultGroup, default="list", default_if_no_args=True)
def templates() -> None:
    """Manage prompt templates: list (the default), show, edit, path."""


def _summary(template: Template, width: int = 60) -> str:
    parts = [f"{key}: {value}" for key in ("system", "prompt", "prefill")
             if (value := getattr(template, key))]
    text = " ".join(" ".join(parts).split())
    return text if len(text) <= width else text[: width - 1] + "…"


@templates.command(name="list")
def list_templates() -> None:
    """Each saved template and what it holds."""
    names = template_names()
    width = max((len(n) for n in names), default=0)
    for name in names:
        try:
            summary = _summary(load_template(name))
        except TemplateError as exc:
            summary = f"(invalid: {exc})"
        click.echo(f"{name:<{width}} : {summary}")


@templates.command(name="show")
@click.argument("name")
def show_template(name: str) -> None:
    """Print the template NAME."""
    template = load_template(name)
    click.echo(json.dumps(template.to_json(), indent=2, ensure_ascii=False))


@templates.command(name="edit")
@click.argument("name")
def edit_template(name: str) -> None:
    """Edit (or create) the template NAME in $EDITOR; it is checked afterwards."""
    from llmcli.config import ensure_user_dir

    path = template_path(name)
    if not path.exists():
        ensure_user_dir()
        try:
            path.parent.mkdir(exist_ok=True)
            path.write_text('{\n  "prompt": ""\n}\n', encoding="utf-8")
        except OSError as exc:
            raise TemplateError(f"Cannot write {path}: {exc.strerror or exc}") from None
    click.edit(filename=str(path))
    load_template(name)  # one line if the edit left it broken; the file is kept to fix


@templates.command(name="path")
def path() -> None:
    """Print the directory templates are saved in."""
    click.echo(str(templates_dir()))
