"""One status line on standard error, drawn only when standard error is a terminal.

Two users share it: the command line's spinner while a reply has not started (a local model
loading, a slow first token), and the stages of a long step inside a plugin (the local
runtime's one-time conversion). When a step runs under the spinner it takes over the same
line, so the two never draw over each other; the line is erased when done and nothing is
ever written to standard error when it is not a terminal.

Nothing here imports llmcli: the CLI and plugins both use it.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TextIO, TypeVar

__all__ = ["StatusLine", "stages", "until_first", "waiting"]

T = TypeVar("T")

FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
INTERVAL_S = 0.1
#: A reply that starts sooner than this shows no spinner at all (no flicker).
WAITING_DELAY_S = 0.3

_current: StatusLine | None = None


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


class StatusLine:
    """A spinner frame and a text, redrawn in place by a daemon thread from ``delay``
    seconds after :meth:`start` until :meth:`stop` erases it. With a text, the seconds it
    has been showing follow it (an honest clock; no guessed ETA)."""

    def __init__(self, stream: TextIO, delay: float = 0.0) -> None:
        self.stream = stream
        self.delay = delay
        self._text = ""
        self._since = time.monotonic()
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._drawn = False
        self._thread = threading.Thread(target=self._run, name="llmcli-status", daemon=True)

    def start(self) -> StatusLine:
        self._thread.start()
        return self

    @property
    def text(self) -> str:
        return self._text

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def show_now(self) -> None:
        """Draw without waiting out the delay."""
        self._wake.set()

    def set(self, text: str, since: float | None = None) -> None:
        with self._lock:
            self._text = text
            if since is not None:
                self._since = since

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        with self._lock:
            self._stopped.set()
            self._wake.set()
            if self._drawn:
                self._write("\r\x1b[K")
                self._drawn = False

    def __enter__(self) -> StatusLine:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        self._wake.wait(self.delay)
        frame = 0
        while True:
            with self._lock:
                if self._stopped.is_set():
                    return
                self._draw(FRAMES[frame % len(FRAMES)])
            frame += 1
            if self._stopped.wait(INTERVAL_S):
                return

    def _draw(self, frame: str) -> None:
        line = frame
        if self._text:
            line += f" {self._text} ({time.monotonic() - self._since:.0f} s)"
        width = shutil.get_terminal_size((80, 24)).columns - 1
        self._write("\r" + line[:width] + "\x1b[K")
        self._drawn = True

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken terminal: nothing to show
            self._stopped.set()


class _Nothing:
    """What :func:`waiting` returns off a terminal."""

    def stop(self) -> None:
        pass

    def __enter__(self) -> _Nothing:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def waiting(delay: float = WAITING_DELAY_S) -> StatusLine | _Nothing:
    """A spinner on standard error (a terminal only) from ``delay`` seconds on, until
    ``.stop()`` (call it before writing the first text; calling it again does nothing)."""
    global _current
    if not is_terminal(sys.stderr):
        return _Nothing()
    line = StatusLine(sys.stderr, delay).start()
    _current = line
    return line


def until_first(items: Iterable[T]) -> Iterator[T]:
    """``items``, with the :func:`waiting` spinner until the first one arrives (and erased
    before an error or an interrupt goes further)."""
    line = waiting()
    try:
        for item in items:
            line.stop()
            yield item
    finally:
        line.stop()


@contextmanager
def stages(title: str, stream: TextIO | None = None) -> Iterator[Callable[[str], None]]:
    """Show ``title: stage`` while the block runs; yields ``show(stage)``. On the spinner's
    line when one is showing (it shows the step at once), else on a line of its own (a
    terminal only); either way the line is as it was after the block."""
    global _current
    stream = stream or sys.stderr
    line = _current if _current is not None and not _current.stopped else None
    own: StatusLine | None = None
    if line is None and is_terminal(stream):
        own = line = StatusLine(stream).start()
    previous = line.text if line is not None else ""
    since = time.monotonic()

    def show(stage: str) -> None:
        if line is not None:
            line.set(f"{title}: {stage}" if stage else title, since)

    show("")
    if line is not None:
        line.show_now()  # a long step under the spinner shows itself at once
    try:
        yield show
    finally:
        if own is not None:
            own.stop()
        elif line is not None:
            line.set(previous)
