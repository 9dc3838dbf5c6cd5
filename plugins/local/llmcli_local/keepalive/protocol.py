"""What a keep-alive client and its worker share: where the sockets live, the messages on the
wire, how a worker is started (its :class:`WorkerSpec`), and how errors cross.

Wire format: one JSON object per line over a Unix socket. The client sends
``{"op": "generate", "v": PROTOCOL, ...}`` (a :class:`GenerateRequest`: the call's
:class:`~llmcli_local.config.GenerationSettings` and
:class:`~llmcli_local.config.RuntimeConfig` as typed objects, validated on both ends),
``{"op": "ping"}`` or ``{"op": "stop"}``. A generation is answered by ``{"t": text}`` per
piece, ``{"u": usage}``, then ``{"end": true}``, or at any point by
``{"e": {"type", "message"}}``; ping and stop by ``{"worker": info}``.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmcli.errors import ConfigError, LLMCLIError, ProviderError
from llmcli.models import Chunk, Usage
from llmcli_local.config import GenerationSettings, RuntimeConfig
from llmcli_local.sources import Format

__all__ = [
    "END",
    "PROTOCOL",
    "GenerateRequest",
    "WorkerSpec",
    "decode_reply",
    "error_message",
    "is_end",
    "parse_message",
    "read_message",
    "run_dir",
    "send",
    "text_message",
    "usage_message",
]

#: Bumped whenever a message changes shape.
PROTOCOL = 3
END: dict[str, Any] = {"end": True}


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


class WorkerSpec(BaseModel):
    """What a worker serves, as its client starts it (JSON on the worker's command line)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    format: Format
    path: str
    key: str
    keep_alive: float = Field(ge=0)
    #: What the worker loads and runs (``RuntimeConfig.for_worker``: the engine as the
    #: call decided it; "auto" is decided by the worker's loader, as it would be in
    #: process). Its digest is part of ``key``.
    config: RuntimeConfig

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        return cls.model_validate_json(text)


class GenerateRequest(BaseModel):
    """One call, as a client sends it to a worker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    messages: list[dict[str, str]]
    prefill: str
    settings: GenerationSettings
    #: The call's configuration; the worker serves its own (its spec's) with this one's
    #: transformers cache options (``kv_cache``, ``cuda_graphs``).
    config: RuntimeConfig
    keep_alive: float = Field(default=0.0, ge=0)

    def to_message(self) -> dict[str, Any]:
        return {"op": "generate", "v": PROTOCOL, **self.model_dump(mode="json")}

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> GenerateRequest:
        """The request in ``message``, validated; a :class:`ProviderError` saying what is
        wrong where it is not one."""
        try:
            return cls.model_validate({k: v for k, v in message.items()
                                       if k not in ("op", "v")})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ProviderError(f"The local model's worker refused the request: {where}: "
                                f"{first['msg']}", provider="local") from None


def send(conn: socket.socket, message: Mapping[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def parse_message(line: bytes) -> dict[str, Any]:
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("a message is a JSON object")
    return message


def read_message(reader: IO[bytes]) -> dict[str, Any] | None:
    """The next message, or None when the other side closed the connection."""
    line = reader.readline()
    return parse_message(line) if line else None


def text_message(text: str) -> dict[str, Any]:
    return {"t": text}


def usage_message(usage: Usage, **details: Any) -> dict[str, Any]:
    payload = asdict(usage)
    payload["details"] = {**payload["details"], **details}
    return {"u": payload}


def error_message(exc: BaseException) -> dict[str, Any]:
    """An exception as the client will raise it: our errors keep their type and message,
    anything else becomes one line."""
    if isinstance(exc, LLMCLIError):
        return {"e": {"type": type(exc).__name__, "message": str(exc)}}
    return {"e": {"type": "internal",
                  "message": f"{type(exc).__name__}: {exc}".splitlines()[0]}}


def _error_from(payload: Mapping[str, Any]) -> LLMCLIError:
    message = str(payload.get("message") or "the local model's worker failed")
    if payload.get("type") == "ConfigError":
        return ConfigError(message)
    return ProviderError(message, provider="local")


def is_end(message: Mapping[str, Any]) -> bool:
    return bool(message.get("end"))


def decode_reply(message: Mapping[str, Any]) -> Chunk | None:
    """The chunk a reply to a generation stands for (None for anything else). An error reply
    raises the error it carries."""
    if "t" in message:
        return str(message["t"])
    if "u" in message:
        return Usage(**message["u"])
    if "e" in message:
        raise _error_from(message["e"])
    return None
