"""One exchange as data, and the one rule that turns exchanges into conversation history.

A :class:`ResponseRecord` is a frozen snapshot of a :class:`llmcli.Response`. The same record
is what ``Response.to_dict()`` (``llmcli --json``) prints and what the log writes and reads
back, so both compute ``continuation`` (and everything else) the same way. Imports nothing
from llmcli but :mod:`llmcli.attachments` (the data a turn may carry): the log and the models
both build on it without importing each other.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from llmcli.attachments import Attachment

__all__ = ["Message", "ResponseRecord", "Status", "ToolCall", "ToolResult", "attachment_info",
           "continuable", "continuation", "history"]

Status = Literal["pending", "complete", "partial", "error"]


@dataclass(frozen=True)
class ToolCall:
    """A call to a tool, as the model asked for it: the provider's call id (made up where the
    wire has none), the tool's name and its arguments (a JSON object). A backend yields it
    (:mod:`llmcli.request`); ``response.tool_calls()`` returns them."""

    id: str
    name: str
    arguments: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}

    def as_function(self, call_id: str | None = None) -> dict[str, Any]:
        """The call as the OpenAI Chat Completions wire writes it (arguments as JSON text),
        with another id where the wire needs one (Mistral's)."""
        return {"id": self.id if call_id is None else call_id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments)}}


@dataclass(frozen=True)
class ToolResult:
    """What a tool returned for one call (``output``: its JSON text), or why it could not
    (``error``: one line; ``output`` is then the error as the model is told it)."""

    call_id: str
    name: str
    output: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "name": self.name, "output": self.output,
                "error": self.error}


@dataclass(frozen=True)
class Message:
    """One turn. An assistant turn may carry the tool calls it made (its ``content`` is the
    text before them, maybe empty); the user turn after it carries their results."""

    role: Literal["user", "assistant"]
    content: str
    #: Images and documents sent with this (user) turn, resolved.
    attachments: tuple[Attachment, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()


def continuation(text: str, prefill: str) -> str:
    """The text after the prefill (the normalizer guarantees the text starts with it)."""
    return text[len(prefill) :]


@dataclass(frozen=True)
class ResponseRecord:
    """One response as the log stores it: the ``responses`` table's columns, ``continuation``
    derived, and the conversation's name (for the ``conversations`` table)."""

    id: str
    model: str
    prompt: str
    system: str | None
    prefill: str
    prefill_support: str
    text: str
    status: Status
    datetime_utc: str
    conversation_id: str | None = None
    options_json: str = "{}"
    input_tokens: int | None = None
    output_tokens: int | None = None
    stop_reason: str | None = None
    duration_ms: int | None = None
    error: str | None = None
    #: The ``llmcli batch`` run this exchange belongs to (None outside a batch).
    batch_id: str | None = None
    #: The id of the batch's input line it answers (as text; None outside a batch).
    batch_line: str | None = None
    #: The id of the reply's JSON Schema (``--schema``; its text is in the ``schemas`` table).
    schema_id: str | None = None
    #: ``Usage.details`` as JSON (None where the backend reported none).
    usage_json: str | None = None
    #: The model's reasoning, apart from the answer (None where the backend returned none).
    reasoning: str | None = None
    #: The id of the cut-off reply this one continues (its text is this one's prefill).
    continues_id: str | None = None
    #: Not a column of ``responses``: the name a new conversation is logged under.
    conversation_name: str | None = None
    #: Not a column of ``responses``: the schema's canonical text, stored once by its id.
    schema_json: str | None = None
    #: Not a column of ``responses``: the prompt's attachments (the ``attachments`` and
    #: ``prompt_attachments`` tables), resolved in memory; read back from the log, with
    #: their content only where it was stored.
    attachments: tuple[Attachment, ...] = ()
    #: Not a column: the log stores the attachments' content too (``--store-attachments``).
    store_attachments: bool = False
    #: Not columns of ``responses`` (the ``tool_calls`` and ``tool_results`` tables): the
    #: calls this reply made, and the results this prompt carried to the model.
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()

    @property
    def continuation(self) -> str:
        return continuation(self.text, self.prefill)

    def row(self) -> dict[str, Any]:
        """The row of the ``responses`` table."""
        row = asdict(self)
        for name in ("conversation_name", "schema_json", "attachments", "store_attachments",
                     "tool_calls", "tool_results"):
            del row[name]
        row["continuation"] = self.continuation
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ResponseRecord:
        """A record read back from the log (``continuation`` is derived, not read)."""
        values = {f.name: row[f.name] for f in fields(cls) if f.name in row}
        values["prefill"] = values.get("prefill") or ""
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """What ``llmcli --json`` prints and ``Response.to_dict()`` returns."""
        return {
            "id": self.id,
            "model": self.model,
            "prompt": self.prompt,
            "system": self.system,
            "prefill": self.prefill,
            "prefill_support": self.prefill_support,
            "text": self.text,
            "continuation": self.continuation,
            "reasoning": self.reasoning,
            "usage": {
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "stop_reason": self.stop_reason,
                "details": json.loads(self.usage_json) if self.usage_json else {},
            },
            "status": self.status,
            "conversation_id": self.conversation_id,
            **({"attachments": [attachment_info(a) for a in self.attachments]}
               if self.attachments else {}),
            "continues_id": self.continues_id,
            "tool_calls": [call.to_dict() for call in self.tool_calls],
            "tool_results": [result.to_dict() for result in self.tool_results],
        }


def history(records: Iterable[ResponseRecord]) -> list[Message]:
    """The turns a continued conversation sends, from its earlier responses in order.

    The one rule, for a conversation held in memory and one loaded from the log alike: a
    response that produced no text (it failed before any arrived) is not a turn, so no
    empty assistant message is ever sent; a partial one counts with what arrived. A
    prefilled turn is its full text, prefill included. A turn that called tools keeps its
    calls (its text may be empty), and the prompt after it carries their results. A reply
    that a later one continues (``continues_id``) is not a turn of its own: the
    continuation holds the whole reply."""
    records = list(records)
    continued = {r.continues_id for r in records if r.continues_id and r.text}
    messages: list[Message] = []
    for record in records:
        if (record.status == "error" or not (record.text or record.tool_calls)
                or record.id in continued):
            continue
        messages.append(Message("user", record.prompt, record.attachments,
                                tool_results=record.tool_results))
        messages.append(Message("assistant", record.text, tool_calls=record.tool_calls))
    return messages


def attachment_info(attachment: Attachment) -> dict[str, Any]:
    """What ``--json`` and the log say of an attachment (never its content)."""
    return {"type": attachment.type, "size": attachment.size, "sha256": attachment.sha256,
            "path": attachment.path, "url": attachment.url}


def continuable(record: ResponseRecord) -> str | None:
    """Why ``record`` cannot be continued (it finished), or None: a reply that stopped on
    its token limit or was cut short (partial) can be."""
    if record.status == "partial" or record.stop_reason == "max_tokens":
        return None
    if record.status == "error" or not record.text:
        return "it has no text (it failed before any arrived)"
    return f"it finished (stop: {record.stop_reason or record.status})"
