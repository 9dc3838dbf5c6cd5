"""The model contract that every backend implements, and the objects a prompt produces.

A backend subclasses :class:`Model`, declares what it can do (prefill capability, streaming,
the key it needs, its ``Options``) and implements :meth:`Model.execute`, a generator that
yields text chunks and, when it knows them, :class:`Usage` and :class:`PrefillSent` events.
Everything else (capability checks, keys, normalization, logging) happens in the core:
:func:`prepare_response` makes every check that needs no network, then a :class:`Response`
runs ``execute`` through the normalizer and hands its :class:`ResponseRecord` to the log.

Imports point down only: this module never imports :mod:`llmcli.api` or the CLI. It asks the
plugin registry for other models only to name alternatives in an error, and opens the log
(which knows records, not models) only when a prompt is to be logged.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from llmcli import config
from llmcli import schema as schemas
from llmcli.cancel import Cancellation
from llmcli.capabilities import PrefillSupport, SchemaSupport
from llmcli.errors import (
    KeyNeededError,
    LLMCLIError,
    LogWarning,
    OptionsError,
    PartialResponseError,
    PrefillUnsupportedError,
    ProviderError,
)
from llmcli.normalize import PrefillNormalizer, normalize_text
from llmcli.record import Message, ResponseRecord, Status, history
from llmcli.record import continuation as continuation_of

__all__ = [
    "Chunk",
    "Conversation",
    "KeySpec",
    "Logger",
    "Message",
    "Model",
    "Options",
    "PrefillSent",
    "Request",
    "ResponseRecord",
    "StrList",
    "Response",
    "Usage",
    "concurrency_limit",
    "emulation_instruction",
    "prepare_response",
    "resolve_key",
    "validate_options",
]

#: What ``log=`` accepts besides True/False: called once with each finished Response.
Logger = Callable[["Response"], None]

#: The end of a backend's events (``next(events, _END)``).
_END: Any = object()


class Options(BaseModel):
    """Base for a model's ``-o`` options. Unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _as_str_list(value: Any) -> Any:
    # "###" from Python or "-o stop '###'" is one item; '["a", "b"]' is a JSON list.
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            try:
                return json.loads(stripped)
            except ValueError:
                pass
        return [value]
    return value


#: An option type for lists of strings (stop sequences): accepts one string, a JSON list
#: or a list, so ``-o stop '###'``, ``-o stop '["a","b"]'`` and ``stop=["a"]`` all work.
StrList = Annotated[list[str], BeforeValidator(_as_str_list)]


@dataclass(frozen=True)
class KeySpec:
    """The API key a model needs: its name in ``llmcli keys`` and its environment variable."""

    name: str
    env_var: str | None = None


@dataclass(frozen=True)
class PrefillSent:
    """Yielded by a backend, before any text, when the prefill it sent differs from the
    user's (e.g. trailing whitespace removed). The normalizer reconciles the two."""

    text: str


@dataclass
class Usage:
    """Yielded by a backend at the end of a response, with what it knows."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    stop_reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


Chunk = str | Usage | PrefillSent


@dataclass
class Request:
    """Everything a backend needs to make one call."""

    model_id: str
    prompt: str
    system: str | None
    history: list[Message]
    #: The user's prefill, exactly ("" for none).
    prefill: str
    #: The capability in force for this request (it may depend on the options).
    prefill_support: PrefillSupport
    options: Options
    stream: bool
    #: Kept out of repr(): printing or logging a request must never show the key.
    key: str | None = field(default=None, repr=False)
    #: The JSON Schema the reply must conform to (``--schema``), or None.
    schema: dict[str, Any] | None = None
    #: How the model honours ``schema`` for this request (None without one).
    schema_support: SchemaSupport | None = None
    #: Text the core adds after the prompt (the ``validated`` mode's schema instruction).
    instruction: str = ""
    #: A grammar the reply must follow (``--grammar``: GBNF or Lark text), or None.
    grammar: str | None = None

    def messages(self) -> list[Message]:
        """The conversation so far plus this prompt (the prefill is not included)."""
        prompt = f"{self.prompt}\n\n{self.instruction}" if self.instruction else self.prompt
        return [*self.history, Message("user", prompt)]


def emulation_instruction(prefill: str) -> str:
    """The instruction an emulating backend adds so the model starts with ``prefill``."""
    return (
        "Begin your reply with exactly the following text, character for character, "
        "then continue it naturally. Do not add anything before it.\n"
        f"<reply_prefix>{prefill}</reply_prefix>"
    )


BaseOptions = Options


class Model:
    """Base class for every model. Subclasses set the class attributes and ``execute``."""

    #: The canonical id, used with ``-m`` and stored in the log.
    model_id: str = ""
    #: Other names accepted by ``-m``.
    aliases: tuple[str, ...] = ()
    #: What the API does with a prefill (see :class:`PrefillSupport`).
    prefill_support: PrefillSupport = PrefillSupport.EATS_PREFIX
    #: Whether ``execute`` can stream chunks as they arrive.
    can_stream: bool = True
    #: The API key this model needs, or None.
    needs_key: KeySpec | None = None

    class Options(Options):
        pass

    #: The plugin this model comes from (set by plugin loading).
    plugin: str | None = None

    def get_prefill_support(self, options: BaseOptions, stream: bool = True) -> PrefillSupport:
        """The capability for a request with these options, streamed or not (override when
        it depends: some servers echo the prefill in one mode and not the other)."""
        return self.prefill_support

    def prefill_note(self) -> str:
        """A short explanation shown by ``llmcli models`` (override to explain options)."""
        return ""

    #: How the model honours ``schema=`` (see :class:`SchemaSupport`): by default the
    #: prompt asks for it and the reply is validated.
    schema_support: SchemaSupport = SchemaSupport.VALIDATED
    #: Whether ``grammar=`` (GBNF or Lark) is enforced (only native constrained decoding can).
    grammar_support: bool = False

    def get_schema_support(self, options: BaseOptions) -> SchemaSupport:
        """The schema capability for a request with these options (override when it
        depends on them)."""
        return self.schema_support

    def schema_refusal(self, options: BaseOptions, prefill: str) -> str | None:
        """Why this request's schema cannot be honoured together with ``prefill`` (a
        provider that refuses both at once), or None."""
        return None

    def execute(self, request: Request) -> Iterator[Chunk]:
        """Call the backend; yield text chunks, then optionally a :class:`Usage`.

        Raise :class:`llmcli.errors.ProviderError` (with the provider's own message) on
        failure. Never touch the prefill beyond sending it: the core normalizes the text.
        """
        raise NotImplementedError

    # -- user API ------------------------------------------------------------------------

    def prompt(
        self,
        prompt: str,
        *,
        system: str | None = None,
        prefill: str | None = None,
        stream: bool = True,
        key: str | None = None,
        log: bool | Logger = True,
        conversation: Conversation | None = None,
        schema: dict[str, Any] | str | None = None,
        grammar: str | None = None,
        **options: Any,
    ) -> Response:
        """Prepare a response (see :func:`prepare_response`); nothing is sent yet."""
        return prepare_response(
            self,
            prompt,
            system=system,
            prefill=prefill,
            stream=stream,
            key=key,
            log=log,
            conversation=conversation,
            options=options,
            schema=schema,
            grammar=grammar,
        )

    def conversation(self) -> Conversation:
        return Conversation(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model_id!r}>"


def concurrency_limit(model: Model) -> int | None:
    """How many requests to ``model`` may run at once in one process (None: no limit), as
    ``llmcli batch`` and ``llmcli serve`` both keep it.

    A plugin declares it with a ``batch_concurrency`` attribute (the local runtime's
    models declare 8, what its scheduler batches)."""
    declared = getattr(model, "batch_concurrency", None)
    if isinstance(declared, int) and declared >= 1:
        return declared
    return None


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

    def history(self) -> list[Message]:
        """The turns the next prompt carries: those loaded from the log, then this
        session's, by the same rule (:func:`llmcli.record.history`)."""
        for response in self.responses:
            response.text()  # a response never read is run now: its reply is a turn
        return [*self._loaded_history, *history(r.record() for r in self.responses)]

    def prompt(self, prompt: str, **kwargs: Any) -> Response:
        return self.model.prompt(prompt, conversation=self, **kwargs)


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
    ) -> None:
        self.model = model
        self.request = request
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
        self._usage = Usage()
        self._iterator: Generator[str, None, None] | None = None
        #: Retries of the ``validated`` schema mode.
        self.schema_retries = schemas.DEFAULT_RETRIES

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
        if self.done:
            yield from list(self._chunks)
            return
        if self._iterator is None:
            self._iterator = self._run()
        yield from self._iterator

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

    @property
    def stop_reason(self) -> str | None:
        return self.usage().stop_reason

    def _run(self) -> Generator[str, None, None]:
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
                        self._chunks.append(out)
                        yield out
                elif isinstance(event, PrefillSent):
                    normalizer.set_sent_prefill(event.text)
                elif isinstance(event, Usage):
                    self._usage = event
            if cancellation.is_set():
                self._interrupted(normalizer)
                return
            tail = normalizer.finish()
            if tail:
                self._chunks.append(tail)
                yield tail
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
                self._chunks.append(tail)
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
            self._chunks.append(tail)
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
                    instruction="")
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
            usage_json=json.dumps(usage.details, default=str) if usage.details else None,
            duration_ms=self.duration_ms,
            error=self.error,
            schema_id=schemas.schema_id(self.schema) if self.schema is not None else None,
            schema_json=schemas.dumps(self.schema) if self.schema is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """What ``llmcli --json`` prints (the text so far; it does not run the response)."""
        return self.record().to_dict()

    def __repr__(self) -> str:
        return f"<Response {self.model.model_id!r} {self.status}>"


# -- preparing a prompt: every check that needs no network, before any request ------------


def validate_options(model: Model, options: Mapping[str, Any]) -> Options:
    try:
        return model.Options(**options)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        # A model's own validator says "Value error, temperature is not accepted…": keep
        # its words, not pydantic's prefix.
        reason = str(error["msg"])
        for prefix in ("Value error, ", "Assertion failed, "):
            reason = reason.removeprefix(prefix)
        if error["type"] == "extra_forbidden":
            known = ", ".join(model.Options.model_fields) or "none"
            message = f"Unknown option {where!r} for {model.model_id} (known: {known})"
        elif where:
            message = f"Option {where!r} for {model.model_id}: {reason}"
        else:  # a check across options: its message names them
            message = f"Options for {model.model_id}: {reason}"
        raise OptionsError(message) from None


def resolve_key(model: Model, explicit: str | None = None) -> str | None:
    spec = model.needs_key
    if spec is None:
        return None
    key = config.get_key(spec.name, spec.env_var, explicit)
    if not key:
        raise KeyNeededError(model.model_id, spec.name, spec.env_var)
    config.remember_secret(key)
    return key


def _usable_now(model: Model) -> bool:
    if model.needs_key is None:
        return True
    try:
        return config.get_key(model.needs_key.name, model.needs_key.env_var) is not None
    except LLMCLIError:  # a broken keys file: not usable until it is fixed
        return False


NATIVE_PREFILL = (PrefillSupport.EATS_PREFIX, PrefillSupport.ECHOES_PREFIX)


def _alternatives(exclude: Model) -> list[str]:
    """Models that take a prefill natively (eats or echoes; emulation is what a strict
    refusal avoids), for the error that refuses one: those usable now (local, or with a
    key set) first."""
    from llmcli.plugins import registered_models

    native = [m for m in registered_models() if m is not exclude
              and m.get_prefill_support(m.Options()) in NATIVE_PREFILL]
    native.sort(key=lambda m: not _usable_now(m))  # stable: registration order otherwise
    return [m.model_id for m in native[:5]]


def _open_log() -> Logger:
    # Opened now, not when the response ends: a prompt that cannot be logged fails before
    # its request is sent. The log package imports sqlite-utils, so only when logging.
    from llmcli.log import LogStore

    return LogStore().log_once


def prepare_response(
    model: Model,
    prompt: str,
    *,
    system: str | None = None,
    prefill: str | None = None,
    stream: bool = True,
    key: str | None = None,
    log: bool | Logger = True,
    conversation: Conversation | None = None,
    options: Mapping[str, Any] | None = None,
    schema: dict[str, Any] | str | None = None,
    schema_retries: int = schemas.DEFAULT_RETRIES,
    grammar: str | None = None,
) -> Response:
    """Prepare a response; nothing is sent until it is iterated or ``text()`` is called.

    Every check that can fail without the network fails here, before any request: options,
    prefill capability, schema (valid, and honoured by this model with this prefill), key,
    and (when logging) that the log can be opened."""
    if not prompt.strip():
        # The same rule as the command line's: nothing to send is an error, not a request.
        raise LLMCLIError("Empty prompt: the prompt has no text")
    validated = validate_options(model, options or {})
    stream = stream and model.can_stream
    support = model.get_prefill_support(validated, stream=stream)
    prefill = prefill or ""
    if prefill and support is PrefillSupport.UNSUPPORTED:
        raise PrefillUnsupportedError(model.model_id, model.prefill_note(), _alternatives(model))
    parsed_schema: dict[str, Any] | None = None
    schema_support: SchemaSupport | None = None
    if schema is not None:
        parsed_schema = schemas.parse_schema(schema)
        schema_support = model.get_schema_support(validated)
        if schema_support is SchemaSupport.UNSUPPORTED:
            raise schemas.SchemaUnsupportedError(
                f"{model.model_id} cannot honour a schema (structured output); run "
                "'llmcli models' to see which models can")
        refusal = model.schema_refusal(validated, prefill)
        if refusal:
            raise schemas.SchemaUnsupportedError(f"{model.model_id}: {refusal}")
    if grammar is not None:
        if schema is not None:
            raise schemas.InvalidSchemaError("Give a schema or a grammar, not both")
        if not grammar.strip():
            raise schemas.InvalidSchemaError("Empty grammar")
        if not model.grammar_support:
            raise schemas.SchemaUnsupportedError(
                f"{model.model_id} cannot enforce a grammar; --grammar works with local "
                "models and llama.cpp servers")
    resolved_key = resolve_key(model, key)
    if conversation is not None and conversation.model is not model:
        # A conversation continued with another model keeps its history.
        conversation.model = model
    request = Request(
        model_id=model.model_id,
        prompt=prompt,
        system=system,
        history=conversation.history() if conversation is not None else [],
        prefill=prefill,
        prefill_support=support,
        options=validated,
        stream=stream,
        key=resolved_key,
        schema=parsed_schema,
        schema_support=schema_support,
        grammar=grammar,
        instruction=(schemas.instruction(parsed_schema)
                     if schema_support is SchemaSupport.VALIDATED and parsed_schema else ""),
    )
    logger: Logger | None
    if callable(log):
        logger = log
    elif log and config.logging_enabled():
        logger = _open_log()
    else:
        logger = None
    if conversation is None:
        # Every response belongs to a conversation, as on the command line: a plain
        # model.prompt() starts a new one.
        conversation = Conversation(model)
    response = Response(model, request, conversation=conversation, logger=logger)
    response.schema_retries = max(0, schema_retries)
    conversation.responses.append(response)
    return response
