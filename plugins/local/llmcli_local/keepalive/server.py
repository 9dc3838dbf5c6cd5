"""The keep-alive worker process: ``python -m llmcli_local.keepalive.server SPEC`` loads one
model and answers requests on its Unix socket, several at once (their generations batched by
the model's :mod:`~llmcli_local.scheduler`), until it has been idle for its keep-alive time
or is asked to stop."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from llmcli_local.backend import Backend
from llmcli_local.keepalive.protocol import (
    END,
    PROTOCOL,
    GenerateRequest,
    WorkerSpec,
    error_message,
    read_message,
    run_dir,
    send,
    text_message,
    usage_message,
)
from llmcli_local.options import parse_duration
from llmcli_local.sources import ModelSource

__all__ = ["Worker", "main"]


class Worker:
    """Serves one model on a listening socket: each connection on its own thread, every
    generation submitted to the model's scheduler, so concurrent clients are batched.

    It listens while the model is still loading (:meth:`load`, on a thread of its own): a
    ``ping`` or ``stop`` is answered at once (``llmcli local workers`` and ``local stop`` see
    a worker from its start), and a generation waits for the load rather than making its
    caller load the model a second time."""

    def __init__(self, spec: WorkerSpec, backend: Backend[Any] | None = None) -> None:
        self.spec = spec
        self.source = ModelSource(spec.format, Path(spec.path))
        self.backend = backend
        self.idle = float(spec.keep_alive)
        self._lock = threading.Lock()
        self._active = 0
        self._last = time.monotonic()
        self._stop = threading.Event()
        self.loaded = threading.Event()
        self._load_error: BaseException | None = None
        if backend is not None:
            self.loaded.set()

    def load(self) -> None:
        """Load the model (the worker's start); a failure stops the worker, and each
        generation waiting for it gets the error."""
        from llmcli_local import loader

        try:
            self.backend = loader.load(self.source, self.spec.config, show_progress=False)
        except BaseException as exc:  # noqa: BLE001 - told to the waiting callers
            self._load_error = exc
            print(f"Could not load {self.spec.name}: {exc}", file=sys.stderr)  # the log
            self._stop.set()
        finally:
            with self._lock:
                self._last = time.monotonic()  # idle from now, not from the start
            self.loaded.set()

    def info(self) -> dict[str, Any]:
        backend = self.backend
        return {"pid": os.getpid(), "model": self.spec.name, "path": self.spec.path,
                "device": backend.device if backend is not None else self.spec.config.device,
                "engine": backend.name if backend is not None else self.spec.config.engine,
                "keep_alive": self.idle, "loading": not self.loaded.is_set()}

    def _idle_for(self) -> float | None:
        """Seconds left before the worker has been idle for its keep-alive time (None while a
        connection is open or the model is loading)."""
        with self._lock:
            if self._active or not self.loaded.is_set():
                return None
            return self._last + self.idle - time.monotonic()

    def serve(self, server: socket.socket) -> None:
        while not self._stop.is_set():
            left = self._idle_for()
            if left is not None and left <= 0:
                return
            # Wake now and then to see a stop, or the idle time run out.
            server.settimeout(min(left, 0.5) if left is not None else 0.5)
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with self._lock:
                self._active += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True,
                             name="llmcli-local-connection").start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._answer(conn)
        finally:
            with self._lock:
                self._active -= 1
                self._last = time.monotonic()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(30)  # for the request line; replies then block as needed
        try:
            with conn.makefile("rb") as reader:
                request = read_message(reader) or {}
            conn.settimeout(None)
            op = request.get("op")
            if request.get("v") != PROTOCOL:
                send(conn, {"e": {"type": "ProviderError",
                                  "message": "local worker protocol mismatch"}})
            elif op == "stop":
                send(conn, {"worker": self.info()})
                self._stop.set()
            elif op == "ping":
                send(conn, {"worker": self.info()})
            elif op == "generate":
                with self._lock:
                    self.idle = parse_duration(request.get("keep_alive", self.idle))
                self.generate(conn, request)
        except (OSError, ValueError):
            pass  # a client that went away or spoke nonsense: serve the next

    def generate(self, conn: socket.socket, message: dict[str, Any]) -> None:
        from llmcli_local import loader, scheduler

        self.loaded.wait()
        if self._load_error is not None:
            send(conn, error_message(self._load_error))
            return
        try:
            request = GenerateRequest.from_message(message)  # validated again here
            # The same loaded model; only the transformers backend's cache options vary.
            config = self.spec.config.replace(kv_cache=request.config.kv_cache,
                                              cuda_graphs=request.config.cuda_graphs)
            backend = loader.load(self.source, config, show_progress=False)
            handle = scheduler.shared(backend, config).submit(
                request.messages, request.prefill, request.settings, backend)
        except Exception as exc:  # noqa: BLE001 - reported to the client, worker carries on
            send(conn, error_message(exc))
            return
        try:
            for chunk in handle:
                if isinstance(chunk, str):
                    send(conn, text_message(chunk))
                else:
                    send(conn, usage_message(chunk, worker_pid=os.getpid()))
            send(conn, END)
        except OSError:
            pass  # the client went away (Ctrl-C): stop generating
        except Exception as exc:  # noqa: BLE001
            with contextlib.suppress(OSError):
                send(conn, error_message(exc))
        finally:
            handle.cancel()


def main(argv: list[str]) -> int:
    import fcntl

    spec = WorkerSpec.from_json(argv[1])
    directory = run_dir(create=True)
    if directory is None:
        return 1
    lock = os.open(directory / f"{spec.key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another worker serves this key (or is starting): nothing to do
    os.chdir("/")  # hold no directory of the caller's open
    worker = Worker(spec)
    # We hold the lock, so any socket file left is a dead worker's. Bind under a temporary
    # name and rename: a client sees the socket only once it is listening.
    path = directory / f"{spec.key}.sock"
    temporary = directory / f"{spec.key}.{os.getpid()}.tmp"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    server.bind(str(temporary))
    os.chmod(temporary, 0o600)
    server.listen(16)
    os.replace(temporary, path)
    threading.Thread(target=worker.load, daemon=True, name="llmcli-local-load").start()
    try:
        worker.serve(server)
    finally:
        # Unlink before closing: a client then either finds no socket or one that is still
        # ours, and a connection caught in between reads nothing and runs in process.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server.close()
        log = directory / f"{spec.key}.log"
        with contextlib.suppress(OSError):
            if log.stat().st_size == 0:
                log.unlink()  # nothing went wrong: leave nothing behind but the lock
    if not worker.loaded.is_set():
        # Stopped while loading: end now, not with the interpreter's shutdown around a
        # thread that is inside torch (which can abort the process).
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
