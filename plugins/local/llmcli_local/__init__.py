"""llmcli-local: the bundled local runtime (PyTorch; CUDA bf16 or CPU fp32).

Plugin hooks only. Importing this package and calling ``register_models`` never imports
torch or transformers: they load the first time a local model runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmcli.models import Model
from llmcli_local.model import LocalModel, LocalOptions, SmolLM2
from llmcli_local.registry import load_registry
from llmcli_local.sources import ModelSource

__all__ = ["LocalModel", "LocalOptions", "SmolLM2", "register_commands", "register_models"]


def register_models(register: Callable[[Model], None]) -> None:
    register(SmolLM2())
    for entry in load_registry(strict=False).models:  # a broken file: a warning
        register(LocalModel(
            entry.name, ModelSource(entry.format, Path(entry.path)), aliases=tuple(entry.aliases)
        ))


def register_commands(cli: Any) -> None:
    from llmcli_local.commands import register

    register(cli)
