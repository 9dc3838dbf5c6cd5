"""The ``llmcli`` command: a thin shell over :mod:`llmcli.api`.

``prompt`` is the default command, so ``llmcli "question" --prefill '["'`` works. Plugins add
commands through ``register_commands(cli)``; those are collected on demand so that
``llmcli --help`` stays fast and tests can load plugins per test.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any, NoReturn

import click
from click_default_group import DefaultGroup

from llmcli.errors import LLMCLIError

__all__ = ["cli", "main"]


def _debug() -> bool:
    return os.environ.get("LLMCLI_DEBUG", "") not in ("", "0")


HELP_CACHE = ".plugin-commands.json"

#: The built-in commands: where each lives and its one-line help for ``llmcli --help``, so
#: that neither ``--help`` nor one command imports the modules of all the others.
#: tests/test_cli.py checks these lines against the commands' own help.
BUILTINS: dict[str, tuple[str, str]] = {
    "prompt": ("llmcli.cli.prompt", "Send PROMPT (and any piped standard input) to a model."),
    "models": ("llmcli.cli.models", "List models (the default) or choose the default model."),
    "logs": ("llmcli.cli.logs", "Show recent responses (the default), or manage the log."),
    "keys": ("llmcli.cli.keys", "Manage stored API keys (environment variables work too)."),
    "plugins": ("llmcli.cli.plugins_cmd", "Installed plugins, their versions and models."),
    "chat": ("llmcli.cli.chat", "Chat with a model; each turn is logged in one conversation."),
    "serve": ("llmcli.cli.serve",
              "Serve every model over OpenAI- and Anthropic-compatible HTTP."),
    "batch": ("llmcli.cli.batch",
              "Run a file of prompts through a model, concurrently and resumably."),
    "templates": ("llmcli.cli.templates",
                  "Manage prompt templates: list (the default), show, edit, path."),
    "aliases": ("llmcli.cli.aliases",
                "Manage model aliases: list (the default), set, remove, path."),
    "install": ("llmcli.cli.install",
                "Install packages (plugins) into llmcli's environment with pip."),
    "uninstall": ("llmcli.cli.install",
                  "Uninstall packages (plugins) from llmcli's environment with pip."),
    "tools": ("llmcli.cli.tools_cmd", "List the tools -T can offer a model (the default)."),
}


class LazyCommands(MutableMapping[str, click.Command]):
    """A group's ``commands``: built-in commands are imported the first time they are
    looked up; commands added later (plugins) are stored as usual."""

    def __init__(self, lazy: dict[str, str]) -> None:
        self._lazy = dict(lazy)
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded and name in self._lazy:
            command = getattr(importlib.import_module(self._lazy[name]), name)
            self._loaded[name] = command
        return self._loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._lazy.pop(name, None)
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self._lazy and name not in self._loaded:
            raise KeyError(name)
        self._lazy.pop(name, None)
        self._loaded.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._lazy or name in self._loaded

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(self._lazy), **dict.fromkeys(self._loaded)})

    def __len__(self) -> int:
        return len(self._lazy.keys() | self._loaded.keys())


def _fingerprint(files: list[str]) -> list[list[Any]]:
    """What must be unchanged for cached plugin help to hold: the import path directories
    (installing or removing a distribution touches them), the plugin modules' files, and
    the plugin allow-list."""
    entries: list[list[Any]] = [["LLMCLI_LOAD_PLUGINS", os.environ.get("LLMCLI_LOAD_PLUGINS")]]
    for path in [*filter(None, sys.path), *files]:  # "" is the working directory: skip
        try:
            entries.append([path, os.stat(path).st_mtime_ns])
        except OSError:
            entries.append([path, None])
    return entries


def _help_width(max_width: int = 80) -> int | None:
    """The width click would pick for help text, computed without ``shutil`` (click imports
    it just for ``get_terminal_size``, and with it bz2 and lzma: 2 ms of ``--help``). None
    where click's own rule must apply (a forced width, as in click's test runner)."""
    if click.formatting.FORCED_WIDTH is not None:
        return None
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 80
    return max(min(columns, max_width) - 2, 50)


class LLMCLIGroup(DefaultGroup):
    """Default-command group that turns every error into one line on stderr.

    ``llmcli --help`` lists plugin commands from a small cache in the user directory, so it
    does not load every plugin (and pydantic) just to print their one-line help."""

    _help_placeholders: dict[str, click.Command] | None = None
    _builtin_placeholders: dict[str, click.Command] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = LazyCommands({name: module for name, (module, _) in BUILTINS.items()})

    def _cache_path(self) -> str:
        from llmcli.config import user_dir

        return str(user_dir() / HELP_CACHE)

    def _cached_plugin_help(self) -> dict[str, str] | None:
        import json

        try:
            with open(self._cache_path()) as f:
                data = json.load(f)
            if data["fingerprint"] == _fingerprint(data["files"]):
                return dict(data["commands"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def _write_plugin_help(self, commands: dict[str, click.Command]) -> None:
        import json

        from llmcli.plugins import load_plugins

        files = sorted({str(getattr(p.module, "__file__", "") or "") for p in load_plugins()})
        data = {
            "fingerprint": _fingerprint(files),
            "files": files,
            "commands": {name: cmd.short_help or cmd.help or "" for name, cmd in commands.items()},
        }
        try:
            from llmcli.config import ensure_user_dir

            ensure_user_dir()
            with open(self._cache_path(), "w") as f:
                json.dump(data, f)
        except (OSError, LLMCLIError):
            pass  # only a cache: a read-only user directory costs speed, nothing else

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        if parent is None and extra.get("terminal_width") is None:
            extra["terminal_width"] = _help_width()  # subcommands' contexts inherit it
        try:
            return super().make_context(info_name, args, parent, **extra)
        except LLMCLIError as exc:  # e.g. a broken plugin met while printing --help
            _fail(exc)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and ctx.parent is None and not _stdin_is_terminal():
            # Piped input and no arguments is a prompt (empty input fails as one), not a
            # request for help.
            args = [str(self.default_cmd_name)]
        return super().parse_args(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        cached = self._cached_plugin_help()
        if cached is None:
            self._write_plugin_help(self._plugin_commands())
        else:
            self._help_placeholders = {
                name: click.Command(name, help=text) for name, text in cached.items()
            }
        self._builtin_placeholders = {
            name: click.Command(name, help=text) for name, (_, text) in BUILTINS.items()
        }
        try:
            super().format_commands(ctx, formatter)
        finally:
            self._help_placeholders = self._builtin_placeholders = None

    def _plugin_commands(self) -> dict[str, click.Command]:
        if self._help_placeholders is not None:
            return self._help_placeholders
        from llmcli.plugins import load_plugins

        plugins = load_plugins()
        cache = getattr(self, "_plugin_cache", None)
        if cache is not None and cache[0] is plugins:
            return cache[1]
        collector = click.Group()
        for plugin in plugins:
            if plugin.register_commands is not None:
                plugin.register_commands(collector)
        self._plugin_cache = (plugins, dict(collector.commands))
        return self._plugin_cache[1]

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._plugin_commands()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if self._builtin_placeholders and cmd_name in self._builtin_placeholders:
            return self._builtin_placeholders[cmd_name]  # while formatting --help only
        # DefaultGroup answers an unknown name with the default command: ask plugins first.
        if cmd_name not in self.commands and cmd_name in self._plugin_commands():
            return self._plugin_commands()[cmd_name]
        return super().get_command(ctx, cmd_name)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        # DefaultGroup only falls back to the default command for names it does not know;
        # make plugin commands known before it decides.
        if args and args[0] in self._plugin_commands():
            return args[0], self._plugin_commands()[args[0]], args[1:]
        if args and args[0] not in self.commands:
            from llmcli.cli.prompt import refuse_command_word

            refuse_command_word(args, [*self.commands, *self._plugin_commands()])
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        import warnings

        from llmcli.errors import LogWarning

        # A reply that could not be logged is one line from the command that printed it.
        warnings.filterwarnings("ignore", category=LogWarning)
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except LLMCLIError as exc:
            _fail(exc)
        except Exception as exc:  # anything unexpected: still one line unless debugging
            _fail(exc, unexpected=True)


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is None or sys.stdin.isatty()
    except (AttributeError, ValueError):
        return True


def _fail(exc: BaseException, unexpected: bool = False) -> NoReturn:
    from llmcli.config import scrub

    if _debug():
        import traceback

        sys.stderr.write(scrub("".join(traceback.format_exception(exc))))
    message = str(exc).splitlines()[0] if str(exc) else ""
    if unexpected:
        message = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    raise click.ClickException(scrub(message)) from None


@click.group(
    cls=LLMCLIGroup,
    default="prompt",
    default_if_no_args=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="llmcli")
def cli() -> None:
    """Prompt language models from the terminal; with --prefill the reply always begins
    with your text, exactly once.

    \b
    llmcli "JSON list of US states" --prefill '["'
    llmcli models            # every model and its prefill capability
    llmcli logs -n 3         # recent exchanges from the SQLite log
    """



def main() -> None:
    cli()
