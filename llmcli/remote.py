"""A kit for provider plugins that call a remote API through a vendor SDK.

A provider plugin keeps its model table and its wire translation; everything the bundled
Anthropic, Mistral and OpenAI plugins have in common is here:

* :class:`RemoteModel`: ``execute`` as a template (build the request → open a client → send
  → read the reply or the stream → turn any failure into a typed error → close), with hooks
  for what differs (:meth:`~RemoteModel.import_sdk`, :meth:`~RemoteModel.build`,
  :meth:`~RemoteModel.connect`, :meth:`~RemoteModel.send`, :meth:`~RemoteModel.read_complete`,
  :meth:`~RemoteModel.stream_reader` or :meth:`~RemoteModel.read_stream`,
  :meth:`~RemoteModel.http_fault`); and ``execute_async``, the same template over the SDK's
  asynchronous client (:meth:`~RemoteModel.connect_async`, :meth:`~RemoteModel.send_async`,
  :meth:`~RemoteModel.close_async`), so that a request holds no thread while it waits: the
  same build, the same error mapping, retries, scrubbing and timeouts (one
  :class:`Exchange` each, which both templates drive);
* :class:`RemoteOptions` (``timeout``, ``max_retries``) and :class:`BaseURLOption`
  (``base_url``), declared once;
* :func:`scrub`, the one redaction of provider messages (the core's ``[REDACTED]``);
* :func:`resolve_prefixed` for ``provider/<any id>`` names, :func:`key_hint` from a
  :class:`~llmcli.models.KeySpec`;
* :func:`status_error` and :func:`transport_error`, the wording every provider shares, as the
  typed errors of :mod:`llmcli.errors` (:class:`ProviderStatusError`,
  :class:`ProviderTimeoutError`, :class:`ProviderConnectionError`, :class:`BrokenStreamError`).
  They may name ``-o timeout`` and ``-o max_retries`` because this module declares them.

Importing this module imports no SDK and no HTTP library: plugins import it when they load,
and ``llmcli --help`` must stay light. Transport exceptions are recognised by class name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol

from pydantic import Field

from llmcli import config
from llmcli.errors import (
    BrokenStreamError,
    LLMCLIError,
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeoutError,
)
from llmcli.models import (
    Chunk,
    KeySpec,
    Message,
    Model,
    Options,
    PrefillSent,
    Request,
    ToolResult,
    Usage,
)

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "BaseURLOption",
    "Call",
    "Exchange",
    "HTTPFault",
    "RemoteModel",
    "RemoteOptions",
    "StreamReader",
    "WireRequest",
    "error_body",
    "key_hint",
    "resolve_prefixed",
    "result_turns",
    "scrub",
    "status_error",
    "transport_error",
]

#: The longest provider message kept in an error line (an HTML error page is not a message).
MAX_DETAIL = 300

#: Seconds a request waits for the server when ``-o timeout`` is not given: for each wait
#: (connecting, the reply's first byte, each later read), not for the whole reply, so a long
#: streamed reply is never cut. The SDKs' own default (600 s, more with their retries) held
#: a request to an upstream that never answers for ten minutes.
DEFAULT_TIMEOUT = 300.0
#: The longest wait for a connection, whatever the timeout (the SDKs' own default).
CONNECT_TIMEOUT = 5.0


# -- options ---------------------------------------------------------------------------------


#: The kit's options, listed after a model's own (``llmcli models --options``, "known: ...").
_SHARED_OPTIONS = ("timeout", "max_retries", "base_url")


class RemoteOptions(Options):
    """``timeout`` and ``max_retries``, which every remote model takes. Subclass it (with
    :class:`BaseURLOption` when the endpoint may be moved) and add the model's own."""

    timeout: float | None = Field(
        default=None, gt=0,
        description=f"Seconds to wait for the server (default {DEFAULT_TIMEOUT:g})")
    max_retries: int = Field(
        default=2, ge=0, le=10,
        description="Retries on rate limits, server errors and lost connections")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # Inherited fields come first; a user looking for an option wants the model's own
        # first. Only the listing order changes (validation is already built).
        fields = cls.__pydantic_fields__
        own = [name for name in fields if name not in _SHARED_OPTIONS]
        shared = [name for name in _SHARED_OPTIONS if name in fields]
        reordered = {name: fields[name] for name in own + shared}
        fields.clear()
        fields.update(reordered)


class BaseURLOption(Options):
    """``base_url``: where the API lives, for a proxy or a gateway (default: the provider's
    ``*_BASE_URL`` variable, else its public URL)."""

    base_url: str | None = Field(
        default=None, description="API base URL (default: the provider's *_BASE_URL variable)")


# -- redaction, key hints, names ---------------------------------------------------------------

# Key shapes a provider may quote back, whole or partly masked ("sk-ab***cd"), and bearer
# tokens. Anthropic keys ("sk-ant-...") are one of the "sk-" shapes.
_KEY_SHAPES = re.compile(r"\bsk-[A-Za-z0-9_*\-]{4,}|(?<=[Bb]earer )(?!\[REDACTED\])\S+")


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` with ``secrets``, every key llmcli knows of (``config.scrub``) and anything
    shaped like an API key or a bearer token replaced by ``[REDACTED]``."""
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, config.REDACTED)
    return _KEY_SHAPES.sub(config.REDACTED, config.scrub(text))


def result_turns(message: Message, tool_message: Callable[[ToolResult], dict[str, Any]],
                 text_message: Callable[[Message], dict[str, Any]]) -> list[dict[str, Any]]:
    """A turn that carries tool results, on a chat wire that takes each as a message of its
    own (``role: tool``: OpenAI's and Mistral's): ``tool_message`` of every result, then the
    turn's own text and attachments as ``text_message``, where it has any."""
    turns = [tool_message(result) for result in message.tool_results]
    if message.content or message.attachments:
        turns.append(text_message(message))
    return turns


def error_body(body: Any) -> Any:
    """An error body as an SDK hands it over, parsed: JSON where it is JSON (a dict, a list,
    a string...), else its text stripped (None when empty). Each plugin then reads its own
    provider's fields out of it."""
    if isinstance(body, (str, bytes)):
        try:
            return json.loads(body)
        except ValueError:
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            return text.strip() or None
    return body


def key_hint(spec: KeySpec | None) -> str:
    """How to set the key, as :class:`~llmcli.errors.KeyNeededError` says it."""
    if spec is None:
        return ""
    hint = f"Run 'llmcli keys set {spec.name}'"
    if spec.env_var:
        hint += f" or set {spec.env_var}"
    return hint + "."


def resolve_prefixed(name: str, prefix: str, make: Callable[[str], Model | None], *,
                     bare: Callable[[str], bool] | None = None) -> Model | None:
    """For a ``resolve_model`` hook: ``<prefix>/<any id>`` → ``make(id)``; a name without the
    prefix only when ``bare(name)`` says so (``claude-haiku-4-5-20251001``). An empty id or
    one with whitespace is no model."""
    model_id = name.removeprefix(f"{prefix}/")
    if model_id == name and not (bare is not None and bare(name)):
        return None
    if not model_id or any(c.isspace() for c in model_id):
        return None
    return make(model_id)


def _one_line(text: str, limit: int | None = None) -> str:
    text = " ".join(text.split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


# -- the shared wording ------------------------------------------------------------------------

#: Status → (what happened, what to do) for the statuses every provider words alike; the
#: advice may use {key_hint} and {not_found_hint}.
_PHRASES: dict[int, tuple[str, str]] = {
    401: ("rejected the API key", "{key_hint}"),
    403: ("refused the request", "Check the key: {key_hint}"),
    404: ("found nothing there", "{not_found_hint}"),
    429: ("rate limit", "{retry_advice}"),
}
#: Statuses whose line says how often they were retried (the SDKs retry these).
_SHOWS_RETRIES = {429}


def status_error(
    provider: str,
    status: int | None,
    detail: str,
    *,
    key_hint: str = "",
    retried: str = "",
    kind: str = "",
    not_found_hint: str = "",
    provider_id: str | None = None,
    phrases: Mapping[int, tuple[str, str]] | None = None,
    retry_advice: str = "Wait, or raise -o max_retries.",
) -> ProviderStatusError:
    """The one-line error for an HTTP error status, worded the same for every provider.

    ``detail`` is the provider's own message (usually the most useful part); ``key_hint``
    says how to set the key (401/403); ``retried`` is e.g. " after 2 retries" (shown for 429
    and 5xx); ``kind`` an error type or code for other 4xx; ``phrases`` a provider's own
    statuses (Anthropic: ``{529: ("is overloaded", "Try again later.")}``). ``provider`` is
    the display name, ``provider_id`` the plugin's short name (default: ``provider``
    lower-cased). Scrub keys from ``detail`` before calling."""
    detail = detail.strip().rstrip(".") or "no details given"
    own = (phrases or {}).get(status) if status is not None else None
    label = str(status)
    if own is not None:
        (phrase, advice), shows_retries = own, True
    elif status in _PHRASES:
        (phrase, advice), shows_retries = _PHRASES[status], status in _SHOWS_RETRIES
    elif status is not None and status >= 500:
        phrase, advice, shows_retries = "server error", "", True
    else:
        phrase, advice, shows_retries = "rejected the request", "", False
        label += f", {kind}" if kind else ""
    advice = advice.format(key_hint=key_hint, not_found_hint=not_found_hint,
                           retry_advice=retry_advice)
    text = f"{provider} {phrase} ({label}){retried if shows_retries else ''}: {detail}"
    text += f". {advice}" if advice.strip() else ""
    return ProviderStatusError(_one_line(text), status=status,
                               provider=provider_id or provider.lower())


def transport_error(
    provider: str,
    kind: str,
    *,
    detail: str = "",
    limit: float | None = None,
    url: str = "",
    retried: str = "",
    provider_id: str | None = None,
    timeout_advice: str = "raise -o timeout",
) -> ProviderError:
    """The one-line error for a failure below HTTP, worded the same for every provider.

    ``kind`` is ``timeout`` (no answer within ``limit`` seconds), ``connect`` (``url`` could
    not be reached), ``stream`` (a started stream broke off), ``stalled`` (a started stream
    went silent past the timeout), ``ended`` (a stream ended cleanly before the model
    finished; ``detail`` names the missing marker), ``malformed`` (a body or event that is
    not JSON) or ``other``. ``detail`` is the underlying reason, ``retried`` e.g. " after 2
    retries". Scrub keys from ``detail`` before calling."""
    detail = _one_line(detail, MAX_DETAIL)
    reason = f": {detail}" if detail else ""
    error: type[ProviderError] = ProviderError
    if kind == "timeout":
        within = f"{limit:g}s" if limit else "the time limit"
        text = f"{provider} did not answer within {within}{retried}; {timeout_advice}"
        error = ProviderTimeoutError
    elif kind == "connect":
        where = f" at {url}" if url and url not in provider else ""
        text = f"Could not connect to {provider}{where}{retried}{reason}"
        error = ProviderConnectionError
    elif kind == "stream":
        text = f"{provider} stream broke off{reason}"
        error = BrokenStreamError
    elif kind == "stalled":
        text = f"{provider} stream stalled past the time limit{reason}; {timeout_advice}"
        error = BrokenStreamError
    elif kind == "ended":
        text = f"{provider}: the stream ended before the model finished"
        text += f" (no {detail})" if detail else ""
        error = BrokenStreamError
    elif kind == "malformed":
        text = f"{provider}: malformed response from the server (invalid JSON{reason})"
    else:
        text = f"{provider} request failed{reason}"
    return error(_one_line(text), provider=provider_id or provider.lower())


# -- the execute template --------------------------------------------------------------------


@dataclass
class WireRequest:
    """What :meth:`RemoteModel.build` makes of a request: the SDK call's keyword arguments,
    and the prefill as it goes out when that differs from the user's (else None)."""

    params: dict[str, Any]
    sent_prefill: str | None = None


@dataclass(frozen=True)
class HTTPFault:
    """What :meth:`RemoteModel.http_fault` reads from an SDK's HTTP error: the status, the
    provider's own message, and its error type or code (shown for other 4xx)."""

    status: int | None
    message: str
    kind: str = ""


@dataclass(frozen=True)
class Call:
    """One request in flight, as the hooks see it."""

    request: Request
    #: What :meth:`RemoteModel.import_sdk` returned.
    sdk: Any
    #: Where the request goes (:meth:`RemoteModel.endpoint`).
    base_url: str
    #: ``-o timeout``, else :data:`DEFAULT_TIMEOUT`.
    timeout: float | None = None
    max_retries: int = 2
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def options(self) -> Any:
        return self.request.options

    @property
    def connect_timeout(self) -> float | None:
        """The timeout for connecting: ``timeout``, at most :data:`CONNECT_TIMEOUT`."""
        return None if self.timeout is None else min(self.timeout, CONNECT_TIMEOUT)


class StreamReader(Protocol):
    """A stream's translation without I/O, fed one SDK event at a time (what
    :meth:`RemoteModel.stream_reader` returns): the same reader serves the synchronous
    stream and the asynchronous one."""

    def feed(self, event: Any) -> Iterable[Chunk]:
        """The chunks this event makes (text, :class:`~llmcli.models.Reasoning`, tool
        calls), if any."""
        ...

    def end(self) -> Iterable[Chunk]:
        """The stream has ended: what is left, then one :class:`~llmcli.models.Usage` only
        if the provider said the reply finished."""
        ...


class Exchange:
    """One call of :meth:`RemoteModel.execute` or ``execute_async``, without its I/O: the
    request built, the fallback a known refusal takes, each chunk tagged on its way out,
    a stream that ended early, and any failure as the typed, scrubbed error. The two
    templates differ only in how they wait."""

    def __init__(self, model: RemoteModel, request: Request) -> None:
        self.model = model
        self.request = request
        options = request.options
        self.call = Call(request=request, sdk=model.import_sdk(), base_url=model.endpoint(request),
                         timeout=getattr(options, "timeout", None) or DEFAULT_TIMEOUT,
                         max_retries=getattr(options, "max_retries", 2),
                         secrets=(request.key,) if request.key else ())
        self.wire = model.build(request)
        #: What the fallback changed ("" when the request went as built).
        self.retried = ""
        #: The stream has started: the SDK does not retry from here.
        self.streaming = False
        self.finished = False

    def prefill_sent(self) -> Iterator[Chunk]:
        if self.wire.sent_prefill is not None:
            yield PrefillSent(self.wire.sent_prefill)

    def fall_back(self, exc: Exception) -> bool:
        """Whether the refusal ``exc`` has another form of the request to send instead (now
        in :attr:`wire`)."""
        fault = self.model.http_fault(exc, self.call)
        again = (self.model.fallback(fault, self.request) if isinstance(fault, HTTPFault)
                 else None)
        if again is None:
            return False
        self.request, self.retried = again
        self.call = replace(self.call, request=self.request)
        self.wire = self.model.build(self.request)
        return True

    def tagged(self, chunk: Chunk) -> Chunk:
        """A chunk on its way out; the :class:`Usage` that says the reply finished."""
        if isinstance(chunk, Usage):
            self.finished = True
            if self.retried:
                chunk.details["retried"] = self.retried
        return chunk

    def check_finished(self) -> None:
        """A stream that ended without its end marker was cut short."""
        if not self.finished:
            model = self.model
            raise transport_error(model.provider_name, "ended", detail=model.end_marker,
                                  provider_id=model._provider_id())

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Any failure inside as the typed, scrubbed one-line error."""
        try:
            yield
        except LLMCLIError:
            raise
        except Exception as exc:
            # from None: an SDK's exception chain can carry the request's headers (the key).
            raise self.model.error_for(exc, self.call, mid_stream=self.streaming) from None


# Exceptions recognised by class name, so that this module imports no HTTP library: httpx's,
# and the SDKs' wrappers around them (anthropic and openai: APITimeoutError is a kind of
# APIConnectionError; mistralai raises httpx's own).
_TIMEOUTS = frozenset({"TimeoutException", "APITimeoutError"})
_CONNECTS = frozenset({"ConnectError", "NoResponseError", "APIConnectionError"})


class RemoteModel(Model):
    """A model behind a remote API. Subclasses set the class attributes below, ``model_id``,
    ``needs_key`` and ``Options`` (a :class:`RemoteOptions`), and implement the hooks; the
    template does the rest, the same way for every provider."""

    #: The provider in messages ("Anthropic"; an OpenAI-compatible server: its id and URL).
    provider_name: str = ""
    #: ``ProviderError.provider`` (default: ``provider_name`` lower-cased).
    provider_id: str = ""
    #: The environment variable that moves the endpoint, and the public endpoint.
    base_url_env: str | None = None
    default_base_url: str = ""
    #: False when the SDK retries within a time window and "after N retries" would be a guess.
    retries_counted: bool = True
    #: Statuses this provider words its own way (see :func:`status_error`).
    status_phrases: ClassVar[Mapping[int, tuple[str, str]]] = {}
    #: What a finished stream ends with, named when a stream ends without it.
    end_marker: str = "finish_reason"

    Options = RemoteOptions  # type: ignore[assignment]

    # -- hooks: the wire translation ---------------------------------------------------------

    def import_sdk(self) -> Any:
        """Import and return the SDK (here, never at module level: start-up stays light)."""
        raise NotImplementedError

    def build(self, request: Request) -> WireRequest:
        """The SDK call's arguments for ``request`` (pure: no I/O)."""
        raise NotImplementedError

    def connect(self, call: Call) -> Any:
        """A client for this call (``call.base_url``, ``call.timeout``, ``call.max_retries``,
        ``call.request.key``); :meth:`close` releases it."""
        raise NotImplementedError

    def send(self, client: Any, wire: WireRequest, call: Call) -> Any:
        """Send the request: the whole reply, or (``call.request.stream``) a stream."""
        raise NotImplementedError

    def read_complete(self, reply: Any, call: Call) -> Iterator[Chunk]:
        """Text, then a :class:`~llmcli.models.Usage`, from a whole reply."""
        raise NotImplementedError

    def stream_reader(self, call: Call) -> StreamReader:
        """The stream's translation, fed one event at a time (:class:`StreamReader`): text
        as it arrives, then one :class:`~llmcli.models.Usage`, only if the provider said the
        reply finished (a stream that ends without it was cut short, and the template
        reports that as :class:`BrokenStreamError`). Implement this, or :meth:`read_stream`
        alone for a model without ``execute_async``."""
        raise NotImplementedError

    def read_stream(self, stream: Any, call: Call) -> Iterator[Chunk]:
        """Text as it arrives, then one :class:`~llmcli.models.Usage`: by default, the
        :meth:`stream_reader` fed each event of ``stream``."""
        reader = self.stream_reader(call)
        for event in stream:
            yield from reader.feed(event)
        yield from reader.end()

    # -- hooks of execute_async (connect_async and stream_reader make it native) -----------

    def connect_async(self, call: Call) -> Any:
        """An asynchronous client for this call, as :meth:`connect` makes the other."""
        raise NotImplementedError

    async def send_async(self, client: Any, wire: WireRequest, call: Call) -> Any:
        """:meth:`send` on the asynchronous client: the whole reply, or an async stream. By
        default :meth:`send`'s call awaited, for an SDK whose asynchronous client has the
        same methods (Anthropic's, OpenAI's)."""
        return await self.send(client, wire, call)

    async def close_async(self, client: Any) -> None:
        """Release the asynchronous client's connections."""
        close = getattr(client, "close", None)
        if callable(close):
            await close()

    def native_async(self) -> bool:
        """Whether this model implements the hooks of ``execute_async`` (else it runs
        ``execute`` on a worker thread)."""
        own = type(self)
        return (own.connect_async is not RemoteModel.connect_async
                and own.stream_reader is not RemoteModel.stream_reader)

    def http_fault(self, exc: BaseException, call: Call) -> HTTPFault | ProviderError | None:
        """An SDK's HTTP error as an :class:`HTTPFault`, a ready error for a failure only this
        SDK has, or None for anything else (timeouts, lost connections, broken streams and
        invalid JSON are recognised by the template)."""
        return None

    def fallback(self, fault: HTTPFault, request: Request) -> tuple[Request, str] | None:
        """A known refusal that another form of the same request avoids (a server that
        refuses a prefill while its template thinks): that request, sent once instead, and
        what changed (kept in the log's usage details as ``retried``). None by default."""
        return None

    def close(self, client: Any) -> None:
        """Release the client's connections (one client per request)."""
        close = getattr(client, "close", None)
        if callable(close):
            close()

    def retried_status(self, status: int) -> bool:
        """Whether the SDK retries this status (so ``max_retries`` were spent on it)."""
        return status in (408, 409, 429) or status >= 500

    def endpoint(self, request: Request) -> str:
        """Where requests go: ``-o base_url``, else ``base_url_env``, else the default."""
        return (getattr(request.options, "base_url", None)
                or (os.environ.get(self.base_url_env) if self.base_url_env else None)
                or self.default_base_url)

    def key_hint(self) -> str:
        """How to set the key, for 401 and 403 (derived from ``needs_key``)."""
        return key_hint(self.needs_key)

    def not_found_hint(self, call: Call) -> str:
        """What to check after a 404 (nothing by default)."""
        return ""

    # -- the template ------------------------------------------------------------------------

    def execute(self, request: Request) -> Iterator[Chunk]:
        run = Exchange(self, request)
        yield from run.prefill_sent()
        client = None
        with run.errors():
            try:
                client = self.connect(run.call)
                try:
                    reply = self.send(client, run.wire, run.call)
                except Exception as exc:
                    if not run.fall_back(exc):
                        raise
                    reply = self.send(client, run.wire, run.call)
                if not run.request.stream:
                    yield from map(run.tagged, self.read_complete(reply, run.call))
                    return
                run.streaming = True
                with reply if hasattr(reply, "__enter__") else contextlib.nullcontext():
                    yield from map(run.tagged, self.read_stream(reply, run.call))
                run.check_finished()
            finally:
                if client is not None:
                    self.close(client)

    async def execute_async(self, request: Request) -> AsyncIterator[Chunk]:
        """:meth:`execute` over the SDK's asynchronous client (where the plugin implements
        its hooks: :meth:`native_async`); otherwise ``execute`` on a worker thread."""
        if not self.native_async():
            async for chunk in super().execute_async(request):
                yield chunk
            return
        run = Exchange(self, request)
        for chunk in run.prefill_sent():
            yield chunk
        client = None
        with run.errors():
            try:
                client = self.connect_async(run.call)
                try:
                    reply = await self.send_async(client, run.wire, run.call)
                except Exception as exc:
                    if not run.fall_back(exc):
                        raise
                    reply = await self.send_async(client, run.wire, run.call)
                if not run.request.stream:
                    for chunk in self.read_complete(reply, run.call):
                        yield run.tagged(chunk)
                    return
                run.streaming = True
                reader = self.stream_reader(run.call)
                async with reply if hasattr(reply, "__aenter__") else contextlib.nullcontext():
                    async for event in reply:
                        for chunk in reader.feed(event):
                            yield run.tagged(chunk)
                for chunk in reader.end():
                    yield run.tagged(chunk)
                run.check_finished()
            finally:
                if client is not None:
                    await self.close_async(client)

    def error_for(self, exc: BaseException, call: Call, *,
                  mid_stream: bool = False) -> ProviderError:
        """The typed, scrubbed one-line error for whatever the SDK raised."""
        fault = self.http_fault(exc, call)
        if isinstance(fault, ProviderError):
            error = fault
        elif fault is not None:
            # An error inside a started stream comes after the SDK's retries are over.
            error = self.http_error(fault, retries=0 if mid_stream else call.max_retries,
                                    not_found_hint=self.not_found_hint(call),
                                    secrets=call.secrets)
        else:
            error = self._transport(exc, call, mid_stream)
        error.args = (_one_line(scrub(str(error), *call.secrets)), *error.args[1:])
        return error

    def http_error(self, fault: HTTPFault, *, retries: int = 0, not_found_hint: str = "",
                   secrets: tuple[str, ...] = ()) -> ProviderStatusError:
        """:func:`status_error` for this provider (pure: also for testing error bodies)."""
        retried = ""
        if fault.status is not None and self.retried_status(fault.status):
            retried = self._after(retries)
        return status_error(
            self.provider_name, fault.status,
            _one_line(scrub(fault.message, *secrets), MAX_DETAIL),
            key_hint=self.key_hint(), retried=retried, kind=fault.kind,
            not_found_hint=not_found_hint, provider_id=self._provider_id(),
            phrases=self.status_phrases, retry_advice=self._retry_advice())

    # -- internals ---------------------------------------------------------------------------

    def _provider_id(self) -> str:
        return self.provider_id or self.provider_name.lower()

    def _after(self, retries: int) -> str:
        if retries <= 0:
            return ""
        if not self.retries_counted:
            return " after retrying"
        return f" after {retries} {'retry' if retries == 1 else 'retries'}"

    def _has_option(self, name: str) -> bool:
        return name in self.Options.model_fields

    def _retry_advice(self) -> str:
        if self._has_option("max_retries"):
            return "Wait, or raise -o max_retries."
        return "Wait, and try again."

    def _transport(self, exc: BaseException, call: Call, mid_stream: bool) -> ProviderError:
        names = {cls.__name__ for cls in type(exc).__mro__}
        # The SDKs wrap httpx's exception; its own words are in the cause.
        cause = exc.__cause__ if names & (_TIMEOUTS | _CONNECTS) and exc.__cause__ else exc
        if isinstance(exc, json.JSONDecodeError):
            kind, detail = "malformed", str(exc)
        elif names & _TIMEOUTS:
            kind, detail = ("stalled" if mid_stream else "timeout"), ""
        elif names & _CONNECTS and not mid_stream:
            kind, detail = "connect", str(cause)
        else:
            kind = "stream" if mid_stream else "other"
            detail = f"{type(cause).__name__}: {cause}"
        return transport_error(
            self.provider_name, kind, detail=scrub(detail, *call.secrets), limit=call.timeout,
            url=call.base_url, retried="" if mid_stream else self._after(call.max_retries),
            provider_id=self._provider_id(),
            timeout_advice=("raise -o timeout" if self._has_option("timeout")
                            else "try again later"))
