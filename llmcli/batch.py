"""``llmcli batch``: a file of prompts through any model, concurrently, resumably.

    read_input (JSON Lines or CSV) → Line → plan: resolve each line's model group, merge its
    options, make the checks that need no network (an error row naming the line otherwise)
    → worker threads: Endpoints picks the least busy model of the group (round-robin on
    ties), the response is read chunk by chunk (a stop flag is checked between chunks),
    retryable failures back off and go to the next endpoint → Result, handed to the caller
    (who writes the output file) as each line ends.

Every exchange goes through :func:`llmcli.api.prompt`, so the prefill contract, option
checks and logging are the single-prompt ones; the log rows carry the batch's id.

Concurrency: ``jobs`` requests at once in all; a model may cap its own share with a
``batch_concurrency`` attribute. The local runtime's models declare 8: its scheduler
gathers the concurrent ``execute`` calls into batches itself, with no change here.
"""

from __future__ import annotations

import csv
import difflib
import functools
import json
import os
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from llmcli import api, config
from llmcli.contract import Model, concurrency_limit
from llmcli.errors import BatchInputError, LLMCLIError, ProviderError
from llmcli.response import Response
from llmcli.spec import PromptSpec

if TYPE_CHECKING:
    from llmcli.log import SharedLog

__all__ = ["FIELDS", "Batch", "Endpoints", "Line", "Result", "Summary",
           "new_batch_id", "parse_group", "read_input", "refuse_duplicate_ids",
           "resume_output", "retryable"]

#: The fields of an input line; others are ignored (HumanEval files carry ``test``, ...).
FIELDS = ("id", "prompt", "prefill", "system", "model", "options")
#: ``-j`` when not given, for models that declare no limit of their own (remote APIs).
DEFAULT_JOBS = 8
#: HTTP statuses worth asking again (after a pause): rate limits, overload, gateway trouble.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
#: Attempts per line: rate limits back off patiently; a server that is down is given up on
#: sooner (its other lines fail over to the group's other endpoints meanwhile).
RATE_LIMIT_ATTEMPTS = 8
FAILURE_ATTEMPTS = 3
MAX_BACKOFF_S = 30.0


# -- input ----------------------------------------------------------------------------------


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
    error: str | None = None

    @property
    def key(self) -> str:
        """The id as resume compares it (``1`` and ``"1"`` are the same line)."""
        return str(self.id)


def _line_from(number: int, data: Any) -> Line:
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
    return line


def read_input(stream: IO[str], fmt: Literal["jsonl", "csv"] = "jsonl") -> list[Line]:
    """Every line of a JSON Lines file (blank lines skipped), or every row of a CSV file
    with a ``prompt`` column; unreadable lines come back with ``error`` set."""
    try:
        if fmt == "csv":
            return _read_csv(stream)
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
            lines.append(_line_from(number, data))
        return lines
    except UnicodeDecodeError:
        raise BatchInputError("The input is not UTF-8 text") from None


def _read_csv(stream: IO[str]) -> list[Line]:
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
        lines.append(_line_from(number, data))
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


# -- output and resume ----------------------------------------------------------------------


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
        """The line of the output file."""
        return {
            "id": self.line.id,
            "line": self.line.number,
            "status": self.status,
            "model": self.model,
            "prefill": self.prefill,
            "text": self.text,
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


# -- endpoints: which model answers, how many at once, back-off -----------------------------


def default_jobs(models: Iterable[Model]) -> int:
    """``-j`` when not given: the most any model of the batch takes, 8 for remote ones."""
    return max((concurrency_limit(m) or DEFAULT_JOBS for m in models), default=1)


class Endpoints:
    """Hands out the model (endpoint) of a group that should take the next request: one
    with room under its limit and not paused, the least busy first, round-robin on ties.
    A rate limit or a failure pauses an endpoint for everyone (that is the back-off)."""

    def __init__(self, jobs: int) -> None:
        self._jobs = jobs
        self._cond = threading.Condition()
        self._busy: dict[int, int] = {}
        self._paused_until: dict[int, float] = {}
        self._fails: dict[int, int] = {}
        self._next: dict[tuple[int, ...], int] = {}
        #: Requests sent to each endpoint (by model object id), for the summary and tests.
        self.sent: dict[int, int] = {}

    def _limit(self, model: Model) -> int:
        return min(self._jobs, concurrency_limit(model) or self._jobs)

    def acquire(self, group: list[Model], stop: threading.Event) -> Model | None:
        key = tuple(id(m) for m in group)
        with self._cond:
            while not stop.is_set():
                now = time.monotonic()
                start = self._next.get(key, 0)
                order = group[start:] + group[:start]
                ready = [m for m in order if self._busy.get(id(m), 0) < self._limit(m)
                         and self._paused_until.get(id(m), 0.0) <= now]
                if ready:
                    chosen = min(ready, key=lambda m: self._busy.get(id(m), 0))
                    self._next[key] = (group.index(chosen) + 1) % len(group)
                    self._busy[id(chosen)] = self._busy.get(id(chosen), 0) + 1
                    self.sent[id(chosen)] = self.sent.get(id(chosen), 0) + 1
                    return chosen
                waits = [until - now for m in group
                         if (until := self._paused_until.get(id(m), 0.0)) > now]
                self._cond.wait(min([0.2, *waits]))
        return None

    def release(self, model: Model) -> None:
        with self._cond:
            self._busy[id(model)] -= 1
            self._cond.notify_all()

    def failed(self, model: Model, told: float | None = None) -> float:
        """A retryable failure at ``model``: pause it for everyone, for what the server
        said (``Retry-After``) or for a back-off that doubles with each failure in a row
        (so a dead endpoint is tried less and less often). Returns the pause."""
        with self._cond:
            fails = self._fails[id(model)] = self._fails.get(id(model), 0) + 1
            backoff = min(MAX_BACKOFF_S, 0.5 * 2 ** (fails - 1)) * random.uniform(0.8, 1.2)
            seconds = min(MAX_BACKOFF_S, told) if told is not None else backoff
            until = time.monotonic() + seconds
            self._paused_until[id(model)] = max(self._paused_until.get(id(model), 0.0), until)
            self._cond.notify_all()
            return seconds

    def succeeded(self, model: Model) -> None:
        with self._cond:
            self._fails[id(model)] = 0


def _causes(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in found and len(found) < 8:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def _retry_after(exc: BaseException) -> float | None:
    """The server's ``Retry-After`` (or ``retry-after-ms``), when an SDK error in the chain
    still holds the HTTP response (no SDK is imported: any ``.response.headers`` will do)."""
    for cause in _causes(exc):
        headers = getattr(getattr(cause, "response", None), "headers", None)
        if headers is None:
            continue
        try:
            if headers.get("retry-after-ms") is not None:
                return float(headers["retry-after-ms"]) / 1000
            if headers.get("retry-after") is not None:
                return float(headers["retry-after"])
        except (TypeError, ValueError):
            return None
    return None


def retryable(exc: BaseException, attempt: int) -> tuple[bool, float | None]:
    """Whether to ask again after ``exc`` (this line's ``attempt``-th failure), and the
    server's ``Retry-After`` when it sent one. Asking again cannot help after a bad option,
    a 400 or a missing key; it can after a rate limit, an overload or a transport failure."""
    provider = [c for c in _causes(exc) if isinstance(c, ProviderError)]
    if not provider:
        return False, None
    statuses = {c.status for c in provider if c.status is not None}
    rate_limited = 429 in statuses
    # A provider error with no HTTP status is the transport: refused, reset, timed out.
    transient = rate_limited or bool(statuses & RETRY_STATUSES) or not statuses
    limit = RATE_LIMIT_ATTEMPTS if rate_limited else FAILURE_ATTEMPTS
    if not transient or attempt >= limit:
        return False, None
    return True, _retry_after(exc) if rate_limited else None


# -- running --------------------------------------------------------------------------------


@dataclass
class _Planned:
    line: Line
    group: list[Model]
    options: dict[int, dict[str, Any]]  # per endpoint (by model object id)


class Batch:
    """One run over ``lines``. ``options_for(model)`` gives the command's options for a
    model (the CLI parses ``-o`` pairs per model); a line's own options override them."""

    def __init__(
        self,
        lines: list[Line],
        *,
        model: str | list[str] | None = None,
        system: str | None = None,
        prefill: str | None = None,
        options_for: Callable[[Model], Mapping[str, Any]] = lambda model: {},
        jobs: int | None = None,
        done: set[str] | None = None,
        batch_id: str | None = None,
        log: bool = True,
        key: str | None = None,
    ) -> None:
        self.lines = lines
        self.default_group = parse_group(model)
        self.system = system
        self.prefill = prefill
        self.options_for = options_for
        self.done = done or set()
        self.batch_id = batch_id or new_batch_id()
        self.key = key
        self.stop = threading.Event()
        self._models: dict[str, Model] = {}
        #: Rows known before anything runs: lines that cannot run, and (on resume) lines
        #: whose reply the log has although the output file does not.
        self._errors: list[Result] = []
        self._planned: list[_Planned] = []
        self.skipped = 0
        self.recovered = 0
        refuse_duplicate_ids(lines)
        logging = log and config.logging_enabled()
        self._plan(self._finished_in_log() if logging and batch_id is not None else {})
        used = {id(m): m for p in self._planned for m in p.group}
        self.jobs = max(1, jobs) if jobs else default_jobs(used.values())
        self.endpoints = Endpoints(self.jobs)
        self._logger: SharedLog | None = None
        if log and config.logging_enabled():
            from llmcli.log import SharedLog

            # Opened now: a log that cannot be opened fails before anything is sent.
            self._logger = SharedLog(batch_id=self.batch_id)
        self._in_flight: dict[str, Response] = {}
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        """Lines this run will report on (those already done are not counted)."""
        return len(self._errors) + len(self._planned)

    # -- planning: every check that needs no network, per line ------------------------------

    def _model(self, name: str | None) -> Model:
        cache_key = name or ""
        if cache_key not in self._models:
            self._models[cache_key] = api.get_model(name)
        return self._models[cache_key]

    def _finished_in_log(self) -> dict[str, list[dict[str, Any]]]:
        """This batch's logged exchanges by input line id, oldest first (a resume)."""
        from llmcli.log import LogStore

        store = LogStore.for_reading()
        if store is None:
            return {}
        try:
            rows = store.recent(None, batch_id=self.batch_id)
        finally:
            store.close()
        found: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            if row.get("batch_line") is not None:
                found.setdefault(row["batch_line"], []).append(row)
        return found

    def _from_log(self, line: Line, rows: list[dict[str, Any]]) -> Result | None:
        """The line's reply from the log: an exchange that completed (a crash came before
        its row reached the output file), asked with the line's prompt."""
        complete = [r for r in rows if r["status"] == "complete" and r["prompt"] == line.prompt]
        if not complete:
            return None
        row = complete[-1]
        return Result(line, "ok", model=row["model"], prefill=row["prefill"] or "",
                      text=row["text"], input_tokens=row["input_tokens"],
                      output_tokens=row["output_tokens"], stop_reason=row["stop_reason"],
                      response_id=row["id"], duration_ms=row["duration_ms"],
                      attempts=len(rows), logged=True)

    def _plan(self, logged: dict[str, list[dict[str, Any]]]) -> None:
        for line in self.lines:
            if line.key in self.done and line.error is None:
                self.skipped += 1
                continue
            if line.error is not None:
                self._errors.append(Result(line, "error", error=line.error,
                                           prefill=line.prefill or self.prefill or ""))
                continue
            recovered = self._from_log(line, logged.get(line.key, []))
            if recovered is not None:
                self._errors.append(recovered)  # reported first; nothing is sent again
                self.recovered += 1
                continue
            try:
                self._planned.append(self._plan_line(line))
            except LLMCLIError as exc:
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self._errors.append(Result(line, "error", error=f"line {line.number}: "
                                           f"{message}", prefill=line.prefill or self.prefill
                                           or ""))

    def _plan_line(self, line: Line) -> _Planned:
        names: list[str | None] = [
            *(parse_group(line.model) if line.model is not None else self.default_group)]
        group: list[Model] = []
        for name in names or [None]:
            model = self._model(name)
            if model not in group:
                group.append(model)
        options: dict[int, dict[str, Any]] = {}
        for model in group:
            merged = {**self.options_for(model), **line.options}
            # Options, prefill capability and key: the same checks as a single prompt,
            # without sending anything.
            api.prompt(model, self._spec(line).replace(log=False, options=merged))
            options[id(model)] = merged
        return _Planned(line, group, options)

    def _spec(self, line: Line) -> PromptSpec:
        """The line's prompt spec: its fields over the batch's defaults."""
        return PromptSpec(line.prompt, system=self._system(line), prefill=self._prefill(line),
                          key=self.key)

    def _system(self, line: Line) -> str | None:
        return line.system if line.system is not None else self.system

    def _prefill(self, line: Line) -> str | None:
        return line.prefill if line.prefill is not None else self.prefill

    # -- running ----------------------------------------------------------------------------

    def run(self, on_result: Callable[[Result], None],
            on_start: Callable[[Result], None] | None = None) -> Summary:
        """Run every planned line; ``on_result`` is called in this thread as each ends.
        ``stop.set()`` (the CLI's SIGINT and SIGTERM handlers; a signal handler that only
        sets a flag cannot cut a row in half) or KeyboardInterrupt stops the run: what
        completed is reported, responses in flight are logged as partial, and nothing else
        starts."""
        summary = Summary(total=self.total, skipped=self.skipped, recovered=self.recovered)
        started = time.monotonic()
        results: queue.Queue[Result] = queue.Queue()
        todo: queue.Queue[_Planned] = queue.Queue()
        for planned in self._planned:
            todo.put(planned)
        workers = [threading.Thread(target=self._work, args=(todo, results), daemon=True,
                                    name=f"llmcli-batch-{i}")
                   for i in range(min(self.jobs, len(self._planned)))]

        def report(result: Result) -> None:
            if result.status == "ok":
                summary.ok += 1
            else:
                summary.failed += 1
            summary.output_tokens += result.output_tokens or 0
            summary.not_logged += result.log_error is not None
            on_result(result)

        try:
            for result in self._errors:
                report(result)
            for worker in workers:
                worker.start()
            while summary.ok + summary.failed < summary.total:
                if self.stop.is_set():  # set by the caller's signal handler
                    raise KeyboardInterrupt
                try:
                    report(results.get(timeout=0.1))
                except queue.Empty:
                    if not any(w.is_alive() for w in workers) and results.empty():
                        break
        except KeyboardInterrupt:
            summary.interrupted = True
            self.stop.set()
            with self._lock:
                in_flight = list(self._in_flight.values())
            for response in in_flight:
                response.cancel()  # even one waiting on a silent upstream ends now
            # Workers end their responses (each logs what arrived as partial); give them a
            # moment to hand back what completed, then log whatever is still stuck.
            deadline = time.monotonic() + 3.0
            while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
                time.sleep(0.05)
            while not results.empty():
                report(results.get())
            self._log_stuck()
        finally:
            summary.seconds = time.monotonic() - started
            if self._logger is not None and not any(w.is_alive() for w in workers):
                self._logger.close()
        return summary

    def _log_stuck(self) -> None:
        with self._lock:
            stuck = list(self._in_flight.values())
        for response in stuck:
            response.abandon()  # logged as partial now, once

    def _work(self, todo: queue.Queue[_Planned], results: queue.Queue[Result]) -> None:
        while not self.stop.is_set():
            try:
                planned = todo.get_nowait()
            except queue.Empty:
                return
            result = self._run_line(planned)
            if result is not None:
                results.put(result)

    def _logged(self, response: Response | None) -> dict[str, Any]:
        if response is None or self._logger is None:
            return {"logged": False, "log_error": None}
        return {"logged": response.log_error is None, "log_error": response.log_error}

    def _run_line(self, planned: _Planned) -> Result | None:
        line = planned.line
        prefill = self._prefill(line) or ""
        attempt = 0
        while True:
            model = self.endpoints.acquire(planned.group, self.stop)
            if model is None:
                return None  # stopped before it started: resume runs it
            attempt += 1
            response: Response | None = None
            try:
                log: Any = False
                if self._logger is not None:  # each exchange names the line it answers
                    log = functools.partial(self._logger, batch_line=line.key)
                response = api.prompt(model, self._spec(line).replace(
                    log=log, options=planned.options[id(model)]))
                with self._lock:
                    self._in_flight[response.id] = response
                for _ in response:
                    if self.stop.is_set():
                        break
                if response.status != "complete":
                    # Stopped mid-stream: leaving the loop closed the stream (or this does),
                    # which logs what arrived as partial, "interrupted". Resume runs it.
                    response.close()
                    return None
                usage = response.usage()
                self.endpoints.succeeded(model)
                # A reply the log could not take is still a finished line: an ok row that
                # says so (resume must not pay for it again).
                return Result(line, "ok", model=model.model_id, prefill=prefill,
                              text=response.text(), input_tokens=usage.input_tokens,
                              output_tokens=usage.output_tokens,
                              stop_reason=usage.stop_reason, response_id=response.id,
                              duration_ms=response.duration_ms, attempts=attempt,
                              **self._logged(response))
            except Exception as exc:  # a plugin's bug must not take the other lines down
                again, told = retryable(exc, attempt)
                if again and not self.stop.is_set():
                    self.endpoints.failed(model, told)
                    continue
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if not isinstance(exc, LLMCLIError):
                    message = config.scrub(f"{type(exc).__name__}: {message}")
                text = response.text_so_far() if response is not None else None
                return Result(line, "error", model=model.model_id, prefill=prefill,
                              text=text or None, error=f"line {line.number}: {message}",
                              response_id=response.id if response is not None else None,
                              duration_ms=response.duration_ms if response else None,
                              attempts=attempt, **self._logged(response))
            finally:
                self.endpoints.release(model)
                if response is not None:
                    with self._lock:
                        self._in_flight.pop(response.id, None)
