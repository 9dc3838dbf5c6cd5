"""What a request must pass before any model sees it, and the server's bounds.

:class:`Guard` is ASGI middleware around the application; each refusal is answered in the
wire's own error shape (Anthropic's on ``/v1/messages``, OpenAI's elsewhere):

* **Host and Origin** (403): loopback names by default (``localhost``, ``127.x.x.x``,
  ``[::1]``, any port), the server's own address when it listens on another one, and what
  ``--allowed-host`` adds (``*``: any, for a server behind a reverse proxy). A web page from
  elsewhere sends its own Origin; one that reaches this server through DNS rebinding (its
  name resolving to 127.0.0.1) sends its own Host (Ollama's answer to CVE-2024-28224).
* **POST bodies**: ``Content-Type: application/json`` (415); at most ``max_body`` bytes,
  counted as they arrive, so a chunked body or one without a Content-Length is bounded too
  (413); all of it within ``read_timeout`` seconds (408). :func:`http_protocol` closes a
  connection whose request headers take longer than that.
* **Concurrency** (429 with ``Retry-After``): at most ``max_concurrent`` model requests at
  once, streams included, and requests waiting for a model's slots
  (:func:`llmcli.serve.exchange.model_slots`) among them.

And for the routes: :func:`choose_model` (the ``--allow-model`` allowlist) and
:func:`refuse_loop` (a model whose base URL is this server).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from llmcli import api
from llmcli.contract import Model, Request
from llmcli.errors import LLMCLIError
from llmcli.serve.errors import WireError, anthropic_body, openai_body

if TYPE_CHECKING:
    from llmcli.serve.app import ServeSettings

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_CONCURRENT",
    "DEFAULT_READ_TIMEOUT",
    "Guard",
    "choose_model",
    "http_protocol",
    "is_loopback_host",
    "refuse_loop",
    "served_models",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY = 4 * 1024 * 1024
DEFAULT_MAX_CONCURRENT = 64
DEFAULT_READ_TIMEOUT = 30.0
#: The routes that run a model: what ``max_concurrent`` counts.
MODEL_ROUTES = ("/v1/chat/completions", "/v1/messages")
#: An oversized body is read and thrown away up to this much before the 413, so that a
#: client still sending it reads the answer instead of a reset connection; past it the
#: connection is closed.
DRAIN_LIMIT = 64 * 1024 * 1024


class _Gone(Exception):
    """The client disconnected while its request was being read: nobody to answer."""


# -- hosts ------------------------------------------------------------------------------------


def _split_host(value: str) -> tuple[str, int | None]:
    """``host[:port]`` (``[v6]:port`` too) → (lower-cased host without a trailing dot, port)."""
    value = value.strip()
    port: int | None = None
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    else:
        host, sep, tail = value.rpartition(":")
        if sep and tail.isdigit() and ":" not in host:
            port = int(tail)
        else:
            host = value
    return host.lower().rstrip("."), port


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_loopback_host(host: str) -> bool:
    """``localhost`` (and ``*.localhost``, which resolve to loopback by definition), or a
    loopback address (``127.x.x.x``, ``::1``)."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    address = _ip(host)
    return address is not None and address.is_loopback


@lru_cache(maxsize=256)
def _is_local_address(address: str) -> bool:
    """Whether ``address`` (an IP) is one of this machine's: loopback, unspecified, or one a
    socket can bind to (no packet is sent)."""
    ip = _ip(address)
    if ip is None:
        return False
    if ip.is_loopback or ip.is_unspecified:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(ip), 0))
    except OSError:
        return False
    return True


def _is_this_machine(host: str, port: int) -> bool:
    """Whether ``host`` names this machine: a loopback or local address, ``localhost``, the
    machine's host name, or a name that resolves to one of its addresses."""
    if is_loopback_host(host) or host == socket.gethostname().lower():
        return True
    if _ip(host) is not None:
        return _is_local_address(str(_ip(host)))
    try:  # "127.1", "2130706433", a name in /etc/hosts or the DNS
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return any(_is_local_address(str(info[4][0])) for info in infos)


class HostCheck:
    """The Host and Origin names a request may carry."""

    def __init__(self, allowed: tuple[str, ...], bound: tuple[str, int] | None) -> None:
        self.any = "*" in allowed
        self.names: set[str] = set()
        self.with_port: set[tuple[str, int]] = set()
        for entry in allowed:
            host, port = _split_host(entry)
            if port is None:
                self.names.add(host)
            else:
                self.with_port.add((host, port))
        self.bound = bound

    def allows(self, host: str, port: int | None) -> bool:
        if self.any or is_loopback_host(host) or host in self.names:
            return True
        if port is not None and (host, port) in self.with_port:
            return True
        if self.bound is None or is_loopback_host(self.bound[0]):
            return False
        # Listening on another address: that address (or, on 0.0.0.0 / ::, any of this
        # machine's addresses, and its host name) is the server's own.
        bound = _ip(self.bound[0])
        if bound is not None and bound.is_unspecified:
            return host == socket.gethostname().lower() or (
                _ip(host) is not None and _is_local_address(str(_ip(host))))
        return _ip(host) is not None and _ip(host) == bound

    def check(self, headers: dict[str, str]) -> None:
        if self.any:
            return
        host_header = headers.get("host")
        if host_header is not None and not self.allows(*_split_host(host_header)):
            raise WireError(403, f"Host {_shown(host_header)} is not allowed: llmcli serve "
                            "answers requests addressed to it by a loopback name or an "
                            "--allowed-host name", "permission_error", "host_not_allowed")
        origin = headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            try:
                port = parts.port
            except ValueError:
                port = None
            if not parts.hostname or not self.allows(parts.hostname.rstrip("."), port):
                raise WireError(403, f"Origin {_shown(origin)} is not allowed: llmcli serve "
                                "answers web pages served from a loopback name or an "
                                "--allowed-host name", "permission_error",
                                "origin_not_allowed")


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


# -- the middleware ---------------------------------------------------------------------------


def _anthropic(path: str, headers: dict[str, str]) -> bool:
    return path.startswith("/v1/messages") or (path.startswith("/v1/models")
                                               and "anthropic-version" in headers)


class Guard:
    """ASGI middleware: Host/Origin, content type, body size and read time, concurrency."""

    def __init__(self, app: ASGIApp, settings: ServeSettings) -> None:
        self.app = app
        self.settings = settings
        self.active = 0
        self._hosts: HostCheck | None = None

    def hosts(self) -> HostCheck:
        # Built on the first request: the bound address is known only once listening.
        if self._hosts is None:
            self._hosts = HostCheck(tuple(self.settings.allowed_hosts), self.settings.bound)
        return self._hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        path: str = scope.get("path", "")
        post = scope.get("method") == "POST"
        anthropic = _anthropic(path, headers)
        try:
            self.hosts().check(headers)
            if post:
                kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
                if kind != "application/json":
                    raise WireError(415, "The request body must be JSON, sent with "
                                    "'Content-Type: application/json'",
                                    "invalid_request_error", "unsupported_media_type")
        except WireError as error:
            # The body is left unread: the connection cannot serve another request.
            await _answer(send, error, anthropic, {"connection": "close"} if post else None)
            return
        counted = post and path in MODEL_ROUTES
        if counted:
            if self.active >= self.settings.max_concurrent:
                await _answer(send, WireError(
                    429, f"llmcli serve is answering {self.settings.max_concurrent} "
                    "requests already (--max-concurrent); retry shortly",
                    "rate_limit_error", "too_many_requests"), anthropic,
                    {"retry-after": "1", "connection": "close"})
                return
            self.active += 1  # from here: a slot is held while the body is read, too
        try:
            if post:
                try:
                    body = await self._read(headers, receive)
                except _Gone:
                    return
                except _Refused as refused:
                    await _answer(send, refused.error, anthropic, refused.headers)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send)
        finally:
            if counted:
                self.active -= 1

    async def _read(self, headers: dict[str, str], receive: Receive) -> bytes:
        """The whole body, within the size and time limits."""
        limit = self.settings.max_body
        deadline = time.monotonic() + self.settings.read_timeout
        too_large = WireError(413, f"The request body is larger than {_size(limit)} "
                              "(--max-body)", "invalid_request_error", "request_too_large")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise await self._drained(receive, deadline, too_large)
        parts: list[bytes] = []
        size = 0
        while True:
            message = await self._next(receive, deadline)
            if message["type"] == "http.disconnect":
                raise _Gone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                if not message.get("more_body", False):
                    raise _Refused(too_large)
                raise await self._drained(receive, deadline, too_large, size)
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    async def _next(self, receive: Receive, deadline: float) -> Message:
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            async with asyncio.timeout(left):
                return await receive()
        except TimeoutError:
            raise _Refused(WireError(
                408, f"The request body did not arrive within {self.settings.read_timeout:g} "
                "seconds (--read-timeout)", "invalid_request_error", "request_timeout"),
                {"connection": "close"}) from None

    async def _drained(self, receive: Receive, deadline: float, error: WireError,
                       size: int = 0) -> _Refused:
        """Read and drop the rest of an oversized body (up to :data:`DRAIN_LIMIT` and the
        deadline), so that the client, still sending, then reads the 413."""
        with contextlib.suppress(_Refused):
            while size <= DRAIN_LIMIT:
                message = await self._next(receive, deadline)
                if message["type"] == "http.disconnect":
                    raise _Gone
                size += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return _Refused(error)
        return _Refused(error, {"connection": "close"})


class _Refused(Exception):
    def __init__(self, error: WireError, headers: dict[str, str] | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.headers = headers or {}


def _size(count: int) -> str:
    for unit, scale in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if count >= scale and count % scale == 0:
            return f"{count // scale} {unit}"
    return f"{count} bytes"


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body read already, then what the client sends next
    (its disconnect, which the routes watch for)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(send: Send, error: WireError, anthropic: bool,
                  headers: dict[str, str] | None = None) -> None:
    content = json.dumps(anthropic_body(error) if anthropic else openai_body(error)).encode()
    raw = [(b"content-type", b"application/json"),
           (b"content-length", str(len(content)).encode())]
    raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": raw})
    await send({"type": "http.response.body", "body": content, "more_body": False})


# -- request headers, read in time ------------------------------------------------------------


def http_protocol(read_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request headers do not arrive
    within ``read_timeout`` seconds of its opening (or of the first byte of its next
    request): uvicorn waits for them forever, so a client that sends half a request and
    stops would hold a connection open as long as it liked."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def _idle(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._timer is None:
                self._timer = self.loop.call_later(read_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _too_slow(self) -> None:
            self._timer = None
            if self._idle() and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            before = self.cycle
            if self._idle():
                self._arm()
            super().data_received(data)
            if self.cycle is not before and self.cycle is not None:
                self._disarm()  # a request's headers have arrived

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return TimedH11Protocol


# -- models -----------------------------------------------------------------------------------


def not_served(name: str) -> WireError:
    return WireError(404, f"Model {_shown(name)} is not available on this server",
                     "invalid_request_error", "model_not_found", "model")


def choose_model(settings: ServeSettings, name: str | None) -> Model:
    """The model a request names (the default model when it names none), if this server
    serves it: with an allowlist (``--allow-model``) any other is "not available", whether
    or not llmcli knows it, so that a client learns nothing of the models not allowed."""
    allowed = settings.allowed_models
    if allowed is None or name is None:
        return api.get_model(name or settings.default_model)
    try:
        model = api.get_model(name)
    except LLMCLIError:
        raise not_served(name) from None
    if model.model_id not in allowed:
        raise not_served(name)
    return model


def served_models(settings: ServeSettings) -> list[Model]:
    """What ``/v1/models`` lists: every model, or the allowed ones."""
    if settings.allowed_models is None:
        return api.get_models()
    return [api.get_model(model_id) for model_id in settings.allowed_models]


def refuse_loop(settings: ServeSettings, model: Model, request: Request) -> None:
    """A 400 when the model's requests would go to this server itself (a ``vllm/`` model
    with serve on localhost:8000, an ``ANTHROPIC_BASE_URL`` pointing here): each would
    come back as a new request, and so on."""
    endpoint = getattr(model, "endpoint", None)  # RemoteModel's: where its requests go
    if settings.bound is None or not callable(endpoint):
        return
    try:
        url = endpoint(request)
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except (TypeError, ValueError):
        return
    if parts.hostname and port == settings.bound[1] and _is_this_machine(
            parts.hostname.lower().rstrip("."), port):
        raise WireError(400, f"Model {_shown(model.model_id)} is served at this server's own "
                        "address: its requests would come back here", "invalid_request_error",
                        "model_loops", "model")
