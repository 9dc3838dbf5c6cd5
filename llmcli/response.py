"""The response runtime: a :class:`Response` runs a backend's ``execute`` through the
normalizer (and, in the ``validated`` schema mode, the schema retry loop), keeps what
arrived, and hands its :class:`~llmcli.record.ResponseRecord` to the log once, when it ends.
A :class:`Conversation` is the sequence of responses whose turns each prompt carries.

Responses are made by :func:`llmcli.prepare.prepare_response`; this module knows models only
through the contract they implement (``execute``), never the registry, the API or the CLI.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
import warnings
from collections.abc import Generator, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

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
    from llmcli.contract import Model

__all__ = ["Conversation", "Response"]

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
        self.responses: list[Response] = []
        #: Turns loaded from the log (for ``-c``/``--cid``) before this session's responses.
        self._loaded_history = list(history or [])

    def history(self, excluding: str | None = None) -> list[Message]:
        """The turns the next prompt carries: those loaded from the log, then this
        session's, by the same rule (:func:`llmcli.record.history`); without the response
        ``excluding`` (the reply a continuation extends)."""
        for response in self.responses:
            response.text()  # a response never read is run now: its reply is a turn
        return [*self._loaded_history, *history(
            r.record() for r in self.responses if r.id != excluding)]

    def prompt(self, prompt: str, **kwargs: Any) -> Response:
        return self.model.prompt(prompt, conversation=self, **kwargs)

    def chain(self, prompt: str, **kwargs: Any) -> Any:
        """Run a tool chain in this conversation (see :meth:`llmcli.Model.chain`)."""
        return self.model.chain(prompt, conversation=self, **kwargs)


class Response:
    """One exchange. Iterate it for normalized chunks; ``text()`` drains and joins them.

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
        self._iterator: Generator[str | Reasoning, None, None] | None = None
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

    def json(self) -> Any:
        """The reply parsed as JSON (it runs the response); with a schema, validated
        against it (:class:`llmcli.schema.SchemaValidationError` if it does not conform)."""
        text = self.text()
        try:
            if self.schema is None:
                return schemas.parse_reply(text)
            return schemas.check_reply(self.schema, text)
        except schemas.SchemaValidationError as exc:
            if self.stop_reason == "max_tokens":
                raise schemas.SchemaValidationError(
                    f"{exc} (the reply stopped at its token limit: raise max_tokens)") from None
            raise

    def __iter__(self) -> Iterator[str]:
        for part in self.parts():
            if isinstance(part, str):
                yield part

    def parts(self) -> Iterator[str | Reasoning]:
        """The normalized text chunks and the model's :class:`~llmcli.request.Reasoning`,
        in the order they arrived (iterating the response gives the text alone)."""
        if self.done:
            yield from list(self._parts)
            return
        if self._iterator is None:
            self._iterator = self._run()
        yield from self._iterator

    @property
    def reasoning(self) -> str | None:
        """The model's reasoning (it runs the response): its thinking blocks or
        ``reasoning_content`` joined, never part of ``text()``; None where the backend
        returned none."""
        self.text()
        return self.reasoning_so_far()

    def reasoning_so_far(self) -> str | None:
        return "".join(self._reasoning) if self._reasoning else None

    def text(self) -> str:
        for _ in self:
            pass
        return "".join(self._chunks)

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
    def cancelled(self) -> bool:
        return self._cancellation.is_set()

    def abandon(self) -> None:
        """Give up on a response whose thread did not end when cancelled (a backend stuck
        somewhere no cancellation reaches): it is logged now, from the calling thread, as
        partial (error ``interrupted``) with what arrived. It is logged once: whatever its
        own thread does later is not logged again."""
        self.cancel()
        if self.status == "pending":
            self.status, self.error = "partial", "interrupted"
        self._log()

    def text_so_far(self) -> str:
        return "".join(self._chunks)

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

    def fail(self, error: LLMCLIError) -> None:
        """End a response that will not be sent (a chain whose tool call failed: this turn
        would have carried the results): logged once as ``error`` with the reason, its tool
        results kept."""
        if self.done:
            return
        self.status, self.error = "error", str(error)
        self.duration_ms = 0
        self._log()

    @property
    def stop_reason(self) -> str | None:
        return self.usage().stop_reason

    def _text(self, out: str) -> str:
        self._chunks.append(out)
        self._parts.append(out)
        return out

    def _run(self) -> Generator[str | Reasoning, None, None]:
        normalizer = PrefillNormalizer(self.prefill, self.prefill_support)
        started = time.monotonic()
        raw_seen = False
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
                if isinstance(event, str):
                    raw_seen = raw_seen or bool(event)
                    out = normalizer.feed(event)
                    if out:
                        yield self._text(out)
                elif isinstance(event, Reasoning):
                    if event.text:
                        self._reasoning.append(event.text)
                        self._parts.append(event)
                        yield event
                elif isinstance(event, ToolCall):
                    self._tool_calls.append(event)
                elif isinstance(event, PrefillSent):
                    normalizer.set_sent_prefill(event.text)
                elif isinstance(event, Usage):
                    self._usage = event
            if cancellation.is_set():
                self._interrupted(normalizer)
                return
            tail = normalizer.finish()
            if tail:
                yield self._text(tail)
            self.status = "complete"
        except BaseException as exc:
            # Interrupted (Ctrl-C, the consumer stopped iterating, cancel()) or failed: keep
            # what arrived.
            stopped = isinstance(exc, GeneratorExit | KeyboardInterrupt)
            if stopped or cancellation.is_set():
                self._interrupted(normalizer)
                if stopped:
                    raise
                return  # the failure was the cancellation's doing (a connection shut down)
            tail = normalizer.finish() if raw_seen else ""
            if tail:
                self._text(tail)
            self.status = "partial" if raw_seen else "error"
            error = self._as_llmcli_error(exc, raw_seen)
            self.error = str(error)
            if error is exc:
                raise
            raise error from exc
        finally:
            events.close()
            self.duration_ms = int((time.monotonic() - started) * 1000)
            self._log()

    def _interrupted(self, normalizer: PrefillNormalizer) -> None:
        tail = normalizer.finish()
        if tail:
            self._text(tail)
        self.status = "partial"
        self.error = "interrupted"

    def _events(self) -> Generator[Chunk, None, None]:
        """The backend's events; in the ``validated`` schema mode, those of the first
        attempt whose reply conforms (each attempt buffered, a failed one sent back with its
        error, :data:`llmcli.schema.DEFAULT_RETRIES` times at most)."""
        request = self.request
        if request.schema is None or request.schema_support is not SchemaSupport.VALIDATED:
            yield from self.model.execute(request)
            return
        schema = request.schema
        attempt = request
        for tries in range(1, self.schema_retries + 2):
            events = list(self.model.execute(attempt))
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
                yield event
            return

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

    def to_dict(self) -> dict[str, Any]:
        """What ``llmcli --json`` prints (the text so far; it does not run the response)."""
        return self.record().to_dict()

    def __repr__(self) -> str:
        return f"<Response {self.model.model_id!r} {self.status}>"
