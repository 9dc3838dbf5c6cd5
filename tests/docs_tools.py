"""Keep the docs true: render CLI help and the log schema into docs/ between markers.

    python tests/docs_tools.py          # rewrite the generated parts of docs/
    (tests/test_docs.py fails when they are out of date)
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

import click

DOCS = Path(__file__).resolve().parent.parent / "docs"
MARKER = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(.*?)(<!-- end generated -->)",
                    re.DOTALL)


def _walk(command: click.Command, path: list[str], parent: click.Context | None
          ) -> list[tuple[list[str], click.Command, click.Context]]:
    # Contexts are nested as at run time so that settings such as help_option_names
    # (-h) are inherited exactly as a user sees them.
    settings = {"terminal_width": 88, "max_content_width": 88, **command.context_settings}
    ctx = click.Context(command, info_name=path[-1], parent=parent, **settings)
    found = [(path, command, ctx)]
    if isinstance(command, click.Group):
        for name in sorted(command.list_commands(ctx)):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                found += _walk(sub, [*path, name], ctx)
    return found


def cli_commands(cli: click.Group) -> list[tuple[list[str], click.Command]]:
    return [(path, command) for path, command, _ in _walk(cli, ["llmcli"], None)]


def render_cli_help(cli: click.Group) -> str:
    parts = []
    for path, command, ctx in _walk(cli, ["llmcli"], None):
        parts.append(f"### `{' '.join(path)}`\n\n```\n{command.get_help(ctx)}\n```\n")
    return "\n".join(parts)


def render_schema() -> str:
    from llmcli.log import open_db

    with tempfile.TemporaryDirectory() as tmp:
        db = open_db(Path(tmp) / "logs.db")
        schema = db.schema
        db.close()
    return f"```sql\n{schema}\n```\n"


def generated(cli: click.Group) -> dict[str, str]:
    return {"cli-help": render_cli_help(cli), "log-schema": render_schema()}


def update(text: str, parts: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        return match.group(1) + parts[name] + match.group(4) if name in parts else match.group(0)

    return MARKER.sub(replace, text)


def core_cli() -> click.Group:
    """The CLI with only the core's commands (plugins document their own)."""
    os.environ["LLMCLI_LOAD_PLUGINS"] = ""
    from llmcli import plugins
    from llmcli.cli import cli

    plugins.reset()
    return cli


if __name__ == "__main__":
    parts = generated(core_cli())
    for doc in DOCS.rglob("*.md"):
        old = doc.read_text()
        new = update(old, parts)
        if new != old:
            doc.write_text(new)
            print(f"updated {doc}", file=sys.stderr)
