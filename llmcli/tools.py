"""Tools (function calling): what a tool is, how a plain function becomes one, and how a call
the model made is answered.

A :class:`Tool` is a name, a description, the JSON Schema of its parameters and the Python
callable that implements it. A plain function becomes one with :meth:`Tool.function`: its
name, the first paragraph of its docstring, and its signature read by pydantic (types,
defaults). :func:`run_call` answers one :class:`~llmcli.record.ToolCall`: the arguments are
validated against the schema (pydantic, the same object that made it), the implementation
runs, and its return value is written as JSON; each way that can fail is one
:class:`~llmcli.errors.ToolError` subclass, with the :class:`~llmcli.record.ToolResult` that
records it attached.

Tool code runs only here, and only for the tools a caller passed: a model naming a tool it was
not given gets :class:`~llmcli.errors.UnknownToolError`, never a lookup elsewhere.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmcli.errors import (
    InvalidSchemaError,
    ToolArgumentsError,
    ToolDefinitionError,
    ToolError,
    ToolExecutionError,
    ToolResultError,
    UnknownToolError,
)
from llmcli.record import ToolCall, ToolResult

__all__ = ["Tool", "as_tools", "builtin_tools", "functions_from_code", "run_call",
           "run_call_async"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Tool:
    """One tool a model may call. ``parameters`` is a JSON Schema of an object (the
    arguments); ``implementation`` is called with them as keyword arguments and returns a
    value that can be written as JSON (a string is sent as it is). A tool without an
    implementation can be offered (``llmcli serve`` passes the client's tools through) but
    not run by a chain."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}})
    implementation: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    #: Whether ``implementation`` validates its own arguments (pydantic's
    #: ``validate_call``, set by :meth:`function`); otherwise jsonschema checks them.
    validates_arguments: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ToolDefinitionError(
                f"Tool name {self.name!r} is not usable: letters, digits, '_' and '-', "
                "at most 64, not starting with a digit")
        if self.parameters.get("type", "object") != "object":
            raise ToolDefinitionError(
                f"Tool {self.name!r}: its parameters must be a JSON Schema of an object")
        # The parameters are checked as --schema and response_format schemas are: a valid
        # schema whose references resolve inside it, with no loop that never ends. A
        # client's tool in ``llmcli serve`` gets a 400, not a grammar or a validator that
        # follows a "$ref" out of the schema.
        from llmcli.schema import check_schema

        try:
            check_schema(dict(self.parameters))
        except InvalidSchemaError as exc:
            raise ToolDefinitionError(f"Tool {self.name!r}: {exc}") from None

    @classmethod
    def function(cls, fn: Callable[..., Any], name: str | None = None) -> Tool:
        """The tool a plain function makes: its name, its docstring's first paragraph, and
        the JSON Schema pydantic reads from its signature (which also validates the
        arguments of each call)."""
        from pydantic import TypeAdapter, validate_call

        if not callable(fn):
            raise ToolDefinitionError(f"{fn!r} is not a function")
        tool_name: str = name or getattr(fn, "__name__", "") or ""
        for parameter in inspect.signature(fn).parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.POSITIONAL_ONLY):
                raise ToolDefinitionError(
                    f"Tool {tool_name!r}: parameter {parameter.name!r} must be passable by "
                    "name")
        try:
            schema = TypeAdapter(fn).json_schema()  # type: ignore[arg-type]
        except Exception as exc:
            raise ToolDefinitionError(
                f"Tool {tool_name!r}: its signature has no JSON Schema "
                f"({str(exc).splitlines()[0]})") from None
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        doc = inspect.getdoc(fn) or ""
        description = doc.split("\n\n")[0].replace("\n", " ").strip()
        return cls(tool_name, description, schema, validate_call(fn), True)

    def to_dict(self) -> dict[str, Any]:
        """The tool as offered to a model (and as ``llmcli tools list --json`` shows it)."""
        return {"name": self.name, "description": self.description,
                "parameters": dict(self.parameters)}

    def as_function(self) -> dict[str, Any]:
        """The tool as the OpenAI Chat Completions wire offers it (Mistral's and chat
        templates' ``tools`` take the same)."""
        return {"type": "function", "function": self.to_dict()}


def as_tools(items: Iterable[Tool | Callable[..., Any]] | None) -> tuple[Tool, ...]:
    """Tools from :class:`Tool` objects and plain functions; two with one name are an
    error."""
    tools: list[Tool] = []
    for item in items or ():
        tools.append(item if isinstance(item, Tool) else Tool.function(item))
    names = [tool.name for tool in tools]
    for name in names:
        if names.count(name) > 1:
            raise ToolDefinitionError(f"Two tools are named {name!r}")
    return tuple(tools)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _fail(error: ToolError, call: ToolCall) -> ToolError:
    error.result = ToolResult(call.id, call.name, f"Error: {error}", error=str(error))
    return error


def run_call(tools: Iterable[Tool], call: ToolCall) -> ToolResult:
    """Answer one call: the result, or a :class:`~llmcli.errors.ToolError` (with
    ``.result``, the result recorded for it) saying in one line why not."""
    tool = _tool_for(tools, call)
    try:
        value = _invoke(tool, call.arguments)
    except ToolError as exc:
        raise _fail(exc, call) from None
    return _result(call, value)


async def run_call_async(tools: Iterable[Tool], call: ToolCall) -> ToolResult:
    """:func:`run_call` on an event loop: an ``async def`` tool is awaited here, a plain
    one runs on a worker thread (it may block)."""
    import asyncio  # here: the CLI's start-up does not pay for it

    tool = _tool_for(tools, call)
    try:
        if is_async(tool):
            value = await _awaited(tool, _invoke(tool, call.arguments))
        else:
            value = await asyncio.to_thread(_invoke, tool, call.arguments)
    except ToolError as exc:
        raise _fail(exc, call) from None
    return _result(call, value)


def is_async(tool: Tool) -> bool:
    """Whether the tool's implementation is an ``async def`` function (its call is a
    coroutine to await)."""
    implementation = tool.implementation
    return any(inspect.iscoroutinefunction(f) for f in
               (implementation, getattr(implementation, "__wrapped__", None),
                getattr(implementation, "raw_function", None)))


def _tool_for(tools: Iterable[Tool], call: ToolCall) -> Tool:
    """The tool ``call`` names, if it can be run with these arguments."""
    by_name = {tool.name: tool for tool in tools}
    tool = by_name.get(call.name)
    if tool is None:
        known = ", ".join(by_name) or "none"
        raise _fail(UnknownToolError(
            f"The model called an unknown tool {call.name!r} (tools given: {known})"), call)
    if tool.implementation is None:
        raise _fail(ToolExecutionError(f"Tool {call.name!r} has no implementation to run"),
                    call)
    if not isinstance(call.arguments, dict):
        raise _fail(ToolArgumentsError(
            f"Tool {call.name!r}: the arguments are not a JSON object"), call)
    return tool


def _result(call: ToolCall, value: Any) -> ToolResult:
    if isinstance(value, str):
        output = value
    else:
        try:
            output = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            raise _fail(ToolResultError(
                f"Tool {call.name!r} returned a {type(value).__name__}, which is not JSON"),
                call) from None
    return ToolResult(call.id, call.name, output)


async def _awaited(tool: Tool, pending: Any) -> Any:
    try:
        return await pending
    except ToolError:
        raise
    except Exception as exc:
        raise ToolExecutionError(f"Tool {tool.name!r} raised {_one_line(exc)}") from None


def _invoke(tool: Tool, arguments: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    assert tool.implementation is not None
    if not tool.validates_arguments:
        _check_schema(tool, arguments)
    try:
        return tool.implementation(**arguments)
    except ValidationError as exc:
        if tool.validates_arguments and exc.title == tool.implementation.__name__:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "arguments"
            raise ToolArgumentsError(
                f"Tool {tool.name!r}: argument {where!r}: {first['msg']}") from None
        raise ToolExecutionError(f"Tool {tool.name!r} raised {_one_line(exc)}") from None
    except TypeError as exc:
        if not tool.validates_arguments and "argument" in str(exc):
            raise ToolArgumentsError(f"Tool {tool.name!r}: {_one_line(exc)}") from None
        raise ToolExecutionError(f"Tool {tool.name!r} raised {_one_line(exc)}") from None
    except Exception as exc:
        raise ToolExecutionError(f"Tool {tool.name!r} raised {_one_line(exc)}") from None


def _check_schema(tool: Tool, arguments: dict[str, Any]) -> None:
    """A :class:`Tool` given a schema by hand: check the arguments with jsonschema."""
    import jsonschema

    try:
        jsonschema.validate(arguments, dict(tool.parameters))
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "arguments"
        raise ToolArgumentsError(
            f"Tool {tool.name!r}: argument {where!r}: {exc.message}") from None


def functions_from_code(code: str, origin: str = "--functions") -> list[Tool]:
    """The tools a piece of Python defines: every function defined at its top level whose
    name does not start with ``_``. **This runs the code**, as ``--functions`` says."""
    namespace: dict[str, Any] = {"__name__": "llmcli_functions"}
    try:
        exec(compile(code, origin, "exec"), namespace)  # noqa: S102 - the user's own code
    except Exception as exc:
        raise ToolDefinitionError(f"{origin}: {_one_line(exc)}") from None
    found = [value for name, value in namespace.items()
             if inspect.isfunction(value) and not name.startswith("_")
             and value.__module__ == "llmcli_functions"]
    if not found:
        raise ToolDefinitionError(f"{origin} defines no function")
    return [Tool.function(fn) for fn in found]


# -- built-in tools ---------------------------------------------------------------------------


def llmcli_version() -> str:
    """The version of llmcli that is running."""
    from importlib.metadata import version

    return version("llmcli")


def llmcli_time() -> dict[str, str]:
    """The current date and time, in UTC and in the local time zone."""
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    local = now.astimezone()
    return {"utc": now.isoformat(timespec="seconds"),
            "local": local.isoformat(timespec="seconds"),
            "timezone": str(local.tzname())}


def builtin_tools() -> list[Tool]:
    """The tools llmcli ships: harmless, for users and tests."""
    return [Tool.function(llmcli_version), Tool.function(llmcli_time)]
