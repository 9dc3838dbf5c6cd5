"""llmcli: prompt any model with a prefill; the reply always begins with it, exactly once."""

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

__version__ = "0.1.0"

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
