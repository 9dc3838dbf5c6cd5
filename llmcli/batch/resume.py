"""The output file and resuming a run: the batch id, the rows already ok kept (the others
asked again), and how a line ended (:class:`Result`, its row) and a run (:class:`Summary`)."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmcli.batch.input import Line

__all__ = ["Result", "Summary", "new_batch_id", "resume_output"]


def new_batch_id() -> str:
    return uuid.uuid4().hex[:12]


def resume_output(path: Path) -> tuple[set[str], str | None, int]:
    """Prepare ``path`` for a run: keep the rows already ``ok`` (rewritten atomically, so
    rows that will be retried disappear), and return their ids, the batch id they were
    written with, and how many rows were dropped for a retry."""
    if not path.exists():
        return set(), None, 0
    kept: dict[str, str] = {}
    batch_id = None
    dropped = 0
    with path.open(encoding="utf-8") as f:
        for raw in f:
            try:
                row = json.loads(raw)
            except ValueError:
                dropped += bool(raw.strip())  # a row cut off by a crash: run it again
                continue
            if not isinstance(row, dict) or "id" not in row:
                continue
            batch_id = batch_id or row.get("batch_id")
            if row.get("status") == "ok":
                kept[str(row["id"])] = raw if raw.endswith("\n") else raw + "\n"
            else:
                dropped += 1
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept.values()), encoding="utf-8")
    os.replace(tmp, path)
    return set(kept), batch_id, dropped


@dataclass
class Result:
    """How one line ended."""

    line: Line
    status: Literal["ok", "error"]
    model: str | None = None
    prefill: str = ""
    text: str | None = None
    #: The model's reasoning, apart from ``text`` (None where it returned none).
    reasoning: str | None = None
    error: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    stop_reason: str | None = None
    response_id: str | None = None
    duration_ms: int | None = None
    attempts: int = 0
    #: Whether the exchange is in the log (False with -n, or when its write failed).
    logged: bool = False
    #: Why the log could not take it (a full disk), one line; the row keeps the text.
    log_error: str | None = None

    def row(self, batch_id: str) -> dict[str, Any]:
        """The line of the output file (``reasoning`` only where the model returned some)."""
        return {
            "id": self.line.id,
            "line": self.line.number,
            "status": self.status,
            "model": self.model,
            "prefill": self.prefill,
            "text": self.text,
            **({"reasoning": self.reasoning} if self.reasoning is not None else {}),
            "error": self.error,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                      "stop_reason": self.stop_reason},
            "attempts": self.attempts,
            "duration_ms": self.duration_ms,
            "response_id": self.response_id,
            "batch_id": batch_id,
            "logged": self.logged,
            "log_error": self.log_error,
        }


@dataclass
class Summary:
    total: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    output_tokens: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    #: Lines whose exchange could not be logged (their rows keep the text).
    not_logged: int = 0
    #: Lines whose finished reply was taken from the log on resume, not asked again.
    recovered: int = 0

    @property
    def not_run(self) -> int:
        return self.total - self.ok - self.failed

    def line(self) -> str:
        text = f"{self.ok} ok, {self.failed} failed in {self.seconds:.1f} s"
        if self.skipped:
            text += f" ({self.skipped} already ok, skipped)"
        if self.recovered:
            text += f" ({self.recovered} finished before a crash, taken from the log)"
        if self.not_logged:
            text += f"; {self.not_logged} not logged (see log_error in the output)"
        if self.interrupted:
            text += f"; {self.not_run} not finished"
        return text
