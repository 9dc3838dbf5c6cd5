"""Mistral La Plateforme models for llmcli.

Prefill is native: the final assistant message carries ``prefix: true`` and the API answers
with the prefill followed by the continuation (it echoes), streaming too; the core strips
the echo. The ``mistralai`` SDK is imported only when a model runs.

Layout (the same in every bundled provider plugin): ``_models.py`` holds the model table,
the options and the model class built on :mod:`llmcli.remote`; ``_wire.py`` the translation
to and from the API.
"""

from __future__ import annotations

from collections.abc import Callable

from llmcli.models import Model
from llmcli.remote import resolve_prefixed

from ._models import KNOWN_MODELS, MistralModel, MistralOptions

__all__ = ["MistralModel", "MistralOptions", "register_models", "resolve_model"]


def register_models(register: Callable[[Model], None]) -> None:
    for model_id, aliases in KNOWN_MODELS:
        register(MistralModel(model_id, aliases))


def resolve_model(name: str) -> Model | None:
    """``mistral/<any model id>`` (e.g. ``mistral/magistral-medium-latest``)."""
    return resolve_prefixed(name, "mistral", MistralModel)
