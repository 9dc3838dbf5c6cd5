"""Output helpers: rich tables in a terminal, plain text when piped."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any


def is_terminal() -> bool:
    return sys.stdout.isatty()


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table in a terminal; tab-separated lines (with a header) otherwise."""
    if is_terminal():
        from rich.console import Console
        from rich.table import Table

        t = Table(*headers, header_style="bold")
        for row in rows:
            t.add_row(*row)
        Console().print(t)
        return
    sys.stdout.write("\t".join(headers) + "\n")
    for row in rows:
        sys.stdout.write("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in row)
                         + "\n")


# -- log entries (llmcli logs) ---------------------------------------------------------------

TRUNCATE_WIDTH = 100
SHORT_WIDTH = 60


def one_line(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters (an ellipsis marks the cut)."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def usage_line(row: Mapping[str, Any]) -> str:
    """The words of ``llmcli -u``: "2 input, 2 output, stop: end_turn", and how many of the
    input came from a prompt cache where the backend said so ("40 input (39 cached), ...")."""
    cached = None
    if row.get("usage_json"):
        try:
            cached = json.loads(row["usage_json"]).get("cached_tokens")
        except (ValueError, AttributeError):  # a row edited by hand: the counts still show
            cached = None
    given = f"{'?' if row.get('input_tokens') is None else row['input_tokens']} input"
    if isinstance(cached, int) and cached > 0:
        given += f" ({cached} cached)"
    parts = [given,
             f"{'?' if row.get('output_tokens') is None else row['output_tokens']} output"]
    if row.get("stop_reason"):
        parts.append(f"stop: {row['stop_reason']}")
    return ", ".join(parts)


def full_entry(row: Mapping[str, Any], *, usage: bool = False, truncate: bool = False) -> str:
    """One logged response in full, as ``llmcli logs`` prints it (in a terminal or not):
    a header with its time, model, status, id and conversation, then each part."""
    def part(text: str) -> str:
        return one_line(text, TRUNCATE_WIDTH) if truncate else text

    lines = [f"# {row['datetime_utc']}  {row['model']}  {row['status']}  id={row['id']}  "
             f"conversation={row['conversation_id']}"]
    if row.get("system"):
        lines += ["", "System:", part(row["system"])]
    lines += ["", "Prompt:", part(row["prompt"])]
    if row.get("attachments"):
        lines += ["", "Attachments:", *(attachment_line(a) for a in row["attachments"])]
    if row.get("continues_id"):
        # A continuation's prefill is the reply it extends: shown once, joined, below.
        lines += ["", f"Continues {row['continues_id']} (its text, continued: the whole "
                  "reply is below)"]
    elif row.get("prefill"):
        lines += ["", f"Prefill ({row['prefill_support']}):", part(row["prefill"])]
    if row.get("reasoning"):
        lines += ["", "Reasoning:", part(row["reasoning"])]
    lines += _tool_results_lines(row, part)
    lines += ["", "Response:", part(row["text"])]
    lines += _tool_calls_lines(row, part)
    if row.get("error"):
        lines += ["", f"Error ({row['status']}):", row["error"]]
    if usage:
        lines += ["", f"Token usage: {usage_line(row)}"]
    return "\n".join(lines) + "\n"


def attachment_line(info: Mapping[str, Any]) -> str:
    """An attachment as ``llmcli logs`` shows it: type, size, sha256, where it came from
    (its path or URL; standard input's bytes have neither)."""
    where = info.get("path") or info.get("url") or "(standard input)"
    return f"{info['type']}  {info['size']} bytes  sha256:{info['sha256']}  {where}"


def tool_call_line(call: Mapping[str, Any]) -> str:
    """A tool call as ``--td`` and ``llmcli logs`` show it: ``name({"a": 1})  id=...``."""
    arguments = json.dumps(call["arguments"], ensure_ascii=False)
    return f"{call['name']}({arguments})  id={call['id']}"


def tool_result_line(result: Mapping[str, Any]) -> str:
    """A tool result: ``name -> output`` (``name failed: error`` for one that failed)."""
    if result.get("error"):
        return f"{result['name']} failed: {result['error']}"
    return f"{result['name']} -> {result['output']}"


def _tool_calls_lines(row: Mapping[str, Any], part: Any) -> list[str]:
    calls = row.get("tool_calls") or []
    return ["", "Tool calls:", *(part(tool_call_line(c)) for c in calls)] if calls else []


def _tool_results_lines(row: Mapping[str, Any], part: Any) -> list[str]:
    results = row.get("tool_results") or []
    return (["", "Tool results:", *(part(tool_result_line(r)) for r in results)]
            if results else [])


def _yaml_scalar(text: str) -> str:
    """A YAML scalar: plain when that reads the same, else a JSON string (valid YAML)."""
    if text and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_ .,/+()…-]*", text) and \
            not text.endswith(" "):
        return text
    return json.dumps(text, ensure_ascii=False)


def short_entry(row: Mapping[str, Any], *, usage: bool = False) -> str:
    """One logged response as a short YAML item (``llmcli logs -s``)."""
    fields = [("id", row["id"]), ("datetime_utc", row["datetime_utc"]),
              ("model", row["model"]), ("conversation", row["conversation_id"] or "")]
    if row["status"] != "complete":
        fields.append(("status", row["status"]))
    if row.get("system"):
        fields.append(("system", one_line(row["system"], SHORT_WIDTH)))
    fields.append(("prompt", one_line(row["prompt"], SHORT_WIDTH)))
    for info in row.get("attachments") or []:
        where = info.get("path") or info.get("url") or "(standard input)"
        fields.append(("attachment", f"{info['type']}, {info['size']} bytes, {where}"))
    if row.get("continues_id"):
        fields.append(("continues", row["continues_id"]))
    elif row.get("prefill"):
        fields.append(("prefill", row["prefill"]))
    if row.get("reasoning"):
        fields.append(("reasoning", one_line(row["reasoning"], SHORT_WIDTH)))
    fields.append(("text", one_line(row["text"], SHORT_WIDTH)))
    if usage:
        fields.append(("usage", usage_line(row)))
    return "\n".join(("- " if n == 0 else "  ") + f"{key}: {_yaml_scalar(str(value))}"
                     for n, (key, value) in enumerate(fields))


# -- reasoning (the model's thinking, on stderr) ---------------------------------------------

DIM, RESET = "\x1b[2m", "\x1b[0m"


class ReasoningView:
    """Writes a reply's reasoning to stderr as it arrives, before the answer: dimmed on a
    terminal; never in a pipe unless asked (``show`` True: ``--reasoning``), never with
    ``show`` False (``-R``/``--no-reasoning``). The answer's first text closes it with a
    blank line."""

    def __init__(self, show: bool | None, stream: Any = None) -> None:
        from llmcli.progress import is_terminal as stream_is_terminal

        self.stream = stream or sys.stderr
        terminal = stream_is_terminal(self.stream)
        self.enabled = terminal if show is None else show
        self.dim = terminal
        self._open = False

    def write(self, text: str) -> None:
        if not self.enabled or not text:
            return
        if not self._open:
            self._open = True
            if self.dim:
                self.stream.write(DIM)
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        """The reasoning is over (the answer starts, or the reply ended)."""
        if not self._open:
            return
        self._open = False
        self.stream.write((RESET if self.dim else "") + "\n\n")
        self.stream.flush()


class ReplyView:
    """A streamed reply on the terminal: its reasoning through a :class:`ReasoningView`,
    its text to ``out`` less the first ``skip`` characters (a prefill hidden or already
    shown); :meth:`end` closes the reasoning and ends the text's line."""

    def __init__(self, out: Any, show_reasoning: bool | None, skip: int = 0) -> None:
        self.out = out
        self.thoughts = ReasoningView(show_reasoning)
        self.skip = skip
        self.wrote_newline = True

    def write(self, part: Any) -> None:
        """One of ``response.parts()``: reasoning, or text (which closes the reasoning)."""
        if not isinstance(part, str):
            self.thoughts.write(part.text)
            return
        self.thoughts.close()
        if self.skip:
            dropped = min(self.skip, len(part))
            part, self.skip = part[dropped:], self.skip - dropped
        if part:
            self.out.write(part)
            self.out.flush()
            self.wrote_newline = part.endswith("\n")

    def end(self) -> None:
        self.thoughts.close()
        if not self.wrote_newline:
            self.out.write("\n")
        self.out.flush()
