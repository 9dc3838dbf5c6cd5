"""A planted key never shows up in the log, in error messages, in --json output or in a
debug traceback; the key file is 0600."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from click.testing import CliRunner

from llmcli.cli import cli

PLANTED = "sk-PLANTED-7f3a9c2e1b"
EXPLICIT = "sk-EXPLICIT-55aa11bb"


def everything_on_disk(user_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in user_dir.rglob("*")
                    if p.is_file() and p.name != "keys.json")


def test_planted_key_never_leaks(test_models, user_dir: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["keys", "set", "testkey"], input=PLANTED + "\n").exit_code == 0
    assert stat.S_IMODE((user_dir / "keys.json").stat().st_mode) == 0o600

    ok = runner.invoke(cli, ["-m", "test-keyed", "hello", "--prefill", "P", "--json"])
    assert ok.exit_code == 0
    assert test_models.requests[-1].key == PLANTED  # it was used...
    assert PLANTED not in ok.output  # ...and not shown

    for env in ({}, {"LLMCLI_DEBUG": "1"}):
        failed = runner.invoke(cli, ["-m", "test-keyed", "hello", "-o", "leak_key", "1"],
                               env=env)
        assert failed.exit_code == 1
        assert "401 invalid key" in failed.stderr
        assert PLANTED not in failed.output and PLANTED not in failed.stderr
        assert "[REDACTED]" in failed.stderr
    assert "Traceback" in failed.stderr  # the debug run did print one, scrubbed

    # An explicit --key is scrubbed as well.
    failed = runner.invoke(cli, ["-m", "test-keyed", "hi", "--key", EXPLICIT,
                                 "-o", "leak_key", "1"], env={"LLMCLI_DEBUG": "1"})
    assert EXPLICIT not in failed.output and EXPLICIT not in failed.stderr

    logs = runner.invoke(cli, ["logs", "--json", "-n", "0"])
    assert PLANTED not in logs.output and EXPLICIT not in logs.output
    assert any(row["status"] == "error" for row in json.loads(logs.stdout))
    disk = everything_on_disk(user_dir)
    assert PLANTED.encode() not in disk and EXPLICIT.encode() not in disk


def test_key_from_environment_is_scrubbed(test_models, monkeypatch) -> None:
    monkeypatch.setenv("TESTKEY_API_KEY", PLANTED)
    failed = CliRunner().invoke(cli, ["-m", "test-keyed", "x", "-o", "leak_key", "1"])
    assert PLANTED not in failed.stderr and "[REDACTED]" in failed.stderr


def test_a_planted_key_never_reaches_a_batch_output(user_dir: Path, tmp_path: Path) -> None:
    import subprocess

    from tests.script import SCRIPT, env_for

    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels")
    subprocess.run([str(SCRIPT), "keys", "set", "testkey", "--value", PLANTED], env=env,
                   check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "leaky", "prompt": "x", "model": "test-keyed",
                                  "options": {"leak_key": True}}) + "\n")
    out = tmp_path / "out.jsonl"
    result = subprocess.run([str(SCRIPT), "batch", str(source), "--output", str(out)],
                            env=env, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    row = json.loads(out.read_text())
    assert row["status"] == "error" and "[REDACTED]" in row["error"]
    assert PLANTED not in out.read_text() and PLANTED not in result.stderr
    assert PLANTED.encode() not in everything_on_disk(user_dir)
