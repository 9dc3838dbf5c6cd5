"""Bad input: a clear one-line error, a non-zero exit, and nothing already logged lost.
The table in docs/errors.md lists these cases; this file is its proof."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmcli.cli import cli


def invoke(*args: str, input: str | bytes | None = None, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), input=input, env=env)


def count_rows(user_dir: Path) -> int:
    conn = sqlite3.connect(user_dir / "logs.db")
    return conn.execute("select count(*) from responses").fetchone()[0]


CASES = [
    ("unknown model", ["-m", "gpt-9000", "hi"], None, "Unknown model"),
    ("unknown model, close match", ["-m", "test-emulate", "hi"], None, "did you mean"),
    ("unknown option", ["-m", "test-eats", "hi", "-o", "temperatur", "1"], None,
     "Unknown option 'temperatur'"),
    ("option of the wrong type", ["-m", "test-eats", "hi", "-o", "max_tokens", "ten"], None,
     "Option 'max_tokens'"),
    ("option out of range", ["-m", "test-eats", "hi", "-o", "max_tokens", "-5"], None,
     "Option 'max_tokens'"),
    ("option given twice", ["-m", "test-eats", "hi", "-o", "max_tokens", "5",
                            "-o", "max_tokens", "6"], None, "given twice"),
    ("prefill on an unsupported model", ["-m", "test-unsupported", "hi", "--prefill", "["],
     None, "does not support prefill"),
    ("empty prompt", ["-m", "test-eats", ""], None, "Empty prompt"),
    ("empty stdin", ["-m", "test-eats"], "", "Empty prompt"),
    ("whitespace stdin", ["-m", "test-eats"], " \n\t\n", "Empty prompt"),
    ("binary stdin", ["-m", "test-eats"], b"\x89PNG\r\n\x1a\n\x00\x00\xff", "not UTF-8"),
    ("--cid that does not exist", ["-m", "test-eats", "hi", "--cid", "nope"], None,
     "No conversation with id 'nope'"),
    ("missing key", ["-m", "test-keyed", "hi"], None, "needs an API key"),
]


@pytest.mark.parametrize(("name", "args", "stdin", "message"), CASES,
                         ids=[c[0] for c in CASES])
def test_bad_input(test_models, user_dir: Path, name, args, stdin, message) -> None:
    assert invoke("-m", "test-eats", "earlier exchange").exit_code == 0
    result = invoke(*args, input=stdin)
    assert result.exit_code == 1
    assert message in result.stderr
    assert result.stderr.startswith("Error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert count_rows(user_dir) == 1  # nothing already logged is lost


def test_continue_with_no_previous_conversation(test_models, user_dir: Path) -> None:
    result = invoke("-c", "hi")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("Error: No conversation to continue: none has been "
                                     "logged yet")


def test_ten_megabyte_prompt_is_handled_and_logged_intact(test_models, user_dir: Path) -> None:
    big = ("lorem ipsum dolor sit amet " * 400_000)[:10_000_000]
    result = invoke("-m", "test-eats", "--json", "-o", "reply", "ok", input=big)
    assert result.exit_code == 0
    assert json.loads(result.stdout)["text"] == "ok"
    conn = sqlite3.connect(user_dir / "logs.db")
    (length,) = conn.execute("select length(prompt) from responses").fetchone()
    assert length == len(big.strip("\n"))


def test_user_dir_that_cannot_be_created(test_models, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = invoke("-m", "test-eats", "hi", env={"LLMCLI_USER_PATH": str(blocker / "sub")})
    assert result.exit_code == 1
    assert "Cannot create the user directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # -n still works: nothing needs to be written.
    ok = invoke("-m", "test-eats", "hi", "-n", env={"LLMCLI_USER_PATH": str(blocker / "sub")})
    assert ok.exit_code == 0


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"testkey": 5}'])
def test_malformed_key_file(test_models, user_dir: Path, content: str) -> None:
    user_dir.mkdir(parents=True)
    (user_dir / "keys.json").write_text(content)
    result = invoke("-m", "test-keyed", "hi")
    assert result.exit_code == 1
    assert "keys file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreadable_key_file(test_models, user_dir: Path) -> None:
    user_dir.mkdir(parents=True)
    (user_dir / "keys.json").mkdir()  # unreadable as a file, even for root
    result = invoke("-m", "test-keyed", "hi")
    assert result.exit_code == 1
    assert "Cannot read the keys file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
