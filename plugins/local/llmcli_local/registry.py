"""The user's registered local models: a small JSON file in the user directory, validated
with pydantic. Read at plugin load, so it must stay cheap (no torch)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmcli import config
from llmcli.errors import ConfigError

__all__ = ["RegisteredModel", "Registry", "load_registry", "registry_path", "save_registry"]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"


class RegisteredModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, max_length=100)
    path: str
    format: Literal["gguf", "hf"]
    aliases: list[str] = Field(default_factory=list)


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    models: list[RegisteredModel] = Field(default_factory=list)

    def find(self, name: str) -> RegisteredModel | None:
        lowered = name.lower()
        for entry in self.models:
            if lowered in (n.lower() for n in [entry.name, *entry.aliases]):
                return entry
        return None


def registry_path() -> Path:
    return config.user_dir() / "local-models.json"


_warned: set[str] = set()


def load_registry(strict: bool = True) -> Registry:
    """The registered models. A malformed file is a ConfigError; with ``strict=False`` (at
    plugin load) a one-line warning on standard error instead, once per process, and no
    registered models: a broken file costs only the models it lists."""
    path = registry_path()
    if not path.exists():
        return Registry()
    if not strict:
        try:
            return load_registry()
        except ConfigError as exc:
            if str(exc) not in _warned:
                _warned.add(str(exc))
                print(f"Warning: {exc}", file=sys.stderr)
            return Registry()
    try:
        return Registry.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError) as exc:
        detail = ""
        if isinstance(exc, ValidationError):
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            detail = f" ({where}: {error['msg']})"
        raise ConfigError(
            f"The local models file {path} is malformed{detail}; fix or remove it"
        ) from None


def save_registry(registry: Registry) -> None:
    path = registry_path()
    config.ensure_user_dir()
    tmp = path.with_suffix(".json.tmp")
    try:
        tmp.write_text(json.dumps(registry.model_dump(), indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"Cannot write {path}: {exc.strerror or exc}") from exc


def valid_name(name: str) -> bool:
    return re.match(NAME_PATTERN, name) is not None and len(name) <= 100
