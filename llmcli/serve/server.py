"""Run the application on uvicorn: bind first (so ``--port 0`` works and the address printed
is the real one), then serve until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from llmcli.serve.app import ServeSettings, create_app, shutting_down_body
from llmcli.serve.guard import http_protocol

__all__ = ["bind", "serve"]


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    except OSError:
        sock.close()
        raise
    return sock


def serve(settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000,
          grace: int = 10) -> None:
    """Serve until interrupted. In-flight requests get ``grace`` seconds to finish; then
    they are cancelled, and each logs what arrived as partial."""
    import uvicorn

    app = create_app(settings)
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    settings.bound = (bound_host, bound_port)  # a model whose URL is this: refused
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    # The h11 protocol with a deadline on request headers (guard.http_protocol).
    # llmcli keeps the grace period itself (_server); uvicorn's own limit, a second later,
    # only cancels what still runs then (a handler stuck past its exchange's end).
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=grace + 1,
                            lifespan="on", http=http_protocol(settings.read_timeout))
    server = _server(config, grace, app.state.cut_short)
    sys.stdout.write(
        f"llmcli serve: listening on http://{shown}:{bound_port}/v1 "
        "(OpenAI: /v1/chat/completions, /v1/models; Anthropic: /v1/messages)\n")
    sys.stdout.flush()
    with _QuietSignals():
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()
    sys.stdout.write("llmcli serve: stopped\n")
    sys.stdout.flush()


def _server(config: Any, grace: float, cut_short: Callable[[], None]) -> Any:
    """uvicorn's server, whose shutdown ends the requests still in flight ``grace`` seconds
    after it begins with a 503 or an error event closing their streams (``cut_short``):
    every response completes, and its connection closes. (uvicorn's own way, cancelling the
    request's task, breaks a stream mid-event and logs a traceback.)"""
    import uvicorn

    config.app = _AnswerWhenCancelled(config.app)

    class Server(uvicorn.Server):
        #: When the first Ctrl-C or SIGTERM came: the grace period counts from it (a busy
        #: event loop may start the shutdown itself a while later).
        signalled: float | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.signalled is None:
                self.signalled = time.monotonic()
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            began = self.signalled if self.signalled is not None else time.monotonic()
            # The event loop's clock is time.monotonic().
            timer = asyncio.get_running_loop().call_at(began + grace, cut_short)
            # uvicorn's own limit (it cancels what still runs) a second after the cut.
            # (typed int, but handed to asyncio.timeout, which takes any number of seconds)
            self.config.timeout_graceful_shutdown = max(  # type: ignore[assignment]
                0.0, began + grace + 1 - time.monotonic())
            try:
                await super().shutdown(sockets)
            finally:
                timer.cancel()

    return Server(config)


class _AnswerWhenCancelled:
    """The ASGI application as uvicorn runs it. A request still running a second after the
    grace period (its response had not ended when llmcli cut it short) has its task
    cancelled by uvicorn; it then ends here with a 503 or its stream's closing error event,
    as a request cut short at the grace period's end does, instead of a traceback on stderr
    and a connection dropped mid-event."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = ended = stream = False

        async def watched(message: Any) -> None:
            nonlocal started, ended, stream
            if message["type"] == "http.response.start":
                started = True
                stream = any(name.lower() == b"content-type" and value.startswith(
                    b"text/event-stream") for name, value in message.get("headers", []))
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                ended = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except asyncio.CancelledError:  # uvicorn only cancels a request when it stops
            if ended:
                return
            with contextlib.suppress(Exception):
                if not started:
                    await send({"type": "http.response.start", "status": 503, "headers": [
                        (b"content-type", b"application/json"), (b"connection", b"close")]})
                    body = shutting_down_body(scope.get("path", ""), stream=False)
                elif stream:
                    body = shutting_down_body(scope.get("path", ""), stream=True)
                else:  # a whole body under way: only its end is left to send
                    body = b""
                await send({"type": "http.response.body", "body": body, "more_body": False})


class _QuietSignals:
    """uvicorn re-raises the Ctrl-C or SIGTERM it shut down for once it has finished, with
    the handlers it found installed: make those a no-op, so a stop after a clean shutdown
    is a normal exit rather than a KeyboardInterrupt (or an abrupt kill by SIGTERM)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> None:
        self._saved = {}
        if threading.current_thread() is threading.main_thread():
            self._saved = {sig: signal.signal(sig, lambda *_: None) for sig in self.SIGNALS}

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
