"""Reading the input: JSON Lines or CSV into :class:`Line` objects (a line that cannot
run keeps its reason), ids checked, model groups parsed."""

from __future__ import annotations

import csv
import difflib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from llmcli.attachments import Attachment, is_url
from llmcli.errors import BatchInputError

__all__ = ["FIELDS", "Line", "parse_group", "read_input", "refuse_duplicate_ids"]


#: The fields of an input line; others are ignored (HumanEval files carry ``test``, ...).
FIELDS = ("id", "prompt", "prefill", "system", "model", "options", "attachments")


@dataclass
class Line:
    """One input line. ``error`` says why it cannot run (bad JSON, no prompt, ...)."""

    number: int
    id: Any
    prompt: str = ""
    prefill: str | None = None
    system: str | None = None
    model: str | list[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    #: Images and PDFs sent with the prompt: paths made absolute, URLs as given (not read
    #: yet).
    attachments: tuple[Attachment, ...] = ()
    error: str | None = None

    @property
    def key(self) -> str:
        """The id as resume compares it (``1`` and ``"1"`` are the same line)."""
        return str(self.id)


def _attachments(number: int, value: Any, base: str) -> tuple[Attachment, ...] | str:
    """A line's ``attachments``: each a path (relative to ``base``, the input file's
    directory) or an http(s) URL, or ``{"path": ..., "type": ...}`` to name its media type
    (``--at``); the reason they cannot be read otherwise."""
    if not isinstance(value, list):
        return f"line {number}: \"attachments\" must be a list of paths or URLs"
    found = []
    for entry in value:
        item, media_type = entry, None
        if isinstance(entry, dict) and set(entry) <= {"path", "type"}:
            item, media_type = entry.get("path"), entry.get("type")
            if media_type is not None and not isinstance(media_type, str):
                return f"line {number}: an attachment's \"type\" must be a string"
        if not isinstance(item, str) or not item.strip():
            return (f"line {number}: each attachment must be a path or a URL "
                    "(or {\"path\": ..., \"type\": ...})")
        if item == "-":
            return f"line {number}: an attachment cannot be '-' (standard input)"
        media_type = media_type.lower() if media_type else None
        if is_url(item):
            found.append(Attachment(url=item, type=media_type))
        else:
            path = os.path.join(base, os.path.expanduser(item))
            found.append(Attachment(path=os.path.abspath(path), type=media_type))
    return tuple(found)


def _line_from(number: int, data: Any, base: str = ".") -> Line:
    line = Line(number, number)
    if not isinstance(data, dict):
        line.error = f"line {number}: expected a JSON object with a \"prompt\""
        return line
    if "id" in data:
        if isinstance(data["id"], bool) or not isinstance(data["id"], str | int):
            line.error = f"line {number}: \"id\" must be a string or an integer"
            return line
        line.id = data["id"]
    for name in data:
        close = difflib.get_close_matches(str(name), FIELDS, n=1, cutoff=0.75)
        if name not in FIELDS and close:
            line.error = f"line {number}: unknown field {name!r} (did you mean {close[0]!r}?)"
            return line
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        line.error = (f"line {number}: missing \"prompt\"" if prompt is None or prompt == ""
                      else f"line {number}: \"prompt\" must be a non-empty string")
        return line
    line.prompt = prompt
    for name in ("prefill", "system"):
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            line.error = f"line {number}: {name!r} must be a string"
            return line
        setattr(line, name, value)
    model = data.get("model")
    if model is not None and not (isinstance(model, str) or (
            isinstance(model, list) and model and all(isinstance(m, str) for m in model))):
        line.error = f"line {number}: \"model\" must be a model name or a list of them"
        return line
    line.model = model
    options = data.get("options")
    if options is not None and not isinstance(options, dict):
        line.error = f"line {number}: \"options\" must be a JSON object"
        return line
    line.options = dict(options or {})
    if data.get("attachments") is not None:
        attachments = _attachments(number, data["attachments"], base)
        if isinstance(attachments, str):
            line.error = attachments
            return line
        line.attachments = attachments
    return line


def read_input(stream: IO[str], fmt: Literal["jsonl", "csv"] = "jsonl",
               base: str = ".") -> list[Line]:
    """Every line of a JSON Lines file (blank lines skipped), or every row of a CSV file
    with a ``prompt`` column; unreadable lines come back with ``error`` set. Relative
    attachment paths are relative to ``base`` (the input file's directory)."""
    try:
        if fmt == "csv":
            return _read_csv(stream, base)
        lines = []
        for number, raw in enumerate(stream, 1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
            except ValueError as exc:
                reason = getattr(exc, "msg", str(exc))
                lines.append(Line(number, number, error=f"line {number}: invalid JSON "
                                                        f"({reason})"))
                continue
            lines.append(_line_from(number, data, base))
        return lines
    except UnicodeDecodeError:
        raise BatchInputError("The input is not UTF-8 text") from None


def _read_csv(stream: IO[str], base: str) -> list[Line]:
    reader = csv.DictReader(stream)
    if "prompt" not in (reader.fieldnames or []):
        raise BatchInputError("CSV input needs a 'prompt' column (found: "
                              + ", ".join(reader.fieldnames or ["nothing"]) + ")")
    lines = []
    for row in reader:
        number = reader.line_num
        data: dict[str, Any] = {k: v for k, v in row.items()
                                if k in FIELDS and v not in (None, "")}
        if "options" in data:
            try:
                data["options"] = json.loads(data["options"])
            except ValueError:
                lines.append(Line(number, data.get("id", number),
                                  error=f"line {number}: \"options\" is not a JSON object"))
                continue
        if "attachments" in data:
            # A JSON list of paths or URLs, or one path or URL alone.
            cell = data["attachments"]
            try:
                data["attachments"] = json.loads(cell) if cell.lstrip().startswith("[") \
                    else [cell]
            except ValueError:
                lines.append(Line(number, data.get("id", number),
                                  error=f"line {number}: \"attachments\" is not a JSON list"))
                continue
        lines.append(_line_from(number, data, base))
    return lines


def refuse_duplicate_ids(lines: list[Line]) -> None:
    """A BatchInputError, before anything runs, when two readable lines share an id (as
    OpenAI's Batch API refuses duplicate ``custom_id``s): rows are joined on ids and resume
    goes by them, so a duplicate would be skipped or answered twice."""
    where: dict[str, list[Line]] = {}
    for line in lines:
        if line.error is None:
            where.setdefault(line.key, []).append(line)
    duplicated = [found for found in where.values() if len(found) > 1]
    if not duplicated:
        return
    first = duplicated[0]
    numbers = [str(line.number) for line in first]
    message = (f"Duplicate id {first[0].id!r} on lines {', '.join(numbers[:-1])} and "
               f"{numbers[-1]}")
    if len(duplicated) > 1:
        more = len(duplicated) - 1
        message += f" (and {more} more duplicated id{'s' if more > 1 else ''})"
    raise BatchInputError(message + "; ids must be unique (resume goes by them): nothing was run")


def parse_group(spec: str | Iterable[str] | None) -> list[str]:
    """``"a,b"``, ``["a", "b"]`` or repeated ``-m``: the names of one group of endpoints."""
    if spec is None:
        return []
    items = [spec] if isinstance(spec, str) else list(spec)
    return [name.strip() for item in items for name in item.split(",") if name.strip()]
