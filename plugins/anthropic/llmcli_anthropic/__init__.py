"""Anthropic Claude models for llmcli.

Claude up to 4.5 continues a trailing assistant message (native prefill, the API eats it);
Claude 4.6 and later reject one, so llmcli emulates the prefill through the system prompt.
The ``anthropic`` SDK is imported only when a model runs, so listing models stays fast.

Layout (the same in every bundled provider plugin): ``_models.py`` holds the model table,
the options and the model class built on :mod:`llmcli.remote`; ``_wire.py`` the translation
to and from the API.
"""

from __future__ import annotations

from collections.abc import Callable

from llmcli.models import Model
from llmcli.remote import resolve_prefixed

from ._models import KNOWN_MODELS, ClaudeModel, ClaudeOptions, prefill_support
from ._wire import native_prefill

__all__ = ["ClaudeModel", "ClaudeOptions", "native_prefill", "prefill_support",
           "register_models", "resolve_model"]


def register_models(register: Callable[[Model], None]) -> None:
    for model_id, aliases in KNOWN_MODELS:
        register(ClaudeModel(model_id, aliases))


def resolve_model(name: str) -> Model | None:
    """``anthropic/<any model id>``, or a bare ``claude-...`` id not in the list (a dated
    snapshot such as ``claude-haiku-4-5-20251001``)."""
    return resolve_prefixed(name, "anthropic", ClaudeModel,
                            bare=lambda n: n.startswith("claude-"))
