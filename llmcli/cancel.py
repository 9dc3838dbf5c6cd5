"""Cancelling a response from another thread, even while its backend is blocked in a read.

A backend is a synchronous generator; the thread that runs it may sit in a socket read for
as long as the provider's SDK allows (minutes) when the upstream says nothing. Setting a
flag is not enough to stop such a thread, and closing the socket from another thread does not
wake a blocked read either; shutting the socket down does (the read returns at once, and
the SDK raises). The SDKs keep their sockets to themselves, so :class:`Cancellation` learns
them the one way that works for any of them (httpx, urllib, a plain or TLS socket, a Unix
socket): a process-wide audit hook (:func:`sys.addaudithook`, installed once, on first use)
sees every ``socket.connect`` and hands the socket to the cancellation that the connecting
thread is running under (:meth:`Cancellation.running`). A connection attempted after the
cancellation is refused in the same hook, with an exception no SDK retries.

A socket is remembered by its file descriptor and the kernel's inode of the socket behind it
(a TLS wrapper takes the descriptor over from the socket object that connected): at cancel
time the descriptor is duplicated and shut down only if it still names the same socket, so a
descriptor that has since been closed and reused by another connection is never touched.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Iterator

__all__ = ["Cancellation", "CancelledConnection"]


class CancelledConnection(BaseException):
    """A connection attempted on behalf of a response that has been cancelled.

    A BaseException, like GeneratorExit: the SDKs retry a failed connection on any
    ``Exception`` (an ``OSError`` becomes their connection error), and this must pass through
    their retries to the response that was cancelled."""


#: Thread id → the cancellations it runs under (innermost last).
_running: dict[int, list[Cancellation]] = {}
_install_lock = threading.Lock()
_installed = False


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "socket.connect":
        stack = _running.get(threading.get_ident())
        if stack and isinstance(args[0], socket.socket):
            stack[-1]._connecting(args[0])


def _install() -> None:
    global _installed
    with _install_lock:
        if not _installed:
            sys.addaudithook(_audit)
            _installed = True


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        info = os.fstat(fd)
    except OSError:
        return None
    return info.st_dev, info.st_ino


class Cancellation:
    """A flag that, once set, also shuts down every socket connected under it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        #: (descriptor, its socket's identity) for each connection made under it.
        self._sockets: list[tuple[int, tuple[int, int]]] = []

    def is_set(self) -> bool:
        return self._event.is_set()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Run the enclosed code (a backend's step) under this cancellation: the sockets it
        connects are shut down by :meth:`cancel`."""
        _install()
        ident = threading.get_ident()
        stack = _running.setdefault(ident, [])
        stack.append(self)
        try:
            yield
        finally:
            stack.pop()
            if not stack:
                _running.pop(ident, None)

    def cancel(self) -> None:
        """Set the flag and shut down the connections made under it (from any thread)."""
        with self._lock:
            self._event.set()
            sockets, self._sockets = self._sockets, []
        for fd, identity in sockets:
            _shut_down(fd, identity)

    def _connecting(self, sock: socket.socket) -> None:
        if self._event.is_set():
            # The audit hook's exception aborts the connect: nothing more is sent. The
            # socket is closed here: code that closes its socket on a failed connect does so
            # for an OSError, not for this.
            sock.close()
            raise CancelledConnection("the response was cancelled")
        fd = sock.fileno()
        identity = _identity(fd)
        if identity is None:
            return
        with self._lock:
            # Forget descriptors closed since: they are shut down by nobody.
            self._sockets = [(f, i) for f, i in self._sockets if _identity(f) == i]
            self._sockets.append((fd, identity))


def _shut_down(fd: int, identity: tuple[int, int]) -> None:
    try:
        duplicate = os.dup(fd)  # held: the socket cannot go away while it is checked
    except OSError:
        return  # closed already
    try:
        if _identity(duplicate) != identity:
            return  # the descriptor now names something else
        with contextlib.suppress(OSError):
            sock = socket.socket(fileno=duplicate)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.detach()
    finally:
        os.close(duplicate)
