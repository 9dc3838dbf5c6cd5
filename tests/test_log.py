"""The SQLite log: schema, migrations, search, and failure modes that must not lose data."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

import llmcli
from llmcli.cli import cli
from llmcli.errors import LogError
from llmcli.log import LogStore, open_db
from llmcli.log.migrations import MIGRATIONS


def test_schema_and_pragmas(test_models, user_dir: Path) -> None:
    llmcli.get_model("test-eats").prompt("x", prefill="P").text()
    db = open_db()
    assert db.journal_mode == "wal"
    assert {"conversations", "responses", "responses_fts", "_llmcli_migrations"} <= set(
        db.table_names())
    columns = set(db["responses"].columns_dict)
    assert {"model", "prompt", "system", "prefill", "prefill_support", "text", "continuation",
            "options_json", "input_tokens", "output_tokens", "stop_reason", "duration_ms",
            "datetime_utc", "status", "conversation_id"} <= columns
    applied = [r["name"] for r in db["_llmcli_migrations"].rows]
    assert applied == [name for name, _ in MIGRATIONS]
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"


def test_migrations_are_idempotent(user_dir: Path) -> None:
    open_db()
    open_db()
    assert open_db()["_llmcli_migrations"].count == len(MIGRATIONS)


def test_options_json_is_stored(test_models) -> None:
    llmcli.get_model("test-eats").prompt("x", max_tokens=7).text()
    row = next(open_db()["responses"].rows)
    assert '"max_tokens": 7' in row["options_json"]


def test_newer_schema_is_refused_and_untouched(test_models, user_dir: Path) -> None:
    llmcli.get_model("test-eats").prompt("x").text()
    db = open_db()
    db["_llmcli_migrations"].insert({"name": "m999_from_the_future", "applied_at": "x"})
    with pytest.raises(LogError, match="newer llmcli"):
        open_db()
    result = CliRunner().invoke(cli, ["-m", "test-eats", "y"])
    assert result.exit_code == 1 and "newer llmcli" in result.stderr
    conn = sqlite3.connect(user_dir / "logs.db")
    assert conn.execute("select count(*) from responses").fetchone()[0] == 1


def test_corrupt_database_is_a_clear_error(test_models, user_dir: Path) -> None:
    user_dir.mkdir(parents=True)
    (user_dir / "logs.db").write_bytes(b"this is not sqlite" * 100)
    result = CliRunner().invoke(cli, ["-m", "test-eats", "y"])
    assert result.exit_code == 1
    assert "corrupt" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert test_models.requests == []  # refused before the request was sent
    assert (user_dir / "logs.db").read_bytes().startswith(b"this is not sqlite")
    # Logging can be turned off to keep working.
    assert CliRunner().invoke(cli, ["-m", "test-eats", "y", "-n"]).exit_code == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_user_dir(test_models, user_dir: Path) -> None:
    user_dir.mkdir(parents=True)
    user_dir.chmod(0o500)
    try:
        result = CliRunner().invoke(cli, ["-m", "test-eats", "y"])
        assert result.exit_code == 1 and "Cannot" in result.stderr
    finally:
        user_dir.chmod(0o700)


def test_read_only_database_file(test_models, user_dir: Path) -> None:
    llmcli.get_model("test-eats").prompt("x").text()
    # A read-only open: what a read-only filesystem or another user's file gives.
    path = user_dir / "logs.db"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    store = LogStore(db=__import__("sqlite_utils").Database(conn), path=path)
    response = llmcli.get_model("test-eats").prompt("y", log=store.log)
    with pytest.raises(LogError, match="Cannot write the log database"):
        response.text()


def test_search_matches_prompt_and_text(test_models) -> None:
    model = llmcli.get_model("test-eats")
    model.prompt("tell me about giraffes", reply="long necks").text()
    model.prompt("tell me about owls", reply="they hoot").text()
    store = LogStore()
    assert [r["prompt"] for r in store.recent(query="giraffes")] == ["tell me about giraffes"]
    assert [r["text"] for r in store.recent(query="hoot")] == ["they hoot"]
    assert store.recent(query='"unbalanced') == []  # user text is quoted, never a syntax error


def test_a_response_prepared_in_one_thread_logs_from_another(test_models, user_dir) -> None:
    # The log is opened when the prompt is prepared (so it fails before the request); the
    # response may be read, and so logged, by another thread (a worker pool, a web app).
    import threading

    response = llmcli.get_model("test-eats").prompt("x", reply="from a thread")
    errors: list[BaseException] = []

    def read() -> None:
        try:
            response.text()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    assert errors == []
    assert [r["text"] for r in LogStore().recent()] == ["from a thread"]


def test_old_stop_reasons_are_migrated_to_the_one_vocabulary(user_dir: Path) -> None:
    db = open_db()
    base = {"model": "m", "prompt": "p", "text": "t", "status": "complete",
            "datetime_utc": "2026-01-01T00:00:00"}
    for n, reason in enumerate(["stop", "length", "end_turn", "stop_sequence", "error"]):
        db["responses"].insert({"id": str(n), "stop_reason": reason, **base})
    # As a log written before m002 was applied.
    db.execute("delete from _llmcli_migrations where name = 'm002_one_stop_reason_vocabulary'")
    db.conn.commit()
    migrated = [r["stop_reason"] for r in open_db()["responses"].rows_where(order_by="id")]
    assert migrated == ["end_turn", "max_tokens", "end_turn", "stop_sequence", "error"]
