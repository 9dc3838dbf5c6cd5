"""Anthropic Claude models for llmcli.

Claude up to 4.5 continues a trailing assistant message (native prefill, the API eats it);
Claude 4.6 and later reject one, so llmcli emulates the prefill through the system prompt.
The same models on Amazon Bedrock (``bedrock/...``) and Google Vertex AI (``vertex/...``) are
in ``_cloud.py``.
The ``anthropic`` SDK is imported only when a model runs, so listing models stays fast.

Layout (the same in every bundled provider plugin): ``_models.py`` holds the model table,
the options and the model class built on :mod:`llmcli.remote`; ``_wire.py`` the translation
to and from the API.
"""

from __future__ import annotations

from collections.abc import Callable

from llmcli.models import Model
from llmcli.remote import resolve_prefixed

from ._cloud import BEDROCK_MODELS, VERTEX_MODELS, BedrockClaude, VertexClaude
from ._models import KNOWN_MODELS, ClaudeModel, ClaudeOptions, prefill_support
from ._wire import native_prefill

__all__ = ["BedrockClaude", "ClaudeModel", "ClaudeOptions", "VertexClaude", "native_prefill",
           "prefill_support", "register_models", "resolve_model"]


def register_models(register: Callable[[Model], None]) -> None:
    for model_id, aliases in KNOWN_MODELS:
        register(ClaudeModel(model_id, aliases))
    for platform_id, aliases in BEDROCK_MODELS:
        register(BedrockClaude(platform_id, aliases))
    for platform_id, aliases in VERTEX_MODELS:
        register(VertexClaude(platform_id, aliases))


def resolve_model(name: str) -> Model | None:
    """``anthropic/<any model id>``, or a bare ``claude-...`` id not in the list (a dated
    snapshot such as ``claude-haiku-4-5-20251001``); ``bedrock/<Bedrock model id>``
    (``bedrock/us.anthropic.claude-sonnet-4-5-20250929-v1:0``); ``vertex/<Vertex model id>``
    (``vertex/claude-sonnet-4-5@20250929``)."""
    for prefix, cls in (("bedrock", BedrockClaude), ("vertex", VertexClaude)):
        if name.startswith(f"{prefix}/"):
            return resolve_prefixed(name, prefix, cls)
    return resolve_prefixed(name, "anthropic", ClaudeModel,
                            bare=lambda n: n.startswith("claude-"))
