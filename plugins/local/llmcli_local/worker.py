"""Keep-alive: a background process keeps a local model loaded between calls.

With ``-o keep_alive 5m`` (or ``LLMCLI_LOCAL_KEEP_ALIVE=5m``) a call that finds no worker for
its model runs in its own process as usual and then starts one. The worker loads the same
model and serves later calls over a Unix socket that only this user can reach; those calls
import no torch and load nothing. It exits after the keep-alive time passes with no call, on
``llmcli local stop``, or when killed.

Only inference moves to the worker: the calling process still normalizes the text and writes
the log, and a worker that is gone, stale or busy starting is never an error (the call runs
in process). The worker is keyed by everything its answers depend on (the weights file and
its version, device, engine, cache location, the interpreter and this package's code), so a
changed file or an upgrade gets a new worker and the old one idles out.

Wire format: one JSON object per line. The client sends ``{"op": "generate", ...}``,
``{"op": "ping"}`` or ``{"op": "stop"}``; a generation answers ``{"t": text}`` per piece,
``{"u": usage}``, then ``{"end": true}``, or ``{"e": {"type", "message"}}``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import llmcli
from llmcli.errors import ConfigError, LLMCLIError, PartialResponseError, ProviderError
from llmcli.models import Chunk, Usage
from llmcli_local.sources import ModelSource, cache_root

__all__ = ["Job", "main", "parse_duration", "run_dir", "running", "stop_all"]

PROTOCOL = 1
_PACKAGE = Path(__file__).resolve().parent


def parse_duration(value: Any) -> float:
    """Seconds from ``300``, ``"300"``, ``"90s"``, ``"5m"`` or ``"1h"``; 0 turns keep-alive off."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 300, 90s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:])
        try:
            seconds = float(text[:-1] if scale else text) * (scale or 1)
        except ValueError:
            raise ValueError("expected a duration such as 300, 90s, 5m or 1h") from None
    if not 0 <= seconds <= 7 * 24 * 3600:
        raise ValueError("must be between 0 and 7 days")
    return seconds


def run_dir(create: bool = True) -> Path | None:
    """The private directory for worker sockets, or None where workers cannot be used safely
    (no Unix sockets, or the directory is not ours alone)."""
    if not hasattr(socket, "AF_UNIX") or not hasattr(os, "getuid"):
        return None
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isdir(runtime):
        path = Path(runtime) / "llmcli"
    else:
        path = Path(tempfile.gettempdir()) / f"llmcli-{os.getuid()}"
    try:
        if create:
            path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError:
        return None
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
            or stat.S_IMODE(info.st_mode) & 0o077):
        return None  # a symlink, someone else's, or readable by others: never trust it
    return path


def _stamps(paths: list[Path]) -> list[str]:
    """Name, size and modification time of each path: what changes when a file does."""
    out = []
    for path in paths:
        info = path.stat()
        out.append(f"{path.name}:{info.st_size}:{info.st_mtime_ns}")
    return out


def _key(source: ModelSource, device: str, engine: str) -> str:
    weights = source.path
    code = [_PACKAGE, Path(llmcli.__file__).resolve().parent]
    fields = [
        str(PROTOCOL), source.format, str(weights.resolve()),
        *_stamps([weights, *sorted(weights.iterdir())] if weights.is_dir() else [weights]),
        device, engine, os.environ.get("LLMCLI_LOCAL_ENGINE", ""),
        os.environ.get("LLMCLI_LOCAL_THREADS", ""), str(cache_root().resolve()),
        # The environment, not the name it was started by (python, python3.11, a script).
        sys.prefix, os.path.realpath(sys.executable),
        *_stamps([f for d in code for f in sorted(d.glob("*.py"))]),
    ]
    return hashlib.sha256("\n".join(fields).encode()).hexdigest()[:20]


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def _error_from(payload: dict[str, Any]) -> LLMCLIError:
    message = str(payload.get("message") or "the local model's worker failed")
    if payload.get("type") == "ConfigError":
        return ConfigError(message)
    return ProviderError(message, provider="local")


@dataclass(frozen=True)
class Job:
    """One model, as a worker would serve it."""

    name: str
    source: ModelSource
    device: str
    engine: str
    key: str
    directory: Path

    @classmethod
    def for_model(cls, name: str, source: ModelSource, device: str, engine: str) -> Job | None:
        directory = run_dir()
        if directory is None:
            return None
        try:
            key = _key(source, device, engine)
        except OSError:
            return None  # the weights are gone: the in-process load says so clearly
        job = cls(name, source, device, engine, key, directory)
        # A socket's path must fit in sun_path (104 bytes on macOS, 108 on Linux).
        return job if len(os.fsencode(job.socket_path)) < 100 else None

    @property
    def socket_path(self) -> Path:
        return self.directory / f"{self.key}.sock"

    def request(self, messages: list[dict[str, str]], prefill: str, settings: dict[str, Any],
                keep_alive: float) -> Iterator[Chunk] | None:
        """The worker's reply as chunks, or None when no worker answered (run in process)."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        reader = conn.makefile("rb")
        try:
            conn.connect(str(self.socket_path))
            _send(conn, {"op": "generate", "v": PROTOCOL, "messages": messages,
                         "prefill": prefill, "settings": settings, "keep_alive": keep_alive})
            # Blocks through the prompt pass. Nothing at all back: the worker was exiting
            # (idle) as we connected, and nothing has been generated for us.
            first = reader.readline()
        except OSError:
            first = b""
        if not first:
            reader.close()
            conn.close()
            return None
        return _replies(conn, reader, first)

    def start(self, keep_alive: float) -> None:
        """Start a worker in the background (it exits at once if one is running)."""
        directory = run_dir(create=True)
        if directory is None:
            return
        spec = {"name": self.name, "format": self.source.format,
                "path": str(self.source.path.resolve()), "device": self.device,
                "engine": self.engine, "key": self.key, "keep_alive": keep_alive}
        try:
            log = os.open(directory / f"{self.key}.log",
                          os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError:
            return  # keep-alive is an optimisation: the call itself has already succeeded
        try:
            # sh puts the worker in the background and exits: the worker is nobody's child
            # (no zombie in a long-lived caller), in its own session (Ctrl-C in this terminal
            # does not reach it).
            subprocess.run(
                ["/bin/sh", "-c", '"$@" &', "sh", sys.executable, "-m", "llmcli_local.worker",
                 json.dumps(spec)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True, check=False, timeout=10,
            )
        except (OSError, subprocess.SubprocessError):
            pass  # as above: never fail a call that has succeeded
        finally:
            os.close(log)


def _replies(conn: socket.socket, reader: IO[bytes], first: bytes) -> Iterator[Chunk]:
    produced = False
    try:
        line = first
        while line:
            message = json.loads(line)
            if "t" in message:
                produced = True
                yield str(message["t"])
            elif "u" in message:
                yield Usage(**message["u"])
            elif "e" in message:
                raise _error_from(message["e"])
            elif message.get("end"):
                return
            line = reader.readline()
    except (OSError, ValueError) as exc:
        detail = f": {exc}"
    else:
        detail = ""
    finally:
        reader.close()
        conn.close()
    error = PartialResponseError if produced else ProviderError
    raise error(f"The local model's worker stopped before the reply was complete{detail}",
                provider="local")


def _ask(path: Path, op: str) -> dict[str, Any] | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(5)
    try:
        conn.connect(str(path))
        _send(conn, {"op": op, "v": PROTOCOL})
        with conn.makefile("rb") as reader:
            line = reader.readline()
        return json.loads(line) if line else None
    except (OSError, ValueError):
        return None
    finally:
        conn.close()


def _each(op: str) -> list[dict[str, Any]]:
    directory = run_dir(create=False)
    if directory is None:
        return []
    found = []
    for path in sorted(directory.glob("*.sock")):
        answer = _ask(path, op)
        if answer is not None and "worker" in answer:
            found.append(answer["worker"])
    return found


def running() -> list[dict[str, Any]]:
    """What every running worker of this user says of itself (pid, model, device, ...)."""
    return _each("ping")


def stop_all() -> list[dict[str, Any]]:
    """Ask every running worker of this user to exit; what they were serving."""
    return _each("stop")


# -- the worker process -------------------------------------------------------------------


class _Worker:
    def __init__(self, spec: dict[str, Any], loaded: Any) -> None:
        self.spec = spec
        self.loaded = loaded
        self.idle = float(spec["keep_alive"])

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "model": self.spec["name"], "path": self.spec["path"],
                "device": self.loaded.device, "engine": self.loaded.engine,
                "keep_alive": self.idle}

    def serve(self, server: socket.socket) -> None:
        while True:
            server.settimeout(self.idle)
            try:
                conn, _ = server.accept()
            except TimeoutError:
                return
            with conn:
                conn.settimeout(30)  # for the request line; replies then block as needed
                try:
                    with conn.makefile("rb") as reader:
                        request = json.loads(reader.readline() or b"{}")
                    conn.settimeout(None)
                    op = request.get("op")
                    if request.get("v") != PROTOCOL:
                        _send(conn, {"e": {"type": "ProviderError",
                                           "message": "local worker protocol mismatch"}})
                    elif op == "stop":
                        _send(conn, {"worker": self.info()})
                        return
                    elif op == "ping":
                        _send(conn, {"worker": self.info()})
                    elif op == "generate":
                        self.idle = parse_duration(request.get("keep_alive", self.idle))
                        self.generate(conn, request)
                except (OSError, ValueError):
                    continue  # a client that went away or spoke nonsense: serve the next

    def generate(self, conn: socket.socket, request: dict[str, Any]) -> None:
        from llmcli_local import engine

        try:
            settings = engine.GenerationSettings(**request["settings"])
            chunks = engine.generate(self.loaded, request["messages"], request["prefill"],
                                     settings)
        except Exception as exc:  # noqa: BLE001 - reported to the client, worker carries on
            _send(conn, {"e": _describe(exc)})
            return
        try:
            for chunk in chunks:
                if isinstance(chunk, Usage):
                    usage = asdict(chunk)
                    usage["details"] = {**usage["details"], "worker_pid": os.getpid()}
                    _send(conn, {"u": usage})
                else:
                    _send(conn, {"t": chunk})
            _send(conn, {"end": True})
        except OSError:
            pass  # the client went away (Ctrl-C): stop generating
        except Exception as exc:  # noqa: BLE001
            with contextlib.suppress(OSError):
                _send(conn, {"e": _describe(exc)})
        finally:
            chunks.close()


def _describe(exc: Exception) -> dict[str, str]:
    if isinstance(exc, LLMCLIError):
        return {"type": type(exc).__name__, "message": str(exc)}
    return {"type": "internal", "message": f"{type(exc).__name__}: {exc}".splitlines()[0]}


def main(argv: list[str]) -> int:
    import fcntl

    spec = json.loads(argv[1])
    directory = run_dir(create=True)
    if directory is None:
        return 1
    lock = os.open(directory / f"{spec['key']}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another worker serves this key (or is starting): nothing to do
    os.chdir("/")  # hold no directory of the caller's open
    from llmcli_local import loader

    loaded = loader.load(ModelSource(spec["format"], Path(spec["path"])),
                         device=spec["device"], show_progress=False, engine=spec["engine"])
    # We hold the lock, so any socket file left is a dead worker's. Bind under a temporary
    # name and rename: a client sees the socket only once it is listening.
    path = directory / f"{spec['key']}.sock"
    temporary = directory / f"{spec['key']}.{os.getpid()}.tmp"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    server.bind(str(temporary))
    os.chmod(temporary, 0o600)
    server.listen(16)
    os.replace(temporary, path)
    try:
        _Worker(spec, loaded).serve(server)
    finally:
        # Unlink before closing: a client then either finds no socket or one that is still
        # ours, and a connection caught in between reads nothing and runs in process.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server.close()
        log = directory / f"{spec['key']}.log"
        with contextlib.suppress(OSError):
            if log.stat().st_size == 0:
                log.unlink()  # nothing went wrong: leave nothing behind but the lock
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
