"""llmcli install / uninstall: pip in llmcli's own environment. The real round trip runs in a
throwaway virtual environment (this one's packages visible to it) with a wheel built here,
pip told to use no index: no network, and the development environment is left alone."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmcli.cli import cli

PLUGIN = '''\
import click


def register_commands(cli):
    @cli.command(name="tiny-hello")
    def tiny_hello():
        """Say hello from the tiny plugin."""
        click.echo("hello from tiny")
'''


def build_wheel(folder: Path) -> Path:
    """A one-module plugin wheel, written by hand: installing it needs no build backend."""
    files = {
        "llmcli_tiny/__init__.py": PLUGIN,
        "llmcli_tiny-0.1.dist-info/METADATA":
            "Metadata-Version: 2.1\nName: llmcli-tiny\nVersion: 0.1\n",
        "llmcli_tiny-0.1.dist-info/WHEEL":
            "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "llmcli_tiny-0.1.dist-info/entry_points.txt": "[llmcli]\ntiny = llmcli_tiny\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    record.append("llmcli_tiny-0.1.dist-info/RECORD,,")
    files["llmcli_tiny-0.1.dist-info/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / "llmcli_tiny-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A virtual environment without pip that sees this environment's packages (llmcli, pip)
    through a .pth file, so that pip run by its python installs into it."""
    path = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True,
                   timeout=120)
    python = path / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    here = sysconfig.get_paths()["purelib"]
    Path(purelib, "parent.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    return python


def llmcli_in(python: Path, user_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMCLI_", "PIP_"))}
    env.update(LLMCLI_USER_PATH=str(user_dir), LLMCLI_LOAD_PLUGINS="llmcli-tiny",
               PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return subprocess.run([str(python), "-c", "from llmcli.cli import main; main()", *args],
                          env=env, capture_output=True, text=True, timeout=300)


def test_install_and_uninstall_a_plugin(venv: Path, tmp_path: Path, user_dir: Path) -> None:
    wheel = build_wheel(tmp_path)
    assert llmcli_in(venv, user_dir, "tiny-hello").returncode != 0

    result = llmcli_in(venv, user_dir, "install", str(wheel))
    assert result.returncode == 0, result.stderr
    assert (venv.parent / "lib").glob("python*/site-packages/llmcli_tiny/__init__.py")
    result = llmcli_in(venv, user_dir, "plugins", "--json")
    assert [p["name"] for p in json.loads(result.stdout)] == ["llmcli-tiny"]
    assert llmcli_in(venv, user_dir, "tiny-hello").stdout == "hello from tiny\n"
    assert "tiny-hello" in llmcli_in(venv, user_dir, "--help").stdout

    result = llmcli_in(venv, user_dir, "uninstall", "llmcli-tiny", "-y")
    assert result.returncode == 0, result.stderr
    assert json.loads(llmcli_in(venv, user_dir, "plugins", "--json").stdout) == []
    # The development environment never saw it.
    assert subprocess.run([sys.executable, "-c", "import llmcli_tiny"],
                          capture_output=True).returncode != 0


def test_pip_failure_is_one_line_and_non_zero(venv: Path, tmp_path: Path,
                                              user_dir: Path) -> None:
    result = llmcli_in(venv, user_dir, "install", str(tmp_path / "nothing-here.whl"))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "Error: pip install failed (exit status 1)"


def test_flags_reach_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "call", lambda command: calls.append(command) or 0)
    runner = CliRunner()
    result = runner.invoke(cli, ["install", "-U", "--pre", "--no-cache-dir",
                                 "--force-reinstall", "llmcli-x", "-e", "./dev"])
    assert result.exit_code == 0, result.output
    assert calls[-1] == [sys.executable, "-m", "pip", "install", "llmcli-x", "--upgrade",
                         "--editable", "./dev", "--force-reinstall", "--no-cache-dir", "--pre"]
    assert runner.invoke(cli, ["uninstall", "llmcli-x", "-y"]).exit_code == 0
    assert calls[-1] == [sys.executable, "-m", "pip", "uninstall", "llmcli-x", "-y"]


@pytest.mark.parametrize(("args", "message"), [
    (["install"], "Error: Name a package to install (or -e PATH)\n"),
    (["uninstall", "LLMCLI", "-y"], "Error: Refusing to uninstall llmcli itself with llmcli; "),
])
def test_refusals(args: list[str], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "call", lambda command: pytest.fail("pip was run"))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert result.stderr.startswith(message) and len(result.stderr.splitlines()) == 1
