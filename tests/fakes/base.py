"""A tiny threaded HTTP server on 127.0.0.1 for speaking provider wire formats in tests.

A fake provider subclasses :class:`FakeServer` and implements ``handle(request)`` returning a
:class:`Reply`: JSON with a status and headers, or a server-sent-event stream that may be cut
off mid-way (``cut_after``) to imitate a broken connection. Every request is recorded in
``server.requests`` so tests can assert what the SDK actually sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _QuietServer(ThreadingHTTPServer):
    """Clients that reset idle keep-alive connections (closing an SDK client, a test
    timing out) are normal here, not errors worth a traceback on stderr."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or raw text when not JSON
    #: The body's bytes as sent (what a request signature covers).
    raw: bytes = b""


@dataclass
class Reply:
    status: int = 200
    json_body: Any = None
    raw_body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: For streaming: each item is one raw SSE frame (use :func:`sse`), or raw bytes.
    events: Iterable[str | bytes] | None = None
    #: Close the connection after this many events (a broken stream).
    cut_after: int | None = None
    #: Sleep this long before answering (to trigger client timeouts).
    delay: float = 0.0


def sse(data: Any, event: str | None = None) -> str:
    """One server-sent event frame; ``data`` is JSON-encoded unless it is a str."""
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n"


class FakeServer:
    """Subclass and implement :meth:`handle`. Use as a context manager or start()/stop()."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- to override ---------------------------------------------------------------------
    def handle(self, request: RecordedRequest) -> Reply:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- plumbing ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                recorded = RecordedRequest(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                    raw,
                )
                server.requests.append(recorded)
                reply = server.handle(recorded)
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    if reply.events is not None:
                        self._send_stream(reply)
                    else:
                        self._send_body(reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send_body(self, reply: Reply) -> None:
                if reply.raw_body is not None:
                    data = reply.raw_body
                else:
                    data = json.dumps(reply.json_body).encode()
                self.send_response(reply.status)
                headers = {"content-type": "application/json", **reply.headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _send_stream(self, reply: Reply) -> None:
                self.send_response(reply.status)
                headers = {"content-type": "text/event-stream", "cache-control": "no-cache",
                           **reply.headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                assert reply.events is not None
                for i, event in enumerate(reply.events):
                    if reply.cut_after is not None and i >= reply.cut_after:
                        # Abort without the terminating chunk: the client sees a broken stream.
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    data = event.encode() if isinstance(event, str) else event
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            do_GET = do_POST = do_DELETE = _serve

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        # A short poll interval keeps stop() (and so each test) from waiting up to 0.5 s.
        httpd = self._httpd
        self._thread = threading.Thread(
            target=lambda: httpd.serve_forever(poll_interval=0.02), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- helpers shared by provider fakes (additive) ---------------------------------------------


def split_text(text: str, size: int) -> list[str]:
    """Cut ``text`` into pieces of ``size`` characters, the way a fake streams its reply.

    Small pieces make the SDK and the normalizer see prefixes split across chunks."""
    if size <= 0:
        return [text]
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class ScriptedServer(FakeServer):
    """A fake that serves ``queued`` replies first (errors, rate limits: one per request), then
    the provider's normal behaviour from :meth:`respond`."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: list[Reply] = []

    def enqueue(self, *replies: Reply) -> None:
        """Serve these first, one per request (every fake has this)."""
        self.queued.extend(replies)

    def handle(self, request: RecordedRequest) -> Reply:
        if self.queued:
            return self.queued.pop(0)
        return self.respond(request)

    def respond(self, request: RecordedRequest) -> Reply:  # pragma: no cover - abstract
        raise NotImplementedError
