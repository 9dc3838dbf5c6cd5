"""What a model does with a prefill, a schema and tools. Imports nothing from llmcli."""

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


class SchemaSupport(StrEnum):
    """How a model honours a JSON Schema for its reply (``--schema``)."""

    #: The provider or the runtime enforces the schema (constrained decoding, strict mode).
    NATIVE = "native"
    #: The prompt asks for the schema; the reply is validated and, when it fails, sent back
    #: with the error (a few times at most).
    VALIDATED = "validated"
    #: A schema cannot be honoured; a prompt with one is refused before any request.
    UNSUPPORTED = "unsupported"


class StopReason(StrEnum):
    """Why a reply ended, in one vocabulary for every backend (the log and ``--json`` store
    these). Plugins translate their provider's words; a reason with no equivalent here is
    passed through as the provider wrote it."""

    #: The model finished its turn (OpenAI's and Mistral's "stop", the local end-of-turn).
    END_TURN = "end_turn"
    #: The token limit was reached (OpenAI's and Mistral's "length").
    MAX_TOKENS = "max_tokens"
    #: One of the request's stop sequences was generated.
    STOP_SEQUENCE = "stop_sequence"
    #: The model called a tool (OpenAI's "tool_calls").
    TOOL_USE = "tool_use"
    #: The provider's filter cut the reply.
    CONTENT_FILTER = "content_filter"
    #: The model declined to answer.
    REFUSAL = "refusal"


class ReasoningPrefill(StrEnum):
    """How a prefill meets a reasoning model's thinking (``-o reasoning_prefill``). Each
    model declares which it takes (``Model.reasoning_prefills``); the prefill capability
    above is unchanged by it: the answer begins with the prefill exactly once, and the
    reasoning is never part of it."""

    #: The model thinks freely; its answer is forced to begin with the prefill.
    AFTER = "after"
    #: The thinking is closed empty (the documented "no think"), then the prefill follows.
    SKIP = "skip"
    #: The prefill is asked for in the prompt, thinking left on (as without the option).
    EMULATE = "emulate"
class ToolSupport(StrEnum):
    """How a model calls tools (``tools=[...]``, ``-T``)."""

    #: The provider's own tool calling (Anthropic ``tool_use``, OpenAI ``tool_calls``).
    NATIVE = "native"
    #: The runtime constrains the reply to text or a tool call whose arguments match the
    #: tool's schema (the local runtime's grammar).
    GRAMMAR = "grammar"
    #: No tool calling: a prompt with tools is refused before any request.
    NONE = "none"
