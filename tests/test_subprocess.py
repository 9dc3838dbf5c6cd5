"""The installed ``llmcli`` script as a real process: a prefilled prompt end to end, a light
start-up (no provider SDK or torch imported for --help and models), and Ctrl-C."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.script import SCRIPT, env_for

HEAVY = ["anthropic", "openai", "mistralai", "torch", "transformers", "tokenizers", "gguf",
         "numpy", "httpx", "rich", "sqlite_utils", "asyncio"]


def test_installed_script_prefilled_prompt(user_dir: Path) -> None:
    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels")
    result = subprocess.run(
        [str(SCRIPT), "-m", "test-emulated", "List states", "--prefill", '["',
         "-o", "style", "preamble", "-o", "reply", 'Ohio"]'],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == '["Ohio"]\n'
    logs = subprocess.run([str(SCRIPT), "logs", "--json"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert json.loads(logs.stdout)[0]["text"] == '["Ohio"]'


def test_bad_input_exit_code_and_one_line(user_dir: Path) -> None:
    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels")
    result = subprocess.run([str(SCRIPT), "-m", "nope", "hi"], env=env, capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: Unknown model: 'nope'")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [["--help"], ["models"], ["plugins"], ["logs", "-n", "1"]])
def test_startup_imports_no_sdk_or_torch(user_dir: Path, args: list[str]) -> None:
    # Every installed plugin is loaded (no allow-list), as for a user.
    env = env_for(user_dir)
    env.pop("LLMCLI_LOAD_PLUGINS", None)
    code = (
        "import sys\n"
        "from llmcli.cli import cli\n"
        f"try:\n    cli({args!r})\n"
        "except SystemExit:\n    pass\n"
        f"heavy = {HEAVY!r}\n"
        "loaded = sorted(h for h in heavy if h in sys.modules)\n"
        "sys.stderr.write('LOADED=' + ','.join(loaded) + '\\n')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=60)
    line = [ln for ln in result.stderr.splitlines() if ln.startswith("LOADED=")][-1]
    loaded = set(filter(None, line[len("LOADED="):].split(",")))
    # asyncio (40 ms): only the async API and serve need it.
    forbidden = {"anthropic", "openai", "mistralai", "torch", "transformers", "tokenizers",
                 "gguf", "asyncio"}
    assert not loaded & forbidden, loaded
    if args == ["--help"]:
        assert not loaded & {"httpx", "rich", "sqlite_utils", "numpy"}, loaded


def test_sigint_logs_partial_and_exits_promptly(user_dir: Path) -> None:
    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [str(SCRIPT), "-m", "test-eats", "count", "--prefill", "Counting:",
         "-o", "reply", " one two three four five six seven eight nine ten" * 5,
         "-o", "chunk_size", "4", "-o", "delay", "0.05"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        # A shell's background job (`.ci/run &`) starts with SIGINT ignored, and ignored
        # signals are inherited: give the CLI the Ctrl-C a terminal user has.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    first = proc.stdout.read(12)  # some text has streamed
    assert first.startswith(b"Counting:")
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - start < 5
    assert proc.returncode == 130
    assert err.decode().strip() == "Interrupted: the partial response was logged."
    conn = sqlite3.connect(user_dir / "logs.db")
    status, text = conn.execute("select status, text from responses").fetchone()
    assert status == "partial"
    assert text.startswith("Counting: one")
    printed = (first + out).decode().rstrip("\n")
    # Everything printed is in the log (the log may hold a chunk the terminal never showed).
    assert text.startswith(printed)
