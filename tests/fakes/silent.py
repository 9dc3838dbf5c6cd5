"""An upstream that takes requests and never answers them: for cancellation and shutdown tests.

Each connection's request is read whole (so the client is left waiting for the reply, as with
a provider that hangs); then, if ``prefix`` is given, a 200 stream starts with those raw
server-sent-event frames and goes silent; otherwise nothing at all is sent. The connection
stays open until the client closes it (or :meth:`SilentUpstream.stop`), and the server counts
what it saw: ``accepted`` connections, ``requests`` (parsed JSON bodies) and ``open`` ones, so
a test can tell that a cancelled client really let go of its connection.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

__all__ = ["SilentUpstream", "openai_chunk"]


def openai_chunk(text: str) -> bytes:
    """One Chat Completions stream event carrying ``text``."""
    payload = {"id": "chatcmpl-silent", "object": "chat.completion.chunk", "created": 0,
               "model": "gpt-4o", "choices": [{"index": 0, "delta": {"content": text},
                                               "finish_reason": None}]}
    return f"data: {json.dumps(payload)}\n\n".encode()


class SilentUpstream:
    def __init__(self, prefix: list[bytes] | None = None) -> None:
        self.prefix = prefix
        self.requests: list[Any] = []
        self.accepted = 0
        self.open = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> SilentUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._listener.close()

    def wait(self, condition: Any, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for the upstream")
            time.sleep(0.01)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self.open += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(0.1)
            data = b""
            while b"\r\n\r\n" not in data:
                data += self._recv(conn)
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                body += self._recv(conn)
            with self._lock:
                self.requests.append(json.loads(body) if body else None)
            if self.prefix is not None:
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
                for frame in self.prefix:
                    conn.sendall(f"{len(frame):x}\r\n".encode() + frame + b"\r\n")
            while True:  # silent until the client lets go
                self._recv(conn)
        except (ConnectionError, _Closed, OSError):
            pass
        finally:
            conn.close()
            with self._lock:
                self.open -= 1

    def _recv(self, conn: socket.socket) -> bytes:
        while not self._stopping.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise _Closed
            return data
        raise _Closed


class _Closed(Exception):
    pass
