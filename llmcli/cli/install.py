"""``llmcli install`` / ``llmcli uninstall``: pip, run in llmcli's own environment (as llm's
commands do), so that a plugin lands where llmcli finds it even when llmcli was installed
with pipx or uv tool."""

from __future__ import annotations

import subprocess
import sys

import click


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    try:
        code = subprocess.call(command)
    except OSError as exc:
        raise click.ClickException(f"Cannot run pip with {sys.executable}: {exc}") from None
    if code != 0:
        # pip has printed its own reasons above.
        raise click.ClickException(f"pip {args[0]} failed (exit status {code})")


@click.command(name="install")
@click.argument("packages", nargs=-1)
@click.option("-U", "--upgrade", is_flag=True, help="Upgrade the packages to their latest.")
@click.option("-e", "--editable", metavar="PATH", help="Install a project in editable mode.")
@click.option("--force-reinstall", is_flag=True, help="Reinstall even if already up to date.")
@click.option("--no-cache-dir", is_flag=True, help="Do not use pip's cache.")
@click.option("--pre", is_flag=True, help="Include pre-release and development versions.")
def install(packages: tuple[str, ...], upgrade: bool, editable: str | None,
            force_reinstall: bool, no_cache_dir: bool, pre: bool) -> None:
    """Install packages (plugins) into llmcli's environment with pip.

    \b
    llmcli install llmcli-anthropic
    llmcli install -e path/to/my-plugin
    """
    if not packages and editable is None:
        raise click.ClickException("Name a package to install (or -e PATH)")
    args = ["install", *packages]
    if upgrade:
        args.append("--upgrade")
    if editable is not None:
        args += ["--editable", editable]
    if force_reinstall:
        args.append("--force-reinstall")
    if no_cache_dir:
        args.append("--no-cache-dir")
    if pre:
        args.append("--pre")
    _pip(*args)


@click.command(name="uninstall")
@click.argument("packages", nargs=-1, required=True)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def uninstall(packages: tuple[str, ...], yes: bool) -> None:
    """Uninstall packages (plugins) from llmcli's environment with pip."""
    if any(p.lower().replace("_", "-") == "llmcli" for p in packages):
        raise click.ClickException("Refusing to uninstall llmcli itself with llmcli; use "
                                   f"{sys.executable} -m pip uninstall llmcli")
    _pip("uninstall", *packages, *(["-y"] if yes else []))
