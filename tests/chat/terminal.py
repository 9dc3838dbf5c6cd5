"""Drive the installed ``llmcli`` in a real pseudo-terminal, as a user at a keyboard would
(stdlib ``pty`` only: the line discipline turns Ctrl-C into SIGINT, readline sees a tty)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import termios
import time
from collections.abc import Mapping, Sequence

from tests.script import SCRIPT

UP = "\x1b[A"
CTRL_C = "\x03"
CTRL_D = "\x04"
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r")


class Terminal:
    def __init__(self, args: Sequence[str], env: Mapping[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: the command, with the Ctrl-C a terminal user has
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.execve(str(SCRIPT), [str(SCRIPT), *args], dict(env))
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
        self.raw = b""
        self.seen = 0  # how much of the output expect() has consumed
        self.status: int | None = None

    @property
    def output(self) -> str:
        """Everything shown so far, without escape sequences and carriage returns."""
        return ANSI.sub(b"", self.raw).decode("utf-8", "replace")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            data = b""
        if not data:
            raise EOFError(self.output)
        self.raw += data
        return True

    def expect(self, text: str, timeout: float = 60) -> str:
        """Wait until ``text`` appears after what was already matched; return what came
        before it."""
        deadline = time.monotonic() + timeout
        while True:
            shown = self.output
            at = shown.find(text, self.seen)
            if at >= 0:
                before, self.seen = shown[self.seen:at], at + len(text)
                return before
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not shown; the terminal shows:\n{shown}")
            try:
                self._read(0.1)
            except EOFError:
                raise AssertionError(f"exited before {text!r}:\n{shown}") from None

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def line(self, text: str) -> None:
        self.send(text + "\r")

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                self._drain()
                return self.status
            with contextlib.suppress(EOFError):
                self._read(0.05)
        raise TimeoutError(f"still running:\n{self.output}")

    def _drain(self) -> None:
        with contextlib.suppress(EOFError):
            while self._read(0.05):
                pass

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)
