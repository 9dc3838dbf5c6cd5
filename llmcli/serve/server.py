"""Run the application on uvicorn: bind first (so ``--port 0`` works and the address printed
is the real one), then serve until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from llmcli.serve.app import ServeSettings, create_app
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
    # llmcli keeps the grace period itself (_Server); uvicorn's own limit, a second later,
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

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            timer = asyncio.get_running_loop().call_later(grace, cut_short)
            try:
                await super().shutdown(sockets)
            finally:
                timer.cancel()

    return Server(config)


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
