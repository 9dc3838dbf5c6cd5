"""The SQLite log: schema, migrations, search, and failure modes that must not lose data."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import llmcli
from llmcli.cli import cli
from llmcli.errors import LogError, LogWarning
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


def test_usage_details_are_stored_and_shown(test_models) -> None:
    """``Usage.details`` (here a prompt-cache read) go to the log as JSON (``usage_json``,
    NULL for none), which ``llmcli logs --json`` prints with the row; ``--json`` and
    ``to_dict()`` show them under ``usage.details``."""
    import json

    llmcli.get_model("test-eats").prompt("no details").text()
    response = llmcli.get_model("test-eats").prompt("cached details", cached=3)
    response.text()
    assert response.to_dict()["usage"]["details"] == {"cached_tokens": 3}
    rows = {row["prompt"]: row for row in open_db()["responses"].rows}
    assert rows["no details"]["usage_json"] is None
    assert json.loads(rows["cached details"]["usage_json"]) == {"cached_tokens": 3}
    shown = CliRunner().invoke(cli, ["logs", "--json", "-n", "2"])
    assert shown.exit_code == 0, shown.output
    stored = {entry["prompt"]: entry["usage_json"] for entry in json.loads(shown.output)}
    assert stored == {"no details": None, "cached details": '{"cached_tokens": 3}'}


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
    response = llmcli.get_model("test-eats").prompt("y", reply="kept", log=store.log)
    # The reply arrived: a log that cannot take it is a warning, never an error.
    with pytest.warns(LogWarning, match="was not logged: Cannot write the log database"):
        assert response.text() == "kept"
    assert response.status == "complete"
    assert response.log_error is not None
    assert response.log_error.startswith("Cannot write the log database")


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


# -- issue #15: a read-only user directory, and Ctrl-C while a row is written ----------------


@pytest.fixture
def read_only_dir(user_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user directory reads as a read-only file system does to ``access(2)`` (EROFS,
    even for root, who runs these tests and whom permission bits do not stop)."""
    real_access = os.access

    def access(path, mode, *args, **kwargs) -> bool:
        if mode & os.W_OK and str(path).startswith(str(user_dir)):
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def test_reading_a_read_only_log_writes_nothing(test_models, user_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                request: pytest.FixtureRequest) -> None:
    llmcli.get_model("test-eats").prompt("readable", reply="still here").text()
    before = (user_dir / "logs.db").read_bytes()
    request.getfixturevalue("read_only_dir")
    runner = CliRunner()
    result = runner.invoke(cli, ["logs"])
    assert result.exit_code == 0, result.output
    assert "Prompt:\nreadable" in result.stdout and "still here" in result.stdout
    status = runner.invoke(cli, ["logs", "status"])
    assert status.exit_code == 0 and "responses logged:\t1" in status.stdout
    assert runner.invoke(cli, ["logs", "-r"]).stdout == "still here\n"
    assert (user_dir / "logs.db").read_bytes() == before  # not migrated, not written
    store = LogStore.for_reading()
    assert store is not None
    with pytest.raises(LogError, match="Cannot write the log database"):
        store.log(llmcli.get_model("test-eats").prompt("x", log=False))


def test_continuing_with_logging_off_reads_a_read_only_log(test_models, user_dir: Path,
                                                           request: pytest.FixtureRequest
                                                           ) -> None:
    """``-c -n``: the conversation's turns are read from a log that cannot be written, and
    nothing is written to it."""
    llmcli.get_model("test-echoes").prompt("first question", reply="first answer").text()
    before = (user_dir / "logs.db").read_bytes()
    request.getfixturevalue("read_only_dir")
    result = CliRunner().invoke(cli, ["-c", "-n", "second question"])
    assert result.exit_code == 0, result.output
    [sent] = test_models.requests[-1:]
    assert [m.content for m in sent.messages()][:2] == ["first question", "first answer"]
    assert (user_dir / "logs.db").read_bytes() == before


def test_continuing_with_no_log_at_all_says_so(test_models, user_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["-c", "-n", "hello"])
    assert result.exit_code == 1
    assert "none has been logged yet" in result.stderr
    assert not (user_dir / "logs.db").exists()


def test_a_wal_log_without_its_shm_file_is_read_immutable(
        test_models, user_dir: Path, monkeypatch: pytest.MonkeyPatch,
        request: pytest.FixtureRequest) -> None:
    llmcli.get_model("test-eats").prompt("readable", reply="still here").text()
    request.getfixturevalue("read_only_dir")
    from llmcli.log import store

    real_connect = sqlite3.connect

    def connect(database, *args, **kwargs):
        if "mode=ro" in str(database) and "immutable" not in str(database):
            # What a read-only directory gives when the -shm file cannot be created.
            database = (user_dir / "missing" / "logs.db").as_uri() + "?mode=ro"
        return real_connect(database, *args, **kwargs)

    monkeypatch.setattr(store.sqlite3, "connect", connect)
    result = CliRunner().invoke(cli, ["logs", "-r"])
    assert result.stdout == "still here\n", result.output
    assert sorted(p.name for p in user_dir.iterdir()) == ["logs.db"]  # no -wal, no -shm


def test_a_read_only_log_that_needs_migrating_says_so(test_models, user_dir: Path,
                                                      request: pytest.FixtureRequest) -> None:
    llmcli.get_model("test-eats").prompt("x").text()
    db = open_db()
    db.execute("delete from _llmcli_migrations where name = 'm003_batch_id'")
    db.close()
    request.getfixturevalue("read_only_dir")
    result = CliRunner().invoke(cli, ["logs"])
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: The log database {user_dir / 'logs.db'} needs upgrading to this llmcli's "
        "schema (step m003_batch_id) but cannot be written (Permission denied); make it "
        "writable once, or read it with the llmcli that wrote it\n")


def test_writing_to_a_read_only_directory_is_one_plain_line(test_models, user_dir: Path,
                                                            read_only_dir) -> None:
    user_dir.mkdir(parents=True)
    result = CliRunner().invoke(cli, ["-m", "test-eats", "y"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: Cannot write the log database {user_dir}")
    assert len(result.stderr.splitlines()) == 1 and "Errno" not in result.stderr
    assert test_models.requests == []


def _interrupt_after_commit(store: LogStore, monkeypatch: pytest.MonkeyPatch,
                            interrupt) -> None:
    real_execute = store.db.execute

    def execute(sql, *args):
        result = real_execute(sql, *args)
        if sql == "COMMIT":
            interrupt()  # Ctrl-C landing after the commit, inside LogStore.log
        return result

    monkeypatch.setattr(store.db, "execute", execute)


def _raise_keyboard_interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


def test_ctrl_c_after_commit_logs_cleanly(test_models, user_dir: Path) -> None:
    import signal

    store = LogStore()
    response = llmcli.get_model("test-eats").prompt("x", log=False)
    response.text()
    # Python's own Ctrl-C handler, whatever an earlier test in this process left installed.
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.MonkeyPatch.context() as patch:
            _interrupt_after_commit(store, patch, lambda: signal.raise_signal(signal.SIGINT))
            # The interrupt still arrives, once the row is written: not 'cannot rollback'.
            with pytest.raises(KeyboardInterrupt):
                store.log(response)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, saved)
    assert [r["prompt"] for r in LogStore().recent()] == ["x"]
    store.log(llmcli.get_model("test-eats").prompt("y", log=False))  # the store still works
    assert [r["prompt"] for r in LogStore().recent()] == ["x", "y"]


def test_an_interrupt_inside_the_write_leaves_the_database_consistent(
        test_models, user_dir: Path) -> None:
    import threading

    store = LogStore()
    raised: list[BaseException] = []
    response = llmcli.get_model("test-eats").prompt("x", log=False)
    response.text()

    def log() -> None:
        try:
            store.log(response)
        except BaseException as exc:
            raised.append(exc)

    # Off the main thread, where signals cannot be held, the exception lands as it comes.
    with pytest.MonkeyPatch.context() as patch:
        _interrupt_after_commit(store, patch, _raise_keyboard_interrupt)
        thread = threading.Thread(target=log)
        thread.start()
        thread.join()
    assert [type(e) for e in raised] == [KeyboardInterrupt]
    assert not store.db.conn.in_transaction
    # And inside the insert: rolled back, nothing half-written, the store still usable.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(store.db["responses"]), "insert", _raise_keyboard_interrupt)
        with pytest.raises(KeyboardInterrupt):
            store.log(llmcli.get_model("test-eats").prompt("y", log=False))
    assert not store.db.conn.in_transaction
    store.log(llmcli.get_model("test-eats").prompt("z", log=False))
    assert [r["prompt"] for r in LogStore().recent()] == ["x", "z"]
    assert store.db.execute("pragma integrity_check").fetchone()[0] == "ok"


#: Logs rows as fast as it can through one held connection, as serve and batch do.
FAST_WRITER = """
import sys
import llmcli
from llmcli.log import SharedLog

log = SharedLog()
model = llmcli.get_model("test-eats")
for i in range(100_000):
    model.prompt(f"{sys.argv[1]} row {i}", reply="x" * 3000, chunk_size=3000, log=log).text()
    if i == 20:
        print("writing", flush=True)
"""


def test_sigkill_mid_write_loses_no_committed_row_and_leaves_the_log_whole(
        user_dir: Path) -> None:
    import random
    import signal
    import subprocess
    import sys

    from tests.script import env_for

    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels")
    for run in range(3):
        proc = subprocess.Popen([sys.executable, "-c", FAST_WRITER, f"run{run}"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "writing\n"
        time.sleep(random.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)  # wherever it is: mid-transaction, mid-checkpoint
        proc.communicate(timeout=30)
        conn = sqlite3.connect(user_dir / "logs.db")
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        count, texts_ok = conn.execute(
            "select count(*), sum(text = ? and status = 'complete') from responses",
            ["x" * 3000]).fetchone()
        assert count == texts_ok and count > 21 * (run + 1)  # every row whole
        fts = conn.execute("select count(*) from responses_fts where responses_fts match 'row'"
                           ).fetchone()[0]
        assert fts == count  # the index kept in step
        prefixes = {p for (p,) in conn.execute("select substr(prompt, 1, 4) from responses")}
        assert prefixes == {f"run{r}" for r in range(run + 1)}  # earlier runs' rows kept
        conn.close()
    # And the next writer finds a log it can use.
    result = CliRunner().invoke(cli, ["-m", "test-eats", "after the kills"],
                                env={"LLMCLI_LOAD_PLUGINS": "llmcli-testmodels",
                                     "LLMCLI_TEST_MODELS": "1"})
    assert result.exit_code == 0, result.output


def test_a_reply_printed_though_the_log_write_fails_is_a_warning(test_models,
                                                                 user_dir: Path) -> None:
    """From the CLI, the reply is printed and the command succeeds; stderr says, in one
    line, that it was not logged. (A real failed write: a file size limit in a subprocess.)"""
    import resource
    import subprocess

    from tests.script import SCRIPT, env_for

    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels")
    subprocess.run([str(SCRIPT), "-m", "test-eats", "first"], env=env, check=True,
                   capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    limit = (user_dir / "logs.db").stat().st_size + 256 * 1024
    system = user_dir.parent / "system.txt"  # a system prompt too big to log under the limit
    system.write_text("lorem ipsum " * 60_000)

    def too_big_to_log(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), "-m", "test-eats", "--sf", str(system), *args], env=env,
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))

    for args, printed in ((["hello", "--prefill", "P:"], "P:reply to: hello\n"),
                          (["hello", "--no-stream"], "reply to: hello\n")):
        result = too_big_to_log(*args)
        assert result.returncode == 0, result.stderr
        assert result.stdout == printed
        assert result.stderr.startswith("Warning: this reply was not logged: Log database ")
        assert result.stderr.strip().endswith("disk I/O error")
        assert len(result.stderr.strip().splitlines()) == 1
    as_json = too_big_to_log("hello", "--json")
    assert as_json.returncode == 0 and '"text": "reply to: hello"' in as_json.stdout
    assert len(as_json.stderr.strip().splitlines()) == 1
    assert [r["prompt"] for r in LogStore().recent(None)] == ["first"]  # nothing lost


def _record(prompt: str, id: str | None = None) -> Any:
    import uuid

    from llmcli.record import ResponseRecord

    return ResponseRecord(id=id or uuid.uuid4().hex, model="test-eats", prompt=prompt,
                          system=None, prefill="", prefill_support="eats", text="t",
                          status="complete", datetime_utc="2026-01-01T00:00:00.000+00:00")


def test_a_shared_log_groups_waiting_writes_and_one_bad_row_costs_no_other(
        user_dir: Path) -> None:
    import threading

    from llmcli.log import SharedLog

    log = SharedLog(batch_id="b1")
    log(_record("first", id="same-id"))
    errors: dict[str, BaseException] = {}

    def write(prompt: str, id: str | None = None) -> None:
        try:
            log(_record(prompt, id), batch_line=prompt)
        except Exception as exc:
            errors[prompt] = exc

    # Hold the writer back while thirty threads queue their rows, one of them a duplicate
    # id: the next writer takes them all; the duplicate alone fails.
    with log._lock:
        threads = [threading.Thread(target=write, args=(f"row {i}",)) for i in range(29)]
        threads.append(threading.Thread(target=write, args=("dup", "same-id")))
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(log._queue) < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(log._queue) == 30
    for thread in threads:
        thread.join(10)
    assert list(errors) == ["dup"] and isinstance(errors["dup"], LogError)
    log.close()
    rows = LogStore().recent(None)
    assert sorted(r["prompt"] for r in rows) == sorted(["first", *(f"row {i}" for i in
                                                                   range(29))])
    assert {r["batch_id"] for r in rows} == {"b1"}
    assert all(r["batch_line"] == r["prompt"] for r in rows if r["prompt"] != "first")
