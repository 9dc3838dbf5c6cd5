"""The SQLite log: open (and migrate) ``logs.db``, write responses, read them back.

The log knows :class:`~llmcli.record.ResponseRecord`, never a model or a Response: it writes
the record a finished response hands it and reads records back, so it imports nothing above
:mod:`llmcli.record`.

Several processes may log at once: WAL mode, a generous busy timeout, and migrations taken
under ``BEGIN IMMEDIATE`` so two first runs cannot both create the tables.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from llmcli import config
from llmcli.errors import ConversationError, LogError
from llmcli.log._sqlite_utils import Database
from llmcli.log.migrations import MIGRATIONS
from llmcli.record import ResponseRecord

MIGRATIONS_TABLE = "_llmcli_migrations"
BUSY_TIMEOUT_MS = 30_000


class Recordable(Protocol):
    """Anything that can hand over its record: a :class:`llmcli.Response`."""

    def record(self) -> ResponseRecord: ...


def logs_path() -> Path:
    return config.user_dir() / "logs.db"


def _one_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@contextmanager
def _db_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.DatabaseError as exc:
        message = _one_line(exc)
        if "not a database" in message or "malformed" in message:
            raise LogError(
                f"The log database {path} is corrupt ({message}); move it aside to start a "
                "new one, or run 'llmcli logs off'"
            ) from exc
        if "readonly" in message or "unable to open" in message:
            raise LogError(
                f"Cannot write the log database {path} ({message}); check permissions "
                "or run 'llmcli logs off'"
            ) from exc
        raise LogError(f"Log database {path}: {message}") from exc


def migrate(db: Database) -> None:
    applied_names = set()
    if db.table(MIGRATIONS_TABLE).exists():
        applied_names = {row["name"] for row in db.table(MIGRATIONS_TABLE).rows}
    known = [name for name, _ in MIGRATIONS]
    unknown = applied_names - set(known)
    if unknown:
        raise LogError(
            f"The log database was written by a newer llmcli (unknown schema step "
            f"{sorted(unknown)[0]}); upgrade llmcli or use another LLMCLI_USER_PATH"
        )
    if applied_names >= set(known):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        db.table(MIGRATIONS_TABLE).create({"name": str, "applied_at": str}, pk="name",
                                     if_not_exists=True)
        done = {row["name"] for row in db.table(MIGRATIONS_TABLE).rows}
        for name, fn in MIGRATIONS:
            if name in done:
                continue
            fn(db)
            db.table(MIGRATIONS_TABLE).insert(
                {"name": name, "applied_at": _now()}
            )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds")


def open_db(path: Path | None = None, *, create: bool = True) -> Database:
    path = path or logs_path()
    if not create and not path.exists():
        raise LogError(f"No log database yet at {path}")
    if create:
        config.ensure_user_dir()
    with _db_errors(path):
        # A response's log is opened when the prompt is prepared and written by whichever
        # thread reads the response; one thread at a time, and sqlite3 serializes anyway.
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
        db = Database(conn, execute_plugins=False)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if db.journal_mode != "wal":
            db.enable_wal()
        migrate(db)
    return db


class LogStore:
    def __init__(self, db: Database | None = None, path: Path | None = None) -> None:
        self.path = path or logs_path()
        self.db = db if db is not None else open_db(self.path)

    def close(self) -> None:
        self.db.close()

    def log_once(self, response: ResponseRecord | Recordable) -> None:
        """Write one response, then close: the logger of a single prompt."""
        try:
            self.log(response)
        finally:
            self.close()

    def log(self, response: ResponseRecord | Recordable) -> None:
        """Write one response (a finished Response is a valid logger: ``log=store.log``)."""
        record = response if isinstance(response, ResponseRecord) else response.record()
        row = record.row()
        # Keys are scrubbed where messages are made; this is the last gate before disk.
        row["error"] = config.scrub(record.error) if record.error else None
        with _db_errors(self.path):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if record.conversation_id is not None:
                    self.db.table("conversations").insert(
                        {
                            "id": record.conversation_id,
                            "name": record.conversation_name or _title(record.prompt),
                            "model": record.model,
                            "datetime_utc": record.datetime_utc,
                        },
                        ignore=True,
                    )
                self.db.table("responses").insert(row)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    # -- reading -------------------------------------------------------------------------

    def recent(
        self,
        count: int | None = 10,
        query: str | None = None,
        conversation_id: str | None = None,
        model: str | None = None,
        batch_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Newest last, like a transcript."""
        where, args = [], []
        if batch_id:
            where.append("responses.batch_id = ?")
            args.append(batch_id)
        if conversation_id:
            where.append("responses.conversation_id = ?")
            args.append(conversation_id)
        if model:
            where.append("responses.model = ?")
            args.append(model)
        if query:
            where.append(
                "responses.rowid in (select rowid from responses_fts "
                "where responses_fts match ?)"
            )
            args.append(self.db.quote_fts(query))
        sql = "select * from responses"
        if where:
            sql += " where " + " and ".join(where)
        sql += " order by datetime_utc desc, rowid desc"
        if count:
            sql += f" limit {int(count)}"
        with _db_errors(self.path):
            rows = list(self.db.query(sql, args))
        return list(reversed(rows))

    def last_conversation_id(self) -> str:
        with _db_errors(self.path):
            rows = list(self.db.query(
                "select conversation_id from responses where conversation_id is not null "
                "order by datetime_utc desc, rowid desc limit 1"
            ))
        if not rows:
            raise ConversationError("No conversation to continue: none has been logged yet")
        return str(rows[0]["conversation_id"])

    def conversation(self, conversation_id: str
                     ) -> tuple[dict[str, Any], list[ResponseRecord]]:
        """The conversation's row and its responses, oldest first (every one, failed ones
        included: :func:`llmcli.record.history` decides what is a turn)."""
        with _db_errors(self.path):
            rows = list(self.db.query("select * from conversations where id = ?",
                                      [conversation_id]))
            if not rows:
                raise ConversationError(f"No conversation with id {conversation_id!r}")
            responses = self.recent(None, conversation_id=conversation_id)
        return rows[0], [ResponseRecord.from_row(row) for row in responses]

    def counts(self) -> dict[str, int]:
        with _db_errors(self.path):
            return {
                "conversations": self.db.table("conversations").count,
                "responses": self.db.table("responses").count,
            }


def _title(prompt: str) -> str:
    line = " ".join(prompt.split())
    return line[:60] + ("…" if len(line) > 60 else "")
