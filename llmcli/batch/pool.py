"""The run: each line planned (its model group, its options, the checks that need no
network), then answered on worker threads through :func:`llmcli.api.prompt`, each line's
:class:`~llmcli.spec.PromptSpec` built once; stopping, and logging what was in flight."""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmcli import api, config
from llmcli.batch.endpoints import Endpoints, default_jobs
from llmcli.batch.input import Line, parse_group, refuse_duplicate_ids
from llmcli.batch.resume import Result, Summary, new_batch_id
from llmcli.batch.retry import retryable
from llmcli.contract import Model
from llmcli.errors import LLMCLIError
from llmcli.response import Response
from llmcli.spec import PromptSpec

if TYPE_CHECKING:
    from llmcli.log import SharedLog

__all__ = ["Batch"]


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
                      text=row["text"], reasoning=row.get("reasoning"),
                      input_tokens=row["input_tokens"],
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
                          key=self.key, attachments=line.attachments)

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
                              text=response.text(),
                              reasoning=response.reasoning_so_far(),
                              input_tokens=usage.input_tokens,
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
                              text=text or None,
                              reasoning=response.reasoning_so_far() if response else None,
                              error=f"line {line.number}: {message}",
                              response_id=response.id if response is not None else None,
                              duration_ms=response.duration_ms if response else None,
                              attempts=attempt, **self._logged(response))
            finally:
                self.endpoints.release(model)
                if response is not None:
                    with self._lock:
                        self._in_flight.pop(response.id, None)
