"""What the core and a backend exchange: the request a backend is handed and the events it
yields back, with the base of every model's ``-o`` options.

These are the data half of the plugin contract (:mod:`llmcli.contract` adds the
:class:`~llmcli.contract.Model` class and re-exports them). They import nothing above the
capabilities and the record, so the response runtime and request preparation build on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from llmcli.attachments import Attachment
from llmcli.capabilities import PrefillSupport, ReasoningPrefill, SchemaSupport, ToolSupport
from llmcli.record import Message, ToolCall, ToolResult
from llmcli.tools import Tool

__all__ = ["Chunk", "KeySpec", "Options", "PrefillSent", "Reasoning", "ReasoningPrefillOption",
           "Request", "StrList", "ToolCall", "ToolResult", "Usage", "emulation_instruction"]


class Options(BaseModel):
    """Base for a model's ``-o`` options. Unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def given(self, *names: str) -> dict[str, Any]:
        """The named options that are set, by name, as a wire takes them: one this model
        does not have, one left None and an empty list are left out; a list is copied."""
        values: dict[str, Any] = {}
        for name in names:
            value = getattr(self, name, None)
            if value is not None and value != []:
                values[name] = list(value) if isinstance(value, list) else value
        return values


class ReasoningPrefillOption(Options):
    """``-o reasoning_prefill``, for the options of a model that reasons (see
    :class:`~llmcli.capabilities.ReasoningPrefill`); which values a model takes is its
    :meth:`~llmcli.contract.Model.reasoning_prefills`."""

    reasoning_prefill: ReasoningPrefill | None = Field(
        default=None, description="With a prefill on a thinking model: after (think, then "
        "the answer starts with the prefill), skip (no thinking), emulate (asked for in the "
        "prompt); default: the model's own")


def _as_str_list(value: Any) -> Any:
    # "###" from Python or "-o stop '###'" is one item; '["a", "b"]' is a JSON list.
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            try:
                return json.loads(stripped)
            except ValueError:
                pass
        return [value]
    return value


#: An option type for lists of strings (stop sequences): accepts one string, a JSON list
#: or a list, so ``-o stop '###'``, ``-o stop '["a","b"]'`` and ``stop=["a"]`` all work.
StrList = Annotated[list[str], BeforeValidator(_as_str_list)]


@dataclass(frozen=True)
class KeySpec:
    """The API key a model needs: its name in ``llmcli keys`` and its environment variable."""

    name: str
    env_var: str | None = None


@dataclass(frozen=True)
class PrefillSent:
    """Yielded by a backend, before any text, when the prefill it sent differs from the
    user's (e.g. trailing whitespace removed). The normalizer reconciles the two."""

    text: str


@dataclass(frozen=True)
class Reasoning:
    """Yielded by a backend for the model's thinking, in order, before or among the text
    chunks (Anthropic thinking blocks, ``reasoning_content``, a local ``<think>`` block).
    Never answer text: the normalizer does not see it, and the prefill contract holds for
    the answer alone."""

    text: str


@dataclass
class Usage:
    """Yielded by a backend at the end of a response, with what it knows."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    stop_reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


#: What ``execute`` yields: text, and the events. A :class:`~llmcli.record.ToolCall` is
#: yielded once per call, complete (a backend that streams arguments in pieces gathers them).
Chunk = str | Usage | PrefillSent | Reasoning | ToolCall


@dataclass
class Request:
    """Everything a backend needs to make one call."""

    model_id: str
    prompt: str
    system: str | None
    history: list[Message]
    #: The user's prefill, exactly ("" for none).
    prefill: str
    #: The capability in force for this request (it may depend on the options).
    prefill_support: PrefillSupport
    options: Options
    stream: bool
    #: Kept out of repr(): printing or logging a request must never show the key.
    key: str | None = field(default=None, repr=False)
    #: The JSON Schema the reply must conform to (``--schema``), or None.
    schema: dict[str, Any] | None = None
    #: How the model honours ``schema`` for this request (None without one).
    schema_support: SchemaSupport | None = None
    #: Text the core adds after the prompt (the ``validated`` mode's schema instruction).
    instruction: str = ""
    #: A grammar the reply must follow (``--grammar``: GBNF or Lark text), or None.
    grammar: str | None = None
    #: Images and documents sent with this prompt, resolved (bytes, type, hash), of types
    #: the model declared; earlier turns carry theirs in ``history``.
    attachments: tuple[Attachment, ...] = ()
    #: The tools the model may call (empty for none), and how it calls them.
    tools: tuple[Tool, ...] = ()
    tool_support: ToolSupport | None = None
    #: The results of the previous turn's tool calls, sent with this prompt (which may then
    #: be empty).
    tool_results: tuple[ToolResult, ...] = ()
    #: "auto", "required", "none" or a tool's name (see :class:`llmcli.spec.PromptSpec`).
    tool_choice: str = "auto"

    def messages(self) -> list[Message]:
        """The conversation so far plus this prompt (the prefill is not included); the
        prompt's message carries this turn's tool results."""
        prompt = f"{self.prompt}\n\n{self.instruction}" if self.instruction else self.prompt
        return [*self.history, Message("user", prompt, self.attachments,
                                       tool_results=self.tool_results)]


def emulation_instruction(prefill: str) -> str:
    """The instruction an emulating backend adds so the model starts with ``prefill``."""
    return (
        "Begin your reply with exactly the following text, character for character, "
        "then continue it naturally. Do not add anything before it.\n"
        f"<reply_prefix>{prefill}</reply_prefix>"
    )


