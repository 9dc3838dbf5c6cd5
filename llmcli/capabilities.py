"""What a model does with a prefill. Imports nothing from llmcli."""

from __future__ import annotations

from enum import StrEnum


class PrefillSupport(StrEnum):
    """How a model's API treats the first characters of the reply supplied by the user."""

    #: Native prefill; the API returns only the continuation.
    EATS_PREFIX = "eats"
    #: Native prefill; the API returns the prefill followed by the continuation.
    ECHOES_PREFIX = "echoes"
    #: No native prefill; the model is asked to start with it and the reply is normalized.
    EMULATED = "emulated"
    #: The prefill cannot be honoured; a prompt with one is refused before any request.
    UNSUPPORTED = "unsupported"

    def __str__(self) -> str:
        return self.value
