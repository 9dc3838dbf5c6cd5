"""``llmcli tools`` and the tool options ``prompt`` and ``chat`` share (``-T``,
``--functions``, ``--td``, ``--ta``, ``--chain-limit``, ``--prefill-final``)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click_default_group import DefaultGroup

from llmcli.cli import render

if TYPE_CHECKING:
    from llmcli.record import ToolCall, ToolResult
    from llmcli.tools import Tool

DEFAULT_CHAIN_LIMIT = 5


@dataclass(frozen=True)
class ToolFlags:
    """The tool options of one command line, as :func:`tool_options` hands them to the
    command (one ``tool_flags`` argument)."""

    tool_names: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    tools_debug: bool = False
    tools_approve: bool = False
    tool_choice: str = "auto"
    chain_limit: int = DEFAULT_CHAIN_LIMIT
    prefill_final: str | None = None

    def tools(self) -> tuple[Tool, ...]:
        """The tools ``-T`` names and ``--functions`` defines."""
        return resolve_tools(self.tool_names, self.functions)

    def chain(self) -> dict[str, Any]:
        """The keywords of :func:`llmcli.api.chain` for these options."""
        return chain_settings(self.tools_debug, self.tools_approve, self.chain_limit,
                              self.prefill_final)


#: No tool options given.
NO_TOOLS = ToolFlags()


def tool_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The tool options, for a command that takes them: the command gets them as one
    :class:`ToolFlags`, its ``tool_flags`` argument."""
    names = [f.name for f in fields(ToolFlags)]

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        flags = ToolFlags(**{name: kwargs.pop(name) for name in names})
        return fn(*args, tool_flags=flags, **kwargs)

    for option in reversed([
        click.option("-T", "--tool", "tool_names", multiple=True, metavar="NAME",
                     help="Offer the model this registered tool (see 'llmcli tools'); "
                          "repeat for several."),
        click.option("--functions", "functions", multiple=True, metavar="FILE_OR_CODE",
                     help="Offer the model the Python functions in this file or code. "
                          "This runs the Python."),
        click.option("--td", "--tools-debug", "tools_debug", is_flag=True,
                     help="Show each tool call and its result (on stderr)."),
        click.option("--ta", "--tools-approve", "tools_approve", is_flag=True,
                     help="Ask before each tool call."),
        click.option("--tool-choice", "tool_choice", default="auto", show_default=True,
                     metavar="CHOICE",
                     help="auto (text or a call), required (a call), none, or a tool's "
                          "name; the first reply only."),
        click.option("--chain-limit", "chain_limit", type=click.IntRange(min=0),
                     default=DEFAULT_CHAIN_LIMIT, show_default=True,
                     help="The most responses one tool chain may make (0: no limit)."),
        click.option("--prefill-final", "prefill_final", metavar="TEXT",
                     help="The prefill of each reply after tool results (--prefill starts "
                          "only the first)."),
    ]):
        command = option(command)
    return command


def resolve_tools(names: tuple[str, ...], functions: tuple[str, ...]) -> tuple[Tool, ...]:
    """The tools ``-T`` names and ``--functions`` defines (a path is read, else the text is
    the code)."""
    from llmcli import api
    from llmcli.tools import as_tools, functions_from_code

    tools: list[Tool] = [api.get_tool(name) for name in names]
    for given in functions:
        path = Path(given)
        if given.endswith(".py") or (len(given) < 4096 and "\n" not in given
                                     and path.is_file()):
            from llmcli.errors import ToolDefinitionError

            try:
                code, origin = path.read_text(encoding="utf-8"), str(path)
            except (OSError, UnicodeDecodeError) as exc:
                raise ToolDefinitionError(f"--functions {given}: cannot read it "
                                          f"({type(exc).__name__})") from None
        else:
            code, origin = given, "--functions"
        tools += functions_from_code(code, origin)
    return as_tools(tools)


def chain_settings(debug: bool, approve: bool, chain_limit: int,
                   prefill_final: str | None) -> dict[str, Any]:
    """The keywords of :func:`llmcli.api.chain` for these options."""
    def before(tool: Tool | None, call: ToolCall) -> bool:
        click.echo(f"Tool call: {render.tool_call_line(call.to_dict())}", err=True)
        try:
            return click.confirm("Run it?", default=False, err=True)
        except click.Abort:  # no answer to read (standard input ended): declined
            click.echo("", err=True)
            return False

    def after(tool: Tool | None, call: ToolCall, result: ToolResult) -> None:
        if not approve:
            click.echo(f"Tool call: {render.tool_call_line(call.to_dict())}", err=True)
        click.echo(f"  {render.tool_result_line(result.to_dict())}", err=True)

    return {"chain_limit": chain_limit or None, "prefill_final": prefill_final,
            "before_call": before if approve else None,
            "after_call": after if debug or approve else None}


@click.group(cls=DefaultGroup, default="list", default_if_no_args=True)
def tools() -> None:
    """List the tools -T can offer a model (the default)."""


@tools.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def list_tools(as_json: bool) -> None:
    """Every registered tool: its name, description and parameters."""
    from llmcli import api

    found = api.get_tools()
    if as_json:
        click.echo(json.dumps([t.to_dict() for t in found], indent=2, ensure_ascii=False))
        return
    for tool in found:
        params = ", ".join(tool.parameters.get("properties", {})) or "no arguments"
        sys.stdout.write(f"{tool.name}({params})\n  {tool.description}\n")
