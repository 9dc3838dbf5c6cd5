"""Schema migrations: functions applied in order, each recorded in ``_llmcli_migrations``
within the same transaction, so a crash never leaves a half-applied step behind."""

from __future__ import annotations

from collections.abc import Callable

from llmcli.log._sqlite_utils import Database

Migration = Callable[[Database], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_initial(db: Database) -> None:
    db.table("conversations").create(
        {"id": str, "name": str, "model": str, "datetime_utc": str}, pk="id"
    )
    db.table("responses").create(
        {
            "id": str,
            "conversation_id": str,
            "model": str,
            "prompt": str,
            "system": str,
            "prefill": str,
            "prefill_support": str,
            "text": str,
            "continuation": str,
            "options_json": str,
            "input_tokens": int,
            "output_tokens": int,
            "stop_reason": str,
            "duration_ms": int,
            "datetime_utc": str,
            "status": str,
            "error": str,
        },
        pk="id",
        foreign_keys=[("conversation_id", "conversations", "id")],
        not_null=["model", "prompt", "text", "status", "datetime_utc"],
    )
    db.table("responses").create_index(["conversation_id"])
    db.table("responses").create_index(["datetime_utc"])
    db.table("responses").enable_fts(["prompt", "text"], create_triggers=True)


@migration
def m002_one_stop_reason_vocabulary(db: Database) -> None:
    """Rows logged before stop reasons had one vocabulary (``llmcli.capabilities.StopReason``)
    kept OpenAI's and Mistral's words, and the local runtime's "stop"."""
    for old, new in (("stop", "end_turn"), ("length", "max_tokens"),
                     ("model_length", "max_tokens"), ("tool_calls", "tool_use"),
                     ("function_call", "tool_use")):
        db.execute("update responses set stop_reason = ? where stop_reason = ?", [new, old])


@migration
def m003_batch_id(db: Database) -> None:
    """``llmcli batch`` tags every exchange it makes with the batch's id (``llmcli logs
    --batch ID``); other rows keep NULL."""
    db.table("responses").add_column("batch_id", str)
    db.table("responses").create_index(["batch_id"])


@migration
def m004_schemas(db: Database) -> None:
    """``--schema``: each JSON Schema is stored once, by its id (a hash of its canonical
    text, :func:`llmcli.schema.schema_id`), and each response names its schema."""
    db.table("schemas").create({"id": str, "content": str}, pk="id")
    db.table("responses").add_column("schema_id", str)
    db.table("responses").create_index(["schema_id"])


@migration
def m005_usage_details(db: Database) -> None:
    """What a backend reports beyond the token counts (``Usage.details``: prompt-cache reads,
    reasoning tokens, the local runtime's prefill mode, passes and timings), as JSON; NULL
    where it reported none."""
    db.table("responses").add_column("usage_json", str)


@migration
def m006_batch_line(db: Database) -> None:
    """``llmcli batch`` tags each exchange with the id of the input line it answers: a run
    resumed after a crash takes a line whose reply was logged complete but never reached
    the output file from the log, instead of paying for it again."""
    db.table("responses").add_column("batch_line", str)


@migration
def m009_attachments(db: Database) -> None:
    """Attachments (``-a``): each content once, by its sha256, with its type and size, and
    its bytes only where the user asked (``--store-attachments``; NULL otherwise); each
    response names its attachments in order, with the path or URL they came from (what
    ``-c`` reads again when the content was not stored)."""
    db.table("attachments").create(
        {"id": str, "type": str, "size": int, "content": bytes}, pk="id",
        not_null=["type", "size"])
    db.table("prompt_attachments").create(
        {"response_id": str, "attachment_id": str, "position": int, "path": str, "url": str},
        pk=("response_id", "position"),
        foreign_keys=[("response_id", "responses", "id"),
                      ("attachment_id", "attachments", "id")])
    db.table("prompt_attachments").create_index(["attachment_id"])


@migration
def m008_tools(db: Database) -> None:
    """Tool calls and tool results (``tools=``, ``-T``, chains): each call a reply made, in
    order, by its response; each result a prompt carried to the model, by the response
    that sent it. Both are searched with the responses (``llmcli logs -q``)."""
    db.table("tool_calls").create(
        {"response_id": str, "position": int, "call_id": str, "name": str,
         "arguments": str},
        pk=("response_id", "position"),
        foreign_keys=[("response_id", "responses", "id")],
        not_null=["name", "arguments"],
    )
    db.table("tool_results").create(
        {"response_id": str, "position": int, "call_id": str, "name": str, "output": str,
         "error": str},
        pk=("response_id", "position"),
        foreign_keys=[("response_id", "responses", "id")],
        not_null=["name", "output"],
    )
    db.table("tool_calls").enable_fts(["name", "arguments"], create_triggers=True)
    db.table("tool_results").enable_fts(["name", "output"], create_triggers=True)


@migration
def m010_reasoning(db: Database) -> None:
    """The model's reasoning (thinking blocks, ``reasoning_content``, a local ``<think>``
    block), kept apart from the answer; NULL where the backend returned none."""
    db.table("responses").add_column("reasoning", str)


@migration
def m011_continues(db: Database) -> None:
    """A reply that continues a cut-off one (``llmcli --continue-reply``, chat's
    ``!continue``, ``response.continue_reply()``) names it; NULL otherwise."""
    db.table("responses").add_column("continues_id", str)
