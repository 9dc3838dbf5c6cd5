"""The response runtime: a :class:`Response` runs a backend's ``execute`` through the
normalizer (and, in the ``validated`` schema mode, the schema retry loop), keeps what
arrived, and hands its :class:`~llmcli.record.ResponseRecord` to the log once, when it ends.
An :class:`AsyncResponse` does the same on an event loop, over the backend's
``execute_async``. Both are a :class:`BaseResponse`: what a response keeps, its record and its
log are written once there, and every event of either goes through one :class:`Consumer` (the
normalizer, the sent prefill, reasoning, tool calls, usage, the status an ending leaves) and
one schema retry loop (:meth:`BaseResponse._attempts`). A :class:`Conversation` is the
sequence of responses whose turns each prompt carries.

Responses are made by :func:`llmcli.prepare.prepare_response`; this module knows models only
through the contract they implement (``execute``), never the registry, the API or the CLI.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from llmcli import config
from llmcli import schema as schemas
from llmcli.cancel import Cancellation
from llmcli.capabilities import PrefillSupport, SchemaSupport
from llmcli.errors import (
    ConversationError,
    LLMCLIError,
    LogWarning,
    PartialResponseError,
    ProviderError,
)
from llmcli.normalize import PrefillNormalizer, normalize_text
from llmcli.record import Message, ResponseRecord, Status, ToolCall, continuable, history
from llmcli.record import continuation as continuation_of
from llmcli.request import Chunk, Options, PrefillSent, Reasoning, Request, Usage
from llmcli.spec import Logger, PromptSpec

if TYPE_CHECKING:
    import asyncio

    from llmcli.contract import Model

__all__ = ["AsyncResponse", "AsyncRun", "BaseResponse", "Consumer", "Conversation", "Once",
           "Response", "Run"]

_T = TypeVar("_T")

#: The end of a backend's events (``next(events, _END)``).
_END: Any = object()


def _new_id() -> str:
    return uuid.uuid4().hex


class Conversation:
    """A sequence of exchanges with one model; each prompt carries the earlier turns."""

    def __init__(
        self, model: Model, id: str | None = None, name: str | None = None,
        history: list[Message] | None = None,
    ) -> None:
        self.model = model
        self.id = id or _new_id()
        self.name = name
        self.responses: list[BaseResponse] = []
        #: Turns loaded from the log (for ``-c``/``--cid``) before this session's responses.
        self._loaded_history = list(history or [])

    def history(self, excluding: str | None = None) -> list[Message]:
        """The turns the next prompt carries: those loaded from the log, then this
        session's, by the same rule (:func:`llmcli.record.history`); without the response
        ``excluding`` (the reply a continuation extends)."""
        for response in self.responses:
            response._settle()  # a response never read is run now: its reply is a turn
        return [*self._loaded_history, *history(
            r.record() for r in self.responses if r.id != excluding)]

    def prompt(self, prompt: str, **kwargs: Any) -> Response:
        return self.model.prompt(prompt, conversation=self, **kwargs)

    def chain(self, prompt: str, **kwargs: Any) -> Any:
        """Run a tool chain in this conversation (see :meth:`llmcli.Model.chain`)."""
        return self.model.chain(prompt, conversation=self, **kwargs)


class Consumer:
    """One run of a response: every event its backend yields goes through here, whether a
    :class:`Response` pulls the events on its thread or an :class:`AsyncResponse` awaits them
    on an event loop. It feeds the text to the prefill normalizer, keeps the reasoning, the
    tool calls, the usage and the prefill the backend says it sent, and, when the run ends,
    sets the status (``complete``; ``partial`` when interrupted or broken after some text;
    ``error``), maps the failure to its one-line error and hands the response to its log,
    once."""

    def __init__(self, response: BaseResponse) -> None:
        self.response = response
        self.normalizer = PrefillNormalizer(response.prefill, response.prefill_support)
        self.started = time.monotonic()
        #: Whether the backend has sent any text (a failure after it leaves a partial reply).
        self.raw_seen = False

    def take(self, event: Chunk) -> str | Reasoning | None:
        """Keep one event; return what the response gives out for it (normalized text, or
        the model's reasoning), if anything."""
        response = self.response
        if isinstance(event, str):
            self.raw_seen = self.raw_seen or bool(event)
            out = self.normalizer.feed(event)
            return response._text(out) if out else None
        if isinstance(event, Reasoning):
            if not event.text:
                return None
            response._reasoning.append(event.text)
            response._parts.append(event)
            return event
        if isinstance(event, ToolCall):
            response._tool_calls.append(event)
        elif isinstance(event, PrefillSent):
            self.normalizer.set_sent_prefill(event.text)
        elif isinstance(event, Usage):
            response._usage = event
        return None

    def ending(self, *, cancelled: bool) -> str | None:
        """The backend's events are over (``cancelled``: cut short by a cancel): the status,
        and what the normalizer still held, to give out, if anything."""
        if cancelled:
            self.interrupted()
            return None
        tail = self.normalizer.finish()
        self.response.status = "complete"
        return self.response._text(tail) if tail else None

    def interrupted(self) -> None:
        """Stopped before its end (the consumer went away, a cancel): what arrived is kept,
        as ``partial``."""
        tail = self.normalizer.finish()
        if tail:
            self.response._text(tail)
        self.response.status, self.response.error = "partial", "interrupted"

    def stopped(self, exc: BaseException, *, interrupted: bool) -> BaseException | None:
        """The run ended with ``exc``: an interruption (``interrupted``: the consumer stopped
        or the response was cancelled) keeps what arrived; a failure is mapped to its typed,
        scrubbed error. Returns what to raise (``exc`` itself, its mapped error, or None for
        a failure that was a cancellation's doing, which ends the run quietly)."""
        if interrupted or self.response.cancelled:
            self.interrupted()
            return exc if interrupted else None
        tail = self.normalizer.finish() if self.raw_seen else ""
        if tail:
            self.response._text(tail)
        response = self.response
        response.status = "partial" if self.raw_seen else "error"
        error = response._as_llmcli_error(exc, self.raw_seen)
        response.error = str(error)
        return error

    def end(self) -> None:
        """Time the run; the logging is the caller's (:meth:`BaseResponse._log`, on a thread
        when on an event loop)."""
        self.response.duration_ms = int((time.monotonic() - self.started) * 1000)


class BaseResponse:
    """What a response keeps and logs, for :class:`Response` (iterated on a thread) and
    :class:`AsyncResponse` (awaited on an event loop) alike.

    The text always begins with ``prefill``. The response is logged once, when it ends:
    ``complete``, ``partial`` (interrupted or broken after some text) or ``error``. A log
    that fails then never costs the reply: ``log_error`` says why, and a
    :class:`~llmcli.errors.LogWarning` is issued instead of an error.
    """

    def __init__(
        self,
        model: Model,
        request: Request,
        *,
        conversation: Conversation | None = None,
        logger: Logger | None = None,
        spec: PromptSpec | None = None,
    ) -> None:
        self.model = model
        self.request = request
        #: The prompt as asked (what :func:`~llmcli.prepare.prepare_response` was given);
        #: the record may read fields from it that the backend never sees.
        self.spec = spec or PromptSpec(request.prompt, system=request.system,
                                       prefill=request.prefill, schema=request.schema,
                                       grammar=request.grammar, stream=request.stream)
        self.conversation = conversation
        self.id = _new_id()
        self.datetime_utc = datetime.now(UTC).isoformat(timespec="milliseconds")
        self.status: Status = "pending"
        self.error: str | None = None
        self.duration_ms: int | None = None
        self._logger = logger
        self._log_lock = threading.Lock()
        #: Why this response could not be logged (one line), or None.
        self.log_error: str | None = None
        self._cancellation = Cancellation()
        self._chunks: list[str] = []
        self._reasoning: list[str] = []
        #: Text chunks and reasoning in the order they arrived (for ``parts()``).
        self._parts: list[str | Reasoning] = []
        self._tool_calls: list[ToolCall] = []
        self._usage = Usage()
        #: Retries of the ``validated`` schema mode.
        self.schema_retries = schemas.DEFAULT_RETRIES
        #: Log the attachments' content, not only their type, size and hash.
        self.store_attachments = False
        #: The id of the cut-off reply this one continues, or None.
        self.continues: str | None = None

    # Convenience views of the request.
    @property
    def prompt(self) -> str:
        return self.request.prompt

    @property
    def system(self) -> str | None:
        return self.request.system

    @property
    def prefill(self) -> str:
        return self.request.prefill

    @property
    def prefill_support(self) -> PrefillSupport:
        return self.request.prefill_support

    @property
    def options(self) -> Options:
        return self.request.options

    @property
    def done(self) -> bool:
        return self.status != "pending"

    @property
    def schema(self) -> dict[str, Any] | None:
        return self.request.schema

    def reasoning_so_far(self) -> str | None:
        return "".join(self._reasoning) if self._reasoning else None

    def text_so_far(self) -> str:
        return "".join(self._chunks)

    def usage_so_far(self) -> Usage:
        """The usage the backend has reported so far (it runs nothing; once the response
        has ended, its usage)."""
        return self._usage

    def tool_calls_so_far(self) -> list[ToolCall]:
        """The tool calls that have arrived so far, in order (it runs nothing)."""
        return list(self._tool_calls)

    @property
    def cancelled(self) -> bool:
        return self._cancellation.is_set()

    def abandon(self) -> None:
        """Give up on a response whose run did not end when cancelled (a backend stuck
        somewhere no cancellation reaches): it is logged now, from the calling thread, as
        partial (error ``interrupted``) with what arrived. It is logged once: whatever its
        own run does later is not logged again."""
        self._cancellation.cancel()
        if self.status == "pending":
            self.status, self.error = "partial", "interrupted"
        self._log()

    def fail(self, error: LLMCLIError) -> None:
        """End a response that will not be sent (a chain whose tool call failed: this turn
        would have carried the results): logged once as ``error`` with the reason, its tool
        results kept."""
        if self.done:
            return
        self.status, self.error = "error", str(error)
        self.duration_ms = 0
        self._log()

    def _settle(self) -> None:
        """Make sure the reply is there before a conversation's next turn carries it."""
        raise NotImplementedError

    def _ended(self) -> bool:
        return self.done

    def _kept(self) -> list[str | Reasoning]:
        return list(self._parts)

    def _parse_json(self, text: str) -> Any:
        try:
            if self.schema is None:
                return schemas.parse_reply(text)
            return schemas.check_reply(self.schema, text)
        except schemas.SchemaValidationError as exc:
            if self._usage.stop_reason == "max_tokens":
                raise schemas.SchemaValidationError(
                    f"{exc} (the reply stopped at its token limit: raise max_tokens)") from None
            raise

    def _text(self, out: str) -> str:
        self._chunks.append(out)
        self._parts.append(out)
        return out

    def _validated(self) -> bool:
        """Whether the reply is checked against a schema, attempt after attempt."""
        request = self.request
        return request.schema is not None and request.schema_support is SchemaSupport.VALIDATED

    def _attempts(self) -> Generator[Request, list[Chunk], list[Chunk]]:
        """The ``validated`` schema mode, without I/O: it yields each attempt's request and
        is sent back that attempt's events (buffered); it returns the events of the first
        attempt whose reply conforms (a failed one is sent back with its error,
        :attr:`schema_retries` times at most)."""
        request = self.request
        assert request.schema is not None
        schema = request.schema
        attempt = request
        for tries in range(1, self.schema_retries + 2):
            events = yield attempt
            sent = next((e.text for e in events if isinstance(e, PrefillSent)), None)
            text = normalize_text("".join(e for e in events if isinstance(e, str)),
                                  request.prefill, request.prefill_support, sent)
            try:
                schemas.check_reply(schema, text)
            except schemas.SchemaValidationError as exc:
                error = str(exc)
                if tries > self.schema_retries:
                    raise schemas.SchemaValidationError(
                        f"{self.model.model_id}: {error} (after {tries} attempts)") from None
                attempt = replace(
                    request, history=[*attempt.messages(), Message("assistant", text)],
                    prompt=schemas.retry_prompt(error.removeprefix("the reply ")),
                    instruction="", attachments=())
                continue
            for event in events:
                if isinstance(event, Usage):
                    event.details["schema_attempts"] = tries
            return events
        raise AssertionError("unreachable")  # the last try returns or raises

    def _as_llmcli_error(self, exc: BaseException, partial: bool) -> BaseException:
        scrub = config.scrub
        if isinstance(exc, LLMCLIError) and exc.args:
            # A provider may repeat the key in its error; never let it out of here.
            exc.args = (scrub(str(exc.args[0])), *exc.args[1:])
        if partial and isinstance(exc, ProviderError) and not isinstance(
            exc, PartialResponseError
        ):
            return PartialResponseError(
                f"{exc} (the response broke off; what arrived is logged as partial)",
                status=exc.status, provider=exc.provider,
            )
        if isinstance(exc, LLMCLIError) or not isinstance(exc, Exception):
            return exc
        message = scrub(f"{self.model.model_id}: {type(exc).__name__}: {exc}".splitlines()[0])
        cls = PartialResponseError if partial else ProviderError
        return cls(message)

    def _log(self) -> None:
        """Hand the response to its logger, once. A logger that fails (a full disk, a log
        made unwritable since it was opened) does not undo the reply: the reason is kept in
        ``log_error`` and issued as a :class:`~llmcli.errors.LogWarning`."""
        with self._log_lock:
            logger, self._logger = self._logger, None
        if logger is None:
            return
        try:
            logger(self)
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not isinstance(exc, LLMCLIError):
                reason = f"{type(exc).__name__}: {reason}"
            self.log_error = config.scrub(reason)
            warnings.warn(f"Response {self.id} was not logged: {self.log_error}", LogWarning,
                          stacklevel=2)

    def record(self) -> ResponseRecord:
        """This response as it stands, frozen: what the log writes and ``to_dict`` shows."""
        usage = self._usage
        conversation = self.conversation
        return ResponseRecord(
            id=self.id,
            model=self.model.model_id,
            prompt=self.prompt,
            system=self.system,
            prefill=self.prefill,
            prefill_support=self.prefill_support.value,
            text=self.text_so_far(),
            status=self.status,
            datetime_utc=self.datetime_utc,
            conversation_id=conversation.id if conversation else None,
            conversation_name=conversation.name if conversation else None,
            options_json=json.dumps(self.options.model_dump(exclude_none=True), default=str),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            stop_reason=usage.stop_reason,
            reasoning=self.reasoning_so_far(),
            continues_id=self.continues,
            usage_json=json.dumps(usage.details, default=str) if usage.details else None,
            duration_ms=self.duration_ms,
            error=self.error,
            schema_id=schemas.schema_id(self.schema) if self.schema is not None else None,
            schema_json=schemas.dumps(self.schema) if self.schema is not None else None,
            attachments=self.request.attachments,
            store_attachments=self.store_attachments,
            tool_calls=tuple(self._tool_calls),
            tool_results=self.request.tool_results,
        )

    def to_dict(self) -> dict[str, Any]:
        """What ``llmcli --json`` prints (the text so far; it does not run the response)."""
        return self.record().to_dict()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model.model_id!r} {self.status}>"


class Once(Generic[_T]):
    """Something run once (a response, a chain): the first reader starts its run, later
    ones read on from it or, once it has ended (:meth:`_ended`), read what it gave
    (:meth:`_kept`)."""

    def _ended(self) -> bool:
        raise NotImplementedError

    def _kept(self) -> list[_T]:
        raise NotImplementedError


class Run(Once[_T]):
    """:class:`Once`, iterated on the caller's thread."""

    _iterator: Generator[_T, None, None] | None = None

    def _run(self) -> Generator[_T, None, None]:
        raise NotImplementedError

    def _read(self) -> Iterator[_T]:
        if not self._ended():
            if self._iterator is None:
                self._iterator = self._run()
            yield from self._iterator
        else:
            yield from self._kept()


class AsyncRun(Once[_T]):
    """:class:`Once`, on an event loop."""

    _iterator: AsyncGenerator[_T, None] | None = None

    def _run(self) -> AsyncGenerator[_T, None]:
        raise NotImplementedError

    async def _read(self) -> AsyncIterator[_T]:
        if self._ended():
            for item in self._kept():
                yield item
            return
        if self._iterator is None:
            self._iterator = self._run()
        async for item in self._iterator:
            yield item


class Response(BaseResponse, Run[str | Reasoning]):
    """One exchange. Iterate it for normalized chunks; ``text()`` drains and joins them.
    See :class:`BaseResponse` for what is kept and logged."""

    def json(self) -> Any:
        """The reply parsed as JSON (it runs the response); with a schema, validated
        against it (:class:`llmcli.schema.SchemaValidationError` if it does not conform)."""
        return self._parse_json(self.text())

    def __iter__(self) -> Iterator[str]:
        for part in self.parts():
            if isinstance(part, str):
                yield part

    def parts(self) -> Iterator[str | Reasoning]:
        """The normalized text chunks and the model's :class:`~llmcli.request.Reasoning`,
        in the order they arrived (iterating the response gives the text alone)."""
        return self._read()

    @property
    def reasoning(self) -> str | None:
        """The model's reasoning (it runs the response): its thinking blocks or
        ``reasoning_content`` joined, never part of ``text()``; None where the backend
        returned none."""
        self.text()
        return self.reasoning_so_far()

    def text(self) -> str:
        for _ in self:
            pass
        return "".join(self._chunks)

    def _settle(self) -> None:
        self.text()

    def close(self) -> None:
        """Stop a response mid-stream; what arrived is kept and logged as partial."""
        if self._iterator is not None and not self.done:
            self._iterator.close()

    def cancel(self) -> None:
        """Stop the response from any thread, even while its backend waits for an upstream
        that says nothing: the connections the backend opened are shut down, and the thread
        iterating the response sees the iteration end at once, with what arrived kept and
        logged as partial (error ``interrupted``). A response not started yet never
        connects."""
        self._cancellation.cancel()

    @property
    def continuation(self) -> str:
        """The text after the prefill."""
        return continuation_of(self.text(), self.prefill)

    def usage(self) -> Usage:
        self.text()
        return self._usage

    def tool_calls(self) -> list[ToolCall]:
        """The tools the model called in this reply, in order (it runs the response)."""
        self.text()
        return list(self._tool_calls)

    @property
    def stop_reason(self) -> str | None:
        return self.usage().stop_reason

    def _run(self) -> Generator[str | Reasoning, None, None]:
        run = Consumer(self)
        cancellation = self._cancellation
        events = self._events()
        try:
            while not cancellation.is_set():
                # The backend runs under the cancellation only while it is asked for its next
                # event: the sockets it connects then are the ones cancel() shuts down.
                with cancellation.running():
                    event = next(events, _END)
                if event is _END or cancellation.is_set():
                    break
                part = run.take(event)
                if part is not None:
                    yield part
            tail = run.ending(cancelled=cancellation.is_set())
            if tail:
                yield tail
        except BaseException as exc:
            # Interrupted (Ctrl-C, the consumer stopped iterating, cancel()) or failed: keep
            # what arrived.
            error = run.stopped(exc, interrupted=isinstance(exc, GeneratorExit | KeyboardInterrupt))
            if error is exc:
                raise
            if error is not None:
                raise error from exc
        finally:
            events.close()
            run.end()
            self._log()

    def _events(self) -> Generator[Chunk, None, None]:
        """The backend's events; in the ``validated`` schema mode, those of the first
        attempt whose reply conforms (:meth:`BaseResponse._attempts`)."""
        if not self._validated():
            yield from self.model.execute(self.request)
            return
        attempts = self._attempts()
        attempt = next(attempts)
        while True:
            try:
                attempt = attempts.send(list(self.model.execute(attempt)))
            except StopIteration as done:
                yield from done.value
                return

    def continue_reply(self, **fields: Any) -> Response:
        """A new response that continues this one where it was cut off (its token limit,
        an interruption): the same prompt, with this reply's text as the prefill, in the same
        conversation. Its text is the whole reply; the log links it to this one. ``fields``
        are :class:`~llmcli.spec.PromptSpec` fields (``options`` merged over this one's, to
        raise ``max_tokens`` say). Nothing is sent until it is read."""
        self.text()
        why = continuable(self.record())
        if why is not None:
            raise ConversationError(f"Response {self.id} cannot be continued: {why}")
        options = {**self.options.model_dump(exclude_defaults=True),
                   **fields.pop("options", {})}
        fields = {"system": self.system, "stream": self.request.stream,
                  "schema": self.schema, "grammar": self.request.grammar, **fields}
        return self.model.prompt(self.prompt, prefill=self.text_so_far(),
                                 conversation=self.conversation, continues=self.id,
                                 **fields, **options)


class AsyncResponse(BaseResponse, AsyncRun[str | Reasoning]):
    """One exchange on an event loop, over the backend's ``execute_async``: ``async for``
    gives the normalized chunks, ``await response`` runs it to its end (and returns it),
    ``await response.text()`` joins the text. The same events, normalizer, schema retries and
    log as :class:`Response` (:class:`BaseResponse`); the log is written on a worker thread,
    off the event loop.

    Cancelling the task that runs it (or :meth:`cancel`) stops it at once: what arrived is
    kept and logged as partial (error ``interrupted``)."""

    def __init__(self, model: Model, request: Request, **kwargs: Any) -> None:
        super().__init__(model, request, **kwargs)
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Waiting for the backend's next event (where cancel() may cancel the task).
        self._waiting = False

    def __aiter__(self) -> AsyncIterator[str]:
        return self._text_only()

    async def _text_only(self) -> AsyncIterator[str]:
        async for part in self.parts():
            if isinstance(part, str):
                yield part

    def parts(self) -> AsyncIterator[str | Reasoning]:
        """The normalized text chunks and the model's :class:`~llmcli.request.Reasoning`,
        in the order they arrived."""
        return self._read()

    def __await__(self) -> Generator[Any, None, AsyncResponse]:
        return self._finish().__await__()

    async def _finish(self) -> AsyncResponse:
        async for _ in self.parts():
            pass
        return self

    async def text(self) -> str:
        await self._finish()
        return self.text_so_far()

    async def json(self) -> Any:
        """The reply parsed as JSON, validated against the schema where there is one."""
        return self._parse_json(await self.text())

    async def reasoning(self) -> str | None:
        """The model's reasoning (it runs the response); None where there was none."""
        await self._finish()
        return self.reasoning_so_far()

    async def usage(self) -> Usage:
        await self._finish()
        return self._usage

    async def tool_calls(self) -> list[ToolCall]:
        """The tools the model called in this reply, in order (it runs the response)."""
        await self._finish()
        return list(self._tool_calls)

    @property
    def stop_reason(self) -> str | None:
        """Why the model stopped (once the response has run)."""
        return self._usage.stop_reason

    def _settle(self) -> None:
        if not self.done:
            raise ConversationError(
                f"Response {self.id} has not been run: await it before the conversation's "
                "next prompt")

    async def aclose(self) -> None:
        """Stop the response mid-stream; what arrived is kept and logged as partial."""
        iterator = self._iterator
        if iterator is not None and not self.done:
            await iterator.aclose()

    def cancel(self) -> None:
        """Stop the response from any thread or task: the task running it ends its
        iteration at once, even while the backend waits on its upstream, with what arrived
        kept and logged as partial (error ``interrupted``). A response not started yet never
        sends its request."""
        self._cancellation.cancel()
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing runs
                loop.call_soon_threadsafe(self._interrupt)

    def _interrupt(self) -> None:
        # On the loop: the running task is suspended now; only while it waits for the
        # backend's next event does the cancel land there (not in its consumer's code).
        task = self._task
        if self._waiting and task is not None and not task.done():
            task.cancel()

    async def _run(self) -> AsyncGenerator[str | Reasoning, None]:
        import asyncio  # here: the CLI's start-up does not pay for it

        run = Consumer(self)
        self._task, self._loop = asyncio.current_task(), asyncio.get_running_loop()
        events = self._events()
        try:
            while not self.cancelled:
                self._waiting = True
                try:
                    event = await anext(events, _END)
                finally:
                    self._waiting = False
                if event is _END or self.cancelled:
                    break
                part = run.take(event)
                if part is not None:
                    yield part
            tail = run.ending(cancelled=self.cancelled)
            if tail:
                yield tail
        except BaseException as exc:
            ours = isinstance(exc, asyncio.CancelledError) and self.cancelled
            if ours and self._task is not None:
                self._task.uncancel()  # cancel() asked for it: the iteration just ends
            interrupted = isinstance(exc, GeneratorExit | KeyboardInterrupt
                                     | asyncio.CancelledError) and not ours
            error = run.stopped(exc, interrupted=interrupted)
            if error is exc:
                raise
            if error is not None:
                raise error from exc
        finally:
            self._task = None
            await events.aclose()
            run.end()
            await _log_off_loop(self)

    async def _events(self) -> AsyncGenerator[Chunk, None]:
        """The backend's events, as :meth:`Response._events` gives them."""
        execute = self.model.execute_async
        if not self._validated():
            async for event in execute(self.request):
                yield event
            return
        attempts = self._attempts()
        attempt = next(attempts)
        while True:
            events = [event async for event in execute(attempt)]
            try:
                attempt = attempts.send(events)
            except StopIteration as done:
                for event in done.value:
                    yield event
                return


async def _log_off_loop(response: BaseResponse) -> None:
    """Log ``response`` on a worker thread: a SQLite write may wait for the file's lock,
    and the event loop must not. Where no thread can start (the loop is closing), here."""
    import asyncio  # here: the CLI's start-up does not pay for it

    if response._logger is None:
        return
    try:
        await asyncio.shield(asyncio.to_thread(response._log))
    except RuntimeError:
        response._log()
    except asyncio.CancelledError:
        response._log()  # a second cancel while writing: the write still happens once
        raise
