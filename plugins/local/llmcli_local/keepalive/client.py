"""The calling side of keep-alive: find the worker for a model (:class:`WorkerAddress`), send
it the request, turn its replies back into chunks, start one in the background, and ask every
running worker what it holds or to stop. Imports no torch."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import llmcli
from llmcli.errors import PartialResponseError, ProviderError
from llmcli.models import Chunk
from llmcli_local.backend import choose_backend
from llmcli_local.config import GenerationSettings, RuntimeConfig
from llmcli_local.keepalive.protocol import (
    PROTOCOL,
    GenerateRequest,
    WorkerSpec,
    decode_reply,
    is_end,
    parse_message,
    read_message,
    run_dir,
    send,
)
from llmcli_local.sources import ModelSource

__all__ = ["WorkerAddress", "ask", "running", "stop_all"]

_PACKAGE = Path(__file__).resolve().parent.parent


def _stamps(paths: list[Path]) -> list[str]:
    """Name, size and modification time of each path: what changes when a file does."""
    out = []
    for path in paths:
        info = path.stat()
        out.append(f"{path.name}:{info.st_size}:{info.st_mtime_ns}")
    return out


def _key(source: ModelSource, config: RuntimeConfig) -> str:
    """Everything a worker's answers depend on: the weights and their version, its whole
    configuration (``config``, the worker's: device, backend, weights, threads, draft,
    batching, caches), the interpreter and the code of llmcli and this plugin."""
    weights = source.path
    code = [_PACKAGE, Path(llmcli.__file__).resolve().parent]
    fields = [
        str(PROTOCOL), source.format, str(weights.resolve()),
        *_stamps([weights, *sorted(weights.iterdir())] if weights.is_dir() else [weights]),
        config.digest(),
        # The environment, not the name it was started by (python, python3.11, a script).
        sys.prefix, os.path.realpath(sys.executable),
        *_stamps([f for d in code for f in sorted(d.rglob("*.py"))]),
    ]
    return hashlib.sha256("\n".join(fields).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class WorkerAddress:
    """Where the worker for one model and configuration listens, or would."""

    name: str
    source: ModelSource
    #: What the worker runs: the call's configuration as a worker serves it
    #: (``RuntimeConfig.for_worker``, with ``choose_backend``'s answer for the call); its
    #: digest is part of the key, so any setting that changes what a worker does makes
    #: another worker.
    config: RuntimeConfig
    key: str
    directory: Path

    @classmethod
    def for_model(cls, name: str, source: ModelSource,
                  config: RuntimeConfig) -> WorkerAddress | None:
        """The address for this model and call; None where keep-alive cannot be used."""
        served = config.for_worker(choose_backend(config, config.device, None))
        directory = run_dir()
        if directory is None:
            return None
        try:
            key = _key(source, served)
        except OSError:
            return None  # the weights are gone: the in-process load says so clearly
        address = cls(name, source, served, key, directory)
        # A socket's path must fit in sun_path (104 bytes on macOS, 108 on Linux).
        return address if len(os.fsencode(address.socket_path)) < 100 else None

    @property
    def socket_path(self) -> Path:
        return self.directory / f"{self.key}.sock"

    def request(self, messages: list[dict[str, str]], prefill: str,
                settings: GenerationSettings, config: RuntimeConfig,
                keep_alive: float) -> Iterator[Chunk] | None:
        """The worker's reply as chunks, or None when no worker answered (run in process).
        ``config``: the call's own (the worker takes its cache options)."""
        request = GenerateRequest(messages=messages, prefill=prefill, settings=settings,
                                  config=config, keep_alive=keep_alive)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        reader = conn.makefile("rb")
        try:
            conn.connect(str(self.socket_path))
            send(conn, request.to_message())
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
        spec = WorkerSpec(name=self.name, format=self.source.format,
                          path=str(self.source.path.resolve()), key=self.key,
                          keep_alive=keep_alive, config=self.config)
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
                ["/bin/sh", "-c", '"$@" &', "sh", sys.executable, "-m",
                 "llmcli_local.keepalive.server", spec.to_json()],
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
        message: dict[str, Any] | None = parse_message(first)
        while message is not None:
            if is_end(message):
                return
            chunk = decode_reply(message)
            if chunk is not None:
                produced = produced or isinstance(chunk, str)
                yield chunk
            message = read_message(reader)
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


def ask(path: Path, op: str) -> dict[str, Any] | None:
    """One worker's answer to ``ping`` or ``stop``; None when nothing answers."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(5)
    try:
        conn.connect(str(path))
        send(conn, {"op": op, "v": PROTOCOL})
        with conn.makefile("rb") as reader:
            return read_message(reader)
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
        answer = ask(path, op)
        if answer is not None and "worker" in answer:
            found.append(answer["worker"])
    return found


def running() -> list[dict[str, Any]]:
    """What every running worker of this user says of itself (pid, model, device, ...)."""
    return _each("ping")


def stop_all() -> list[dict[str, Any]]:
    """Ask every running worker of this user to exit; what they were serving."""
    return _each("stop")
