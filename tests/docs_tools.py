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


def _walk(command: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        ctx = click.Context(command, info_name=" ".join(path))
        for name in sorted(command.list_commands(ctx)):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                found += _walk(sub, [*path, name])
    return found


def cli_commands(cli: click.Group) -> list[tuple[list[str], click.Command]]:
    return _walk(cli, ["llmcli"])


def render_cli_help(cli: click.Group) -> str:
    parts = []
    for path, command in cli_commands(cli):
        ctx = click.Context(command, info_name=" ".join(path), terminal_width=88,
                            max_content_width=88)
        title = " ".join(path)
        parts.append(f"### `{title}`\n\n```\n{command.get_help(ctx)}\n```\n")
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
