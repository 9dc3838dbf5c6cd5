"""The SQLite log: open (and migrate) ``logs.db``, write responses, read them back.

The log knows :class:`~llmcli.record.ResponseRecord`, never a model or a Response: it writes
the record a finished response hands it and reads records back, so it imports nothing above
:mod:`llmcli.record`.

Several processes may log at once: WAL mode, a generous busy timeout, and migrations taken
under ``BEGIN IMMEDIATE`` so two first runs cannot both create the tables. Reading needs no
write access: a log in a directory that cannot be written is opened read-only
(:meth:`LogStore.for_reading`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from llmcli import config
from llmcli.attachments import Attachment
from llmcli.errors import ConversationError, LogError
from llmcli.log._sqlite_utils import Database
from llmcli.log.migrations import MIGRATIONS
from llmcli.record import ResponseRecord, ToolCall, ToolResult, attachment_info

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


def pending_migrations(db: Database) -> list[str]:
    """The schema steps this database still needs; a LogError if a newer llmcli wrote it."""
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
    return [name for name in known if name not in applied_names]


def migrate(db: Database) -> None:
    if not pending_migrations(db):
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
        _rollback(db)
        raise


def _rollback(db: Database) -> None:
    """Roll back what is still open: an interrupt may land after COMMIT already ended the
    transaction, and a second error here would hide the first."""
    if db.conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C while a row is written, then raise it: the row is logged whole or not at
    all, never left in an open transaction. (sqlite3 does not run Python signal handlers
    while it waits for a lock, so holding them adds no delay.) Only the main thread receives
    signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:  # installed outside Python: leave it alone
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signal.raise_signal(signal.SIGINT)


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds")


def open_db(path: Path | None = None, *, create: bool = True) -> Database:
    path = path or logs_path()
    if not create and not path.exists():
        raise LogError(f"No log database yet at {path}")
    if create:
        config.ensure_user_dir()
        if not writable(path):
            # Said now, plainly: sqlite's own words ("unable to open database file") come
            # later and do not say why.
            raise LogError(f"Cannot write the log database {path}: "
                           f"{_why_not_writable(path)}; pass -n to go on without logging")
        _private(path)
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


def _private(path: Path) -> None:
    """The log readable by its owner only: created 0600 before SQLite opens it (its -wal
    and -shm files take the database's mode), and tightened to 0600 (with a notice) where
    an older llmcli or a umask left it, or them, open to others."""
    with contextlib.suppress(OSError):  # exists, or cannot be made: SQLite says which
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, config.PRIVATE_FILE))
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        config.tighten(path.with_name(name))


def writable(path: Path) -> bool:
    """Whether ``path`` (existing or not) could be written, its -wal and -shm files too."""
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def _why_not_writable(path: Path) -> str:
    with contextlib.suppress(OSError, AttributeError):
        if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            return "Read-only file system"
    return "Permission denied"


def open_read_only(path: Path) -> Database:
    """An existing log, opened without writing anything: no -wal or -shm file is created,
    nothing is migrated. A log that would need migrating first is refused in plain words."""
    uri = path.resolve().as_uri()
    with _db_errors(path):
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True,
                                   timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("select count(*) from sqlite_master").fetchone()
        except sqlite3.OperationalError:
            if conn is not None:
                conn.close()
            # A WAL database whose -shm file is gone cannot be opened "ro" in a directory
            # that cannot be written; "immutable" reads the file as it is (no writer can
            # change it there anyway).
            conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True,
                                   isolation_level=None, check_same_thread=False)
        db = Database(conn, execute_plugins=False)
        pending = pending_migrations(db)
    if pending:
        db.close()
        raise LogError(
            f"The log database {path} needs upgrading to this llmcli's schema (step "
            f"{pending[0]}) but cannot be written ({_why_not_writable(path)}); make it "
            "writable once, or read it with the llmcli that wrote it"
        )
    return db


class _Pending:
    """A record waiting for a :class:`SharedLog` write, and how that write went."""

    def __init__(self, record: ResponseRecord) -> None:
        self.record = record
        self.written = False
        self.error: BaseException | None = None


class SharedLog:
    """One log connection for many threads (``llmcli serve``, ``llmcli batch``), every record
    written with ``tags`` (``batch_id``). Opened at once, so that a log that cannot be
    opened fails before any request.

    Writes are grouped: a thread that finds another writing queues its record, and the
    next writer commits every queued record in one transaction (each commit waits for the
    disk: two hundred responses ending at once are a few commits, not two hundred). Each
    caller returns once its own record is written, or raises what its write raised."""

    def __init__(self, path: Path | None = None, **tags: Any) -> None:
        self._store = LogStore(path=path)
        self.path = self._store.path
        self._tags = tags
        self._lock = threading.Lock()  # held while writing
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []

    def check(self) -> None:
        """Write a row and take it back, now: a log that opens but cannot be written (a
        full disk, a file made read-only) is a LogError here rather than at the first
        reply."""
        db = self._store.db
        with self._lock, _db_errors(self.path):
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(f"insert into {MIGRATIONS_TABLE} (name, applied_at) values (?, ?)",
                           ["_llmcli_write_check", _now()])
                db.execute(f"delete from {MIGRATIONS_TABLE} where name = ?",
                           ["_llmcli_write_check"])
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise

    def __call__(self, response: ResponseRecord | Recordable, **tags: Any) -> None:
        """Write one response with the log's tags and these (``batch_line``)."""
        record = response if isinstance(response, ResponseRecord) else response.record()
        if self._tags or tags:
            record = replace(record, **self._tags, **tags)
        pending = _Pending(record)
        with self._queue_lock:
            self._queue.append(pending)
        with self._lock:
            if not pending.written:  # nobody took it along: write what is queued
                self._write_queued()
        if pending.error is not None:
            raise pending.error

    def _write_queued(self) -> None:
        with self._queue_lock:
            group, self._queue = self._queue, []
        if not group:
            return
        try:
            self._store.log_many([p.record for p in group])
        except Exception:
            if len(group) == 1:
                group[0].error = sys.exc_info()[1]
            else:  # one bad record must not cost the others theirs: each on its own
                for p in group:
                    try:
                        self._store.log_many([p.record])
                    except Exception as exc:
                        p.error = exc
        except BaseException:  # Ctrl-C in the writer: the group waits for the next one
            with self._queue_lock:
                self._queue[:0] = group
            raise
        for p in group:
            p.written = True

    def flush(self) -> None:
        """Write what is queued now (a server stopping: before it says it has stopped)."""
        with self._lock:
            self._write_queued()

    def close(self) -> None:
        """Write what is queued, then close."""
        with self._lock:
            self._write_queued()
            self._store.close()


def fts_prefix_query(query: str) -> str:
    """Every word of ``query`` as a quoted prefix: "Zorb" finds "Zorblax", and user text is
    never FTS syntax."""
    return " ".join('"' + word.replace('"', '""') + '"*' for word in query.split())


class LogStore:
    def __init__(self, db: Database | None = None, path: Path | None = None) -> None:
        self.path = path or logs_path()
        self.db = db if db is not None else open_db(self.path)

    @classmethod
    def for_reading(cls, path: Path | None = None) -> LogStore | None:
        """The log for reading only, or None when there is none yet. Opened (and migrated)
        as usual where it can be written; read-only where it cannot (a read-only user
        directory or file system)."""
        path = path or logs_path()
        if not path.exists():
            return None
        if writable(path):
            return cls(path=path)
        return cls(db=open_read_only(path), path=path)

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
        self.log_many([record])

    def log_many(self, records: list[ResponseRecord]) -> None:
        """Write responses in one transaction: all of them, or (on an error) none."""
        with _db_errors(self.path), _interrupts_held():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for record in records:
                    self._insert(record)
                self.db.execute("COMMIT")
            except BaseException:
                _rollback(self.db)
                raise

    def _insert(self, record: ResponseRecord) -> None:
        row = record.row()
        # Keys are scrubbed where messages are made; this is the last gate before disk.
        row["error"] = config.scrub(record.error) if record.error else None
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
        if record.schema_id is not None and record.schema_json is not None:
            self.db.table("schemas").insert(
                {"id": record.schema_id, "content": record.schema_json}, ignore=True)
        self.db.table("responses").insert(row)
        if record.attachments:
            self._insert_attachments(record)
        self._insert_tools(record)

    def _insert_attachments(self, record: ResponseRecord) -> None:
        """The prompt's attachments: type, size and sha256 always, the bytes only where
        ``store_attachments`` asks (kept once per sha256; a later stored copy fills in the
        bytes of an earlier unstored one)."""
        for position, attachment in enumerate(record.attachments):
            content = attachment.content if record.store_attachments else None
            self.db.execute(
                "insert into attachments (id, type, size, content) values (?, ?, ?, ?) "
                "on conflict(id) do update set content = coalesce(attachments.content, "
                "excluded.content)",
                [attachment.sha256, attachment.type, attachment.size, content])
            self.db.table("prompt_attachments").insert({
                "response_id": record.id, "attachment_id": attachment.sha256,
                "position": position, "path": attachment.path, "url": attachment.url})

    def attachments(self, response_ids: list[str], content: bool = True
                    ) -> dict[str, tuple[Attachment, ...]]:
        """Each response's attachments in order (with their content where it was stored,
        unless ``content`` is False: type, size, sha256, path and URL only)."""
        if not response_ids or not self.db.table("prompt_attachments").exists():
            return {}
        found: dict[str, list[Attachment]] = {}
        marks = ", ".join("?" for _ in response_ids)
        stored = "a.content" if content else "null as content"
        with _db_errors(self.path):
            rows = list(self.db.query(
                f"select p.response_id, p.path, p.url, a.id, a.type, a.size, {stored} "
                "from prompt_attachments p join attachments a on a.id = p.attachment_id "
                f"where p.response_id in ({marks}) order by p.response_id, p.position",
                response_ids))
        for row in rows:
            found.setdefault(row["response_id"], []).append(Attachment(
                path=row["path"], url=row["url"], content=row["content"], type=row["type"],
                size=row["size"], sha256=row["id"]))
        return {key: tuple(value) for key, value in found.items()}

    def _insert_tools(self, record: ResponseRecord) -> None:
        """The calls the reply made and the results its prompt carried (``m008_tools``)."""
        if record.tool_calls:
            self.db.table("tool_calls").insert_all(
                {"response_id": record.id, "position": i, "call_id": call.id,
                 "name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}
                for i, call in enumerate(record.tool_calls))
        if record.tool_results:
            self.db.table("tool_results").insert_all(
                {"response_id": record.id, "position": i, "call_id": result.call_id,
                 "name": result.name, "output": config.scrub(result.output),
                 "error": config.scrub(result.error) if result.error else None}
                for i, result in enumerate(record.tool_results))

    def _attach_tools(self, rows: list[dict[str, Any]]) -> None:
        """Give each response row its ``tool_calls`` and ``tool_results`` (lists of the
        dicts ``ToolCall.to_dict`` / ``ToolResult.to_dict`` make, as ``--json`` shows)."""
        by_id = {row["id"]: row for row in rows}
        for row in rows:
            row["tool_calls"], row["tool_results"] = [], []
        if not by_id or not self.db["tool_calls"].exists():
            return
        marks = ",".join("?" * len(by_id))
        ids = list(by_id)
        for found in self.db.query(
                f"select * from tool_calls where response_id in ({marks}) "
                "order by response_id, position", ids):
            by_id[found["response_id"]]["tool_calls"].append(ToolCall(
                found["call_id"], found["name"], json.loads(found["arguments"])).to_dict())
        for found in self.db.query(
                f"select * from tool_results where response_id in ({marks}) "
                "order by response_id, position", ids):
            by_id[found["response_id"]]["tool_results"].append(ToolResult(
                found["call_id"], found["name"], found["output"], found["error"]).to_dict())

    # -- reading -------------------------------------------------------------------------

    def recent(
        self,
        count: int | None = 10,
        query: str | None = None,
        conversation_id: str | None = None,
        model: str | None = None,
        batch_id: str | None = None,
        after_id: str | None = None,
        schema_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """The latest ``count`` (all when None) responses that match, newest last, like a
        transcript. ``query`` matches words by prefix; ``after_id``: only responses logged
        after that one (ids are random, so "after" is the order they were logged in)."""
        where: list[str] = []
        args: list[Any] = []
        if after_id:
            with _db_errors(self.path):
                found = list(self.db.query(
                    "select rowid, datetime_utc from responses where id = ?", [after_id]))
            if not found:
                raise LogError(f"No response with id {after_id!r}")
            where.append("(responses.datetime_utc > ? or (responses.datetime_utc = ? and "
                         "responses.rowid > ?))")
            args += [found[0]["datetime_utc"], found[0]["datetime_utc"], found[0]["rowid"]]
        equal = {"batch_id": batch_id, "schema_id": schema_id,
                 "conversation_id": conversation_id, "model": model}
        for column, value in equal.items():
            if value:
                where.append(f"responses.{column} = ?")  # a column name of ours, not input
                args.append(value)
        if query and query.split():
            where.append(
                "(responses.rowid in (select rowid from responses_fts "
                "where responses_fts match ?) or responses.id in (select response_id from "
                "tool_calls where rowid in (select rowid from tool_calls_fts where "
                "tool_calls_fts match ?)) or responses.id in (select response_id from "
                "tool_results where rowid in (select rowid from tool_results_fts where "
                "tool_results_fts match ?)))"
            )
            args += [fts_prefix_query(query)] * 3
        sql = "select * from responses"
        if where:
            sql += " where " + " and ".join(where)
        sql += " order by datetime_utc desc, rowid desc"
        if count:
            sql += f" limit {int(count)}"
        with _db_errors(self.path):
            rows = list(self.db.query(sql, args))
            self._attach_tools(rows)
        attached = self.attachments([row["id"] for row in rows], content=False)
        for row in rows:
            # As ``--json`` shows them (``attachment_info``): never their content.
            row["attachments"] = [attachment_info(a) for a in attached.get(row["id"], ())]
        return list(reversed(rows))

    def schema(self, schema_id: str) -> dict[str, Any] | None:
        """A logged JSON Schema by its id."""
        with _db_errors(self.path):
            found = list(self.db.query("select content from schemas where id = ?",
                                       [schema_id]))
        return json.loads(found[0]["content"]) if found else None

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
            attached = self.attachments([r["id"] for r in responses])
        return rows[0], [
            ResponseRecord.from_row({
                **row,
                "tool_calls": tuple(ToolCall(c["id"], c["name"], c["arguments"])
                                    for c in row["tool_calls"]),
                "tool_results": tuple(ToolResult(**r) for r in row["tool_results"]),
                "attachments": attached.get(row["id"], ())})
            for row in responses]

    def has_conversation(self, conversation_id: str) -> bool:
        with _db_errors(self.path):
            return bool(list(self.db.query("select 1 from conversations where id = ?",
                                           [conversation_id])))

    def backup(self, target: Path) -> None:
        """Copy the whole log (WAL content included) into the new file ``target``."""
        try:
            target.open("xb").close()  # refuses an existing file, names what is wrong
        except OSError as exc:
            raise LogError(f"Cannot write {target}: {exc.strerror or exc}") from exc
        try:
            with _db_errors(self.path), contextlib.closing(sqlite3.connect(target)) as dest:
                self.db.conn.backup(dest)
        except BaseException:
            target.unlink(missing_ok=True)
            raise

    def counts(self) -> dict[str, int]:
        with _db_errors(self.path):
            return {
                "conversations": self.db.table("conversations").count,
                "responses": self.db.table("responses").count,
            }


def _title(prompt: str) -> str:
    line = " ".join(prompt.split())
    return line[:60] + ("…" if len(line) > 60 else "")
