"""llmcli: prompt any model with a prefill; the reply always begins with it, exactly once.

The public names are imported on first use (PEP 562), so ``import llmcli.cli`` for
``llmcli --help`` does not pay for pydantic and the API.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "get_default_model": "llmcli.api",
    "get_model": "llmcli.api",
    "get_models": "llmcli.api",
    "PrefillSupport": "llmcli.capabilities",
    "ConfigError": "llmcli.errors",
    "ConversationError": "llmcli.errors",
    "KeyNeededError": "llmcli.errors",
    "LLMCLIError": "llmcli.errors",
    "LogError": "llmcli.errors",
    "OptionsError": "llmcli.errors",
    "PartialResponseError": "llmcli.errors",
    "PrefillUnsupportedError": "llmcli.errors",
    "ProviderError": "llmcli.errors",
    "UnknownModelError": "llmcli.errors",
    "Conversation": "llmcli.models",
    "KeySpec": "llmcli.models",
    "Message": "llmcli.models",
    "Model": "llmcli.models",
    "Options": "llmcli.models",
    "PrefillSent": "llmcli.models",
    "Request": "llmcli.models",
    "Response": "llmcli.models",
    "Usage": "llmcli.models",
    "emulation_instruction": "llmcli.models",
    "normalize_stream": "llmcli.normalize",
    "normalize_text": "llmcli.normalize",
}

__all__ = [
    "ConfigError",
    "Conversation",
    "ConversationError",
    "KeyNeededError",
    "KeySpec",
    "LLMCLIError",
    "LogError",
    "Message",
    "Model",
    "Options",
    "OptionsError",
    "PartialResponseError",
    "PrefillSent",
    "PrefillSupport",
    "PrefillUnsupportedError",
    "ProviderError",
    "Request",
    "Response",
    "UnknownModelError",
    "Usage",
    "emulation_instruction",
    "get_default_model",
    "get_model",
    "get_models",
    "normalize_stream",
    "normalize_text",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llmcli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from llmcli.api import get_default_model, get_model, get_models
    from llmcli.capabilities import PrefillSupport
    from llmcli.errors import (
        ConfigError,
        ConversationError,
        KeyNeededError,
        LLMCLIError,
        LogError,
        OptionsError,
        PartialResponseError,
        PrefillUnsupportedError,
        ProviderError,
        UnknownModelError,
    )
    from llmcli.models import (
        Conversation,
        KeySpec,
        Message,
        Model,
        Options,
        PrefillSent,
        Request,
        Response,
        Usage,
        emulation_instruction,
    )
    from llmcli.normalize import normalize_stream, normalize_text
