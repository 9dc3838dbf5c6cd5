"""Google Gemini models for llmcli, on the official ``google-genai`` SDK.

A request whose ``contents`` end with a ``model`` turn is continued by Gemini models up to
3.5 Flash: the reply is only the continuation (the API eats the prefill). From Gemini 3.6
Flash and 3.5 Flash-Lite on, Google's API rejects it (400 ``Requests ending with a model turn
are not supported.``), so llmcli emulates the prefill there. The SDK is imported only when a
model runs, so listing models stays fast.

Layout (the same in every bundled provider plugin): ``_models.py`` holds the model table,
the options and the model class built on :mod:`llmcli.remote`; ``_wire.py`` the translation
to and from the API.
"""

from __future__ import annotations

from collections.abc import Callable

from llmcli.models import Model
from llmcli.remote import resolve_prefixed

from ._models import KNOWN_MODELS, GeminiModel, GeminiOptions
from ._wire import native_prefill

__all__ = ["GeminiModel", "GeminiOptions", "native_prefill", "register_models",
           "resolve_model"]


def register_models(register: Callable[[Model], None]) -> None:
    for model_id, aliases in KNOWN_MODELS:
        register(GeminiModel(model_id, aliases))


def resolve_model(name: str) -> Model | None:
    """``gemini/<any model id>``, or a bare ``gemini-...`` id not in the list."""
    return resolve_prefixed(name, "gemini", GeminiModel,
                            bare=lambda n: n.startswith("gemini-"))
