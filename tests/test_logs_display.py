"""``llmcli logs`` as a person reads it (issue #15, 3): every response in full, in a terminal
too, and the llm-style switches -s, -r, -u, -x, -t, --id-gt, plus ``logs backup``."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmcli.cli import cli, render


@pytest.fixture
def run(test_models):
    def invoke(*args: str):
        return CliRunner().invoke(cli, list(args))

    return invoke


@pytest.fixture
def logged(run) -> list[dict]:
    """Three exchanges: a long one with a prefill and code, a system prompt, a plain one."""
    long_reply = "\ndef rev(s):\n    return s[::-1]\n```\n" + "and more words " * 20
    run("-m", "test-eats", "About Zorblax the great", "--prefill", "```python",
        "-o", "reply", long_reply)
    run("-m", "test-eats", "second", "-s", "Be brief.", "-o", "reply", "two")
    run("-m", "test-echoes", "third question", "-o", "reply", "three")
    return json.loads(run("logs", "--json", "-n", "0").stdout)


def one_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("terminal", [False, True])
def test_each_response_in_full_with_its_ids(run, logged, monkeypatch, terminal) -> None:
    monkeypatch.setattr(render, "is_terminal", lambda: terminal)
    out = run("logs").stdout
    first = logged[0]
    assert f"id={first['id']}" in out and f"conversation={first['conversation_id']}" in out
    assert first["datetime_utc"] in out and "test-eats" in out and "test-echoes" in out
    assert "Prefill (eats):\n```python\n" in out
    assert first["text"] in out  # the whole text, not a truncated cell
    assert "System:\nBe brief.\n" in out
    assert "┃" not in out and "…" not in out


def test_short(run, logged) -> None:
    out = run("logs", "-s").stdout
    assert out.count("- id: ") == 3
    assert f"- id: {logged[0]['id']}\n" in out
    assert f"  conversation: {logged[0]['conversation_id']}\n" in out
    assert "  prompt: About Zorblax the great\n" in out
    assert '  prefill: "```python"\n' in out
    text_line = next(line for line in out.splitlines() if line.startswith("  text: ")
                     and "rev" in line)
    assert len(text_line) < 80 and text_line.endswith('…"')
    assert "usage" not in out and "  usage: " in run("logs", "-s", "-u").stdout


def test_response_only_the_last_text(run, logged) -> None:
    assert run("logs", "-r").stdout == "three\n"
    assert run("logs", "-r", "-m", "test-eats").stdout == "two\n"
    assert run("logs", "-r", "-q", "zorblax", "-x").stdout == "def rev(s):\n    return s[::-1]\n"


def test_extract_code_blocks(run, logged) -> None:
    # Each reply's first code block, or the whole reply when it has none.
    assert run("logs", "-x").stdout == "def rev(s):\n    return s[::-1]\ntwo\nthree\n"


def test_usage(run, logged) -> None:
    out = run("logs", "-u").stdout
    assert out.count("Token usage: ") == 3 and "stop: end_turn" in out


def test_truncate(run, logged) -> None:
    out = run("logs", "-t").stdout
    response = out.split("Response:\n")[1].split("\n")[0]
    assert len(response) == render.TRUNCATE_WIDTH and response.endswith("…")
    assert logged[0]["text"] not in out


def test_id_gt_is_log_order(run, logged) -> None:
    after_first = json.loads(run("logs", "--json", "--id-gt", logged[0]["id"]).stdout)
    assert [r["id"] for r in after_first] == [logged[1]["id"], logged[2]["id"]]
    assert json.loads(run("logs", "--json", "--id-gt", logged[2]["id"]).stdout) == []
    assert one_error(run("logs", "--id-gt", "nope")) == "Error: No response with id 'nope'"


def test_query_matches_word_prefixes(run, logged) -> None:
    assert [r["prompt"] for r in json.loads(run("logs", "--json", "-q", "Zorb").stdout)] == [
        "About Zorblax the great"]
    assert [r["text"] for r in json.loads(run("logs", "--json", "-q", "thr").stdout)] == [
        "three"]
    # Several words all match; quotes and FTS operators are plain text.
    assert len(json.loads(run("logs", "--json", "-q", "zorb gre").stdout)) == 1
    assert json.loads(run("logs", "--json", "-q", 'zorb "NOT').stdout) == []
    result = run("logs", "-q", "nothinglikethis")
    assert result.exit_code == 0 and result.stderr == "No matches.\n"


def test_unknown_conversation_says_so(run, logged, user_dir: Path) -> None:
    assert one_error(run("logs", "--cid", "nope")) == "Error: No conversation with id 'nope'"
    (user_dir / "logs.db").unlink()
    assert one_error(run("logs", "--cid", "nope")) == "Error: No conversation with id 'nope'"
    result = run("logs")
    assert result.exit_code == 0 and result.stderr == "No responses logged yet.\n"


def test_negative_count_is_refused(run, logged) -> None:
    assert one_error(run("logs", "-n", "-1")) == (
        "Error: -n/--count must be 0 (all) or more, not -1")
    assert len(json.loads(run("logs", "--json", "-n", "0").stdout)) == 3


def test_json_refuses_the_display_switches(run, logged) -> None:
    assert "cannot be combined" in one_error(run("logs", "--json", "-s"))


def test_backup(run, logged, tmp_path: Path) -> None:
    target = tmp_path / "copy.db"
    result = run("logs", "backup", str(target))
    assert result.exit_code == 0 and result.stdout.startswith("Backed up ")
    with sqlite3.connect(target) as conn:
        assert conn.execute("select count(*) from responses").fetchone()[0] == 3
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    assert one_error(run("logs", "backup", str(target))) == (
        f"Error: Cannot write {target}: File exists")
    missing = tmp_path / "no" / "such" / "dir.db"
    assert one_error(run("logs", "backup", str(missing))) == (
        f"Error: Cannot write {missing}: No such file or directory")
